package outbound_test

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

// silentMX listens on addr and, for each connection, does what serve
// says (nothing: a tarpit that never greets). It counts the connections.
type silentMX struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newSilentMX(t *testing.T, addr string, serve func(net.Conn)) *silentMX {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &silentMX{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitLimit))
				serve(c)
			}()
		}
	}()
	return s
}

// hangUp closes a connection at once: no greeting.
func hangUp(net.Conn) {}

// tarpit accepts and never says anything, until the client gives up.
func tarpit(c net.Conn) {
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func find(m *outbound.MX, name string) (queue.Destination, bool) {
	for _, d := range m.Destinations() {
		if d.Name == name {
			return d, true
		}
	}
	return queue.Destination{}, false
}

// TestDeadDestinationE2E: a destination whose hosts refuse connections,
// or accept and never greet, is dead after two attempts in a row: the
// Gate then defers its work with Postfix's words and the cause, and the
// state is visible. A host that greets and refuses MAIL is alive.
func TestDeadDestinationE2E(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(net.Conn) // nil: nothing listens
		cause string
	}{
		{"refused", nil, "connection refused"},
		{"no greeting", hangUp, "EOF"},
		{"tarpit", tarpit, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.serve != nil {
				newSilentMX(t, net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)), tc.serve)
			}
			e.mx("dead.test", 10, "mx1.dead.test", "127.0.0.2")
			m := e.deliverer(outbound.Options{CommandTimeout: 100 * time.Millisecond})
			for i := range 2 {
				if a := m.Admit(queue.Dest{Domain: "dead.test", Attempt: 1}, time.Now()); !a.Admitted() {
					t.Fatalf("attempt %d not admitted: %+v", i+1, a)
				} else {
					check(t, m.Deliver(context.Background(), e.delivery("dead.test", "b@dead.test")), want{queue.Temporary, "", "mx1.dead.test"})
					a.Release()
				}
			}
			a := m.Admit(queue.Dest{Domain: "dead.test", Attempt: 1}, time.Now())
			if a.Admitted() || a.Suspended.IsZero() || time.Until(a.Until) < 30*time.Second {
				t.Fatalf("after two failed attempts: %+v, want suspended for a while", a)
			}
			got := a.Suspended.String()
			if !strings.HasPrefix(got, "4.4.1 delivery temporarily suspended: ") ||
				!strings.Contains(got, "mx1.dead.test[127.0.0.2]") || !strings.Contains(got, tc.cause) {
				t.Errorf("suspended with %q, want 4.4.1, the host and %q", got, tc.cause)
			}
			d, ok := find(m, "mx1.dead.test")
			if !ok || d.State != "dead" || d.ConnectionFailures != 2 || d.Domains[0] != "dead.test" {
				t.Errorf("destination %+v, want dead after 2 connection failures", d)
			}
		})
	}
	t.Run("a host that answers is alive", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2")
		r.FailNext(relaytest.CmdMAIL, 451, "4.3.0 not now", -1)
		e.mx("alive.test", 10, "mx1.alive.test", "127.0.0.2")
		m := e.deliverer(outbound.Options{})
		for range 3 {
			check(t, m.Deliver(context.Background(), e.delivery("alive.test", "b@alive.test")), want{queue.Temporary, "451 4.3.0", "mx1.alive.test"})
		}
		if a := m.Admit(queue.Dest{Domain: "alive.test", Attempt: 1}, time.Now()); !a.Admitted() {
			t.Errorf("a destination that answers 451 is refused: %+v", a)
		}
	})
}

// TestRateLimitReply: a 421 4.7.28 to RCPT suspends the destination
// briefly and lowers its rate; the state shows the typed reply. A
// pattern with its own duration suspends for that long, beyond a moment:
// the Gate then defers with the reply.
func TestRateLimitReply(t *testing.T) {
	patterns := []outbound.RateLimitPattern{
		{Text: regexp.MustCompile(`(?i)go away for an hour`), Suspend: time.Hour},
		{Enhanced: reply.MustEnhanced("4.7.28")},
	}
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("p.test", 10, "mx1.p.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{Shaping: outbound.Shaping{RateLimitPatterns: patterns}})
	check(t, m.Deliver(context.Background(), e.delivery("p.test", "a@p.test")), want{queue.Delivered, "250 ", "mx1.p.test"})
	r.FailRcpt("b@p.test", 421, "4.7.28 Our system has detected an unusual rate of mail, rate limited")
	check(t, m.Deliver(context.Background(), e.delivery("p.test", "b@p.test")), want{queue.Temporary, "421 4.7.28", "mx1.p.test"})
	a := m.Admit(queue.Dest{Domain: "p.test", Attempt: 1}, time.Now())
	if a.Admitted() || !a.Suspended.IsZero() || a.Until.IsZero() {
		t.Errorf("after a rate-limit reply: %+v, want parked for a moment", a)
	}
	d, _ := find(m, "mx1.p.test")
	said := reply.Reply{Code: 421, Enhanced: reply.MustEnhanced("4.7.28"), Text: "Our system has detected an unusual rate of mail, rate limited"}
	if d.State != "suspended" || d.RateLimited != 1 || d.LastReply != said || d.Limits.Rate == 0 {
		t.Errorf("destination %+v, want suspended, one rate-limit reply %q, a rate in force", d, said)
	}

	r.FailRcpt("c@p.test", 450, "4.7.0 Go away for an hour")
	check(t, m.Deliver(context.Background(), e.delivery("p.test", "c@p.test")), want{queue.Temporary, "450 4.7.0", "mx1.p.test"})
	a = m.Admit(queue.Dest{Domain: "p.test", Attempt: 1}, time.Now())
	if a.Suspended.String() != "4.7.0 delivery temporarily suspended: 450 4.7.0 Go away for an hour" || time.Until(a.Until) < 59*time.Minute {
		t.Errorf("after a reply whose pattern suspends for an hour: %+v", a)
	}
}

// TestAttemptLimits: one attempt dials at most MaxAddresses addresses
// and holds at most MaxSessions sessions with hosts that then fail, over
// at most MaxMXHosts MX hosts.
func TestAttemptLimits(t *testing.T) {
	t.Run("addresses", func(t *testing.T) {
		e := newEnv(t)
		mx := newSilentMX(t, net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)), hangUp)
		for i := range 7 {
			e.mx("many.test", uint16(10*(i+1)), fmt.Sprintf("mx%d.many.test", i+1), "127.0.0.2")
		}
		got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("many.test", "b@many.test"))
		check(t, got, want{queue.Temporary, "", "mx5.many.test"})
		if n := mx.accepted.Load(); n != outbound.DefaultMaxAddresses {
			t.Errorf("%d addresses dialed, want %d", n, outbound.DefaultMaxAddresses)
		}
	})
	t.Run("sessions", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2")
		r.FailNext(relaytest.CmdEHLO, 421, "4.3.2 shutting down", -1)
		for i := range 4 {
			e.mx("many.test", uint16(10*(i+1)), fmt.Sprintf("mx%d.many.test", i+1), "127.0.0.2")
		}
		got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("many.test", "b@many.test"))
		check(t, got, want{queue.Temporary, "421 4.3.2", "mx2.many.test"})
		if n := r.Conns(); n != outbound.DefaultMaxSessions {
			t.Errorf("%d sessions, want %d", n, outbound.DefaultMaxSessions)
		}
	})
}

// TestAttemptTimeout: a whole attempt ends at AttemptTimeout, whatever the
// per-command limits allow.
func TestAttemptTimeout(t *testing.T) {
	e := newEnv(t)
	newSilentMX(t, net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)), tarpit)
	e.mx("slow.test", 10, "mx1.slow.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{AttemptTimeout: 100 * time.Millisecond})
	done := make(chan []queue.Result, 1)
	go func() { done <- m.Deliver(context.Background(), e.delivery("slow.test", "b@slow.test")) }()
	select {
	case got := <-done:
		check(t, got, want{queue.Temporary, "context deadline exceeded", "mx1.slow.test"})
	case <-time.After(waitLimit):
		t.Fatal("the attempt outlived its deadline")
	}
}

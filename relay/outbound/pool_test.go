package outbound_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

// TestReuse: consecutive deliveries to one domain share one connection,
// for MX and smarthost delivery alike, and still get a transaction each.
func TestReuse(t *testing.T) {
	const n = 5
	t.Run("mx", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2")
		e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
		m := e.deliverer(outbound.Options{IdleTimeout: time.Hour})
		for i := range n {
			check(t, m.Deliver(context.Background(), e.delivery("example.test", fmt.Sprintf("b%d@example.test", i))),
				want{queue.Delivered, "250 ", "mx1.example.test"})
		}
		if got := len(r.Messages()); got != n {
			t.Errorf("receiver got %d messages, want %d", got, n)
		}
		if got := r.Conns(); got != 1 {
			t.Errorf("%d connections for %d deliveries, want 1", got, n)
		}
	})
	t.Run("smarthost", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2")
		h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
			Name: "provider", Address: net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)), TLS: outbound.NoTLS,
		}, outbound.Options{Hostname: "postern.test", IdleTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		for range n {
			check(t, h.Deliver(context.Background(), e.delivery("example.test", "b@example.test")),
				want{queue.Delivered, "250 ", "127.0.0.2 (smarthost provider)"})
		}
		if got := r.Conns(); got != 1 {
			t.Errorf("%d connections for %d deliveries, want 1", got, n)
		}
	})
}

// TestReuseAfterRefusal: a transaction that ends on a refusal (MAIL 550,
// DATA's final reply 554) leaves a connection that can carry the next
// one; a transaction left open (every RCPT refused) does not.
func TestReuseAfterRefusal(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour})
	deliver := func(w want) {
		t.Helper()
		check(t, m.Deliver(context.Background(), e.delivery("example.test", "b@example.test")), w)
	}
	r.FailNext(relaytest.CmdMAIL, 550, "5.7.1 sender refused", 1)
	deliver(want{queue.Permanent, "550 5.7.1 sender refused", "mx1.example.test"})
	r.FailNext(relaytest.CmdDATA, 554, "5.6.0 content refused", 1)
	deliver(want{queue.Permanent, "554 5.6.0 content refused", "mx1.example.test"})
	deliver(want{queue.Delivered, "250 ", "mx1.example.test"})
	if got := r.Conns(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
	r.FailNext(relaytest.CmdRCPT, 550, "5.1.1 no such user", 1)
	deliver(want{queue.Permanent, "550 5.1.1 no such user", "mx1.example.test"})
	deliver(want{queue.Delivered, "250 ", "mx1.example.test"})
	if got := r.Conns(); got != 2 {
		t.Errorf("%d connections, want 2: one closed with its transaction open, one new", got)
	}
}

// TestReuseNotAcrossDestinations: a connection is reused only for its own
// destination: the same address reached under another MX name (whose
// certificate would be checked for another name) gets its own.
func TestReuseNotAcrossDestinations(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("one.test", 10, "mx.one.test", "127.0.0.2")
	e.mx("two.test", 10, "mx.two.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour})
	for _, dom := range []string{"one.test", "two.test", "one.test", "two.test"} {
		check(t, m.Deliver(context.Background(), e.delivery(dom, "b@"+dom)), want{queue.Delivered, "250 ", "mx." + dom})
	}
	// Two MX names on one address: two destinations (the certificate
	// name differs), each reused once.
	if got := r.Conns(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
}

// TestIdleTimeout: a parked connection is closed once it has been idle for
// IdleTimeout, without Close; the next delivery dials again.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: 20 * time.Millisecond})
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "b@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := r.WaitIdle(ctx); err != nil {
		t.Fatalf("the parked connection was not closed by its idle timeout: %v", err)
	}
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "c@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	if got := r.Conns(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
}

// TestReuseDeadConnection: a parked connection the server has closed is
// noticed, and the delivery goes through on a new connection, in the same
// attempt, without a failure. Used within checkAfter of parking, the
// connection is not checked first: its MAIL fails, and the transaction
// starts over. Parked longer, it is checked with NOOP, which fails instead.
func TestReuseDeadConnection(t *testing.T) {
	for _, tt := range []struct {
		name     string
		idle     time.Duration
		wantLogs map[string]int // message → lines at Info and above, or Debug
	}{
		{"unchecked", 0, map[string]int{"delivery attempt": 3, "parked connection failed its check": 0}},
		{"checked", 2 * time.Second, map[string]int{"delivery attempt": 2, "parked connection failed its check": 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			addr := net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port))
			r1 := e.receiver("127.0.0.2")
			e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
			core, logs := observer.New(zap.DebugLevel)
			m := e.deliverer(outbound.Options{IdleTimeout: time.Hour, Logger: zap.New(core)})
			advance := manualClock(m)
			check(t, m.Deliver(context.Background(), e.delivery("example.test", "b@example.test")),
				want{queue.Delivered, "250 ", "mx1.example.test"})
			// The server restarts: it drops the parked connection.
			r1.Close()
			r2 := relaytest.NewReceiver(t, addr)
			e.rx["127.0.0.2"] = r2
			advance(tt.idle)
			check(t, m.Deliver(context.Background(), e.delivery("example.test", "c@example.test")),
				want{queue.Delivered, "250 ", "mx1.example.test"})
			if got := len(r2.Messages()); got != 1 {
				t.Errorf("the new server got %d messages, want 1", got)
			}
			for msg, n := range tt.wantLogs {
				if got := logs.FilterMessage(msg).Len(); got != n {
					t.Errorf("%d %q lines, want %d; logs: %v", got, msg, n, logs.All())
				}
			}
		})
	}
}

// TestReuseMAIL421: a parked connection whose MAIL gets 421 ("closing the
// channel", RFC 5321 §3.8) is retried at once on a new connection: nothing
// was started, so it counts as no failure.
func TestReuseMAIL421(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour})
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "b@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	r.FailNext(relaytest.CmdMAIL, 421, "4.7.0 too many messages on this connection", 1)
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "c@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	if got := r.Conns(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
	// On a new connection a 421 is an answer: the next MX would be tried,
	// and here there is none.
	r.FailNext(relaytest.CmdMAIL, 421, "4.7.0 go away", 2)
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "d@example.test")),
		want{queue.Temporary, "421 4.7.0 go away", "mx1.example.test"})
}

// gatedBody is a message whose reading waits for open to be closed.
// Each Open sends on opened, when it is not nil.
type gatedBody struct {
	data   []byte
	open   chan struct{}
	opened chan struct{}
}

func (b *gatedBody) Size() int64 { return int64(len(b.data)) }
func (b *gatedBody) Open() (io.ReadCloser, error) {
	if b.opened != nil {
		b.opened <- struct{}{}
	}
	<-b.open
	return io.NopCloser(bytes.NewReader(b.data)), nil
}

// TestMaxConnsPerHost: with more concurrent deliveries than the cap, the
// excess does not wait for a connection (a worker is never parked on a
// destination): it fails at once, Temporary, without connecting, while
// the others go through.
func TestMaxConnsPerHost(t *testing.T) {
	const max, n = 2, 4
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour, MaxConnsPerHost: max})
	gate := &gatedBody{data: []byte(msgText), open: make(chan struct{}), opened: make(chan struct{}, max)}
	var wg sync.WaitGroup
	held := make([][]queue.Result, max)
	for i := range max {
		wg.Go(func() {
			d := e.delivery("example.test", fmt.Sprintf("b%d@example.test", i))
			d.Body = gate
			held[i] = m.Deliver(context.Background(), d)
		})
	}
	for range max {
		<-gate.opened // both hold a connection, their DATA pending
	}
	for i := max; i < n; i++ {
		check(t, m.Deliver(context.Background(), e.delivery("example.test", fmt.Sprintf("b%d@example.test", i))),
			want{queue.Temporary, "451 4.4.5 ", "mx1.example.test"})
	}
	if got := r.Conns(); got != max {
		t.Errorf("%d connections opened, want %d: the excess must not connect", got, max)
	}
	close(gate.open)
	wg.Wait()
	for _, res := range held {
		check(t, res, want{queue.Delivered, "250 ", "mx1.example.test"})
	}
}

// TestMessagesPerConnection: a connection is closed once it has carried
// its destination's MessagesPerConnection, and the next message opens a
// new one.
func TestMessagesPerConnection(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour,
		Shaping: outbound.Shaping{Default: outbound.Limits{MessagesPerConnection: 2}}})
	for i := range 5 {
		check(t, m.Deliver(context.Background(), e.delivery("example.test", fmt.Sprintf("b%d@example.test", i))),
			want{queue.Delivered, "250 ", "mx1.example.test"})
	}
	if got := r.Conns(); got != 3 {
		t.Errorf("%d connections for 5 messages at 2 per connection, want 3", got)
	}
}

// TestRouterClose: Router.Close closes the parked connections of every
// path.
func TestRouterClose(t *testing.T) {
	e := newEnv(t)
	relayRx := e.receiver("127.0.0.3")
	mxRx := e.receiver("127.0.0.2")
	e.mx("direct.test", 10, "mx1.direct.test", "127.0.0.2")
	h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
		Name: "provider", Address: net.JoinHostPort("127.0.0.3", strconv.Itoa(e.port)), TLS: outbound.NoTLS,
	}, outbound.Options{Hostname: "postern.test", IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mx := outbound.New(outbound.Options{Resolver: e.dns.Addr(), Port: e.port, IdleTimeout: time.Hour})
	r, err := outbound.NewRouter([]outbound.Route{
		{Name: "routes[0]", RecipientDomains: []string{"relayed.test"}, Via: outbound.Path{Smarthosts: outbound.Failover{h}}},
	}, outbound.Path{MX: mx})
	if err != nil {
		t.Fatal(err)
	}
	r.Deliver(context.Background(), e.delivery("relayed.test", "b@relayed.test"))
	r.Deliver(context.Background(), e.delivery("direct.test", "c@direct.test"))
	if relayRx.OpenConns() != 1 || mxRx.OpenConns() != 1 {
		t.Fatalf("open connections: smarthost %d, MX %d; want 1 each, parked", relayRx.OpenConns(), mxRx.OpenConns())
	}
	r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for _, rx := range []*relaytest.Receiver{relayRx, mxRx} {
		if err := rx.WaitIdle(ctx); err != nil {
			t.Errorf("%s after Close: %v", rx.Addr(), err)
		}
	}
}

// TestReuseCheckTimesOut: a parked connection whose server no longer
// answers (NOOP gets nothing back) is given up after the check's own
// short limit, not the 5-minute command timeout, and the delivery goes
// through on a new connection.
func TestReuseCheckTimesOut(t *testing.T) {
	outbound.SetCheckTimeout(t, 100*time.Millisecond)
	e := newEnv(t)
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A hand-written server: its first connection takes one message and
	// then swallows every command; its second works normally.
	var conns sync.WaitGroup
	defer conns.Wait()
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { fakeMX(c, n == 0, false) })
		}
	}()
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour})
	advance := manualClock(m)
	check(t, m.Deliver(context.Background(), e.delivery("example.test", "b@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	advance(2 * time.Second)
	// Without the check's own limit, the NOOP would wait until this
	// context ends, and the delivery would fail with it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	check(t, m.Deliver(ctx, e.delivery("example.test", "c@example.test")),
		want{queue.Delivered, "250 ", "mx1.example.test"})
	m.Close()
}

// fakeMX speaks just enough SMTP for one message per connection; with
// hang, it then reads commands and never answers them; with dropAtDot, it
// closes the connection on the final dot instead of answering it.
func fakeMX(c net.Conn, hang, dropAtDot bool) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "220 fake.test ESMTP\r\n")
	data, done := false, false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
		case data:
			if cmd == "." && dropAtDot {
				return
			}
			if cmd == "." {
				data, done = false, true
				fmt.Fprintf(c, "250 2.0.0 ok\r\n")
			}
		case done && hang:
			// swallowed
		case strings.HasPrefix(cmd, "EHLO"):
			fmt.Fprintf(c, "250 fake.test\r\n")
		case cmd == "DATA":
			data = true
			fmt.Fprintf(c, "354 go on\r\n")
		case cmd == "QUIT":
			fmt.Fprintf(c, "221 bye\r\n")
			return
		default:
			fmt.Fprintf(c, "250 ok\r\n")
		}
	}
}

// manualClock gives m's connection pool a clock that moves only when the
// returned function is called.
func manualClock(m *outbound.MX) (advance func(time.Duration)) {
	var mu sync.Mutex
	now := time.Now()
	outbound.SetClock(m, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	return func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
}

// TestReuseAfterBrokenSTARTTLS: under opportunistic TLS, an MX whose
// STARTTLS fails gets the message on a plain-text connection, and the
// messages after it reuse that connection instead of failing STARTTLS on a
// new one first, each time.
func TestReuseAfterBrokenSTARTTLS(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2", relaytest.WithBrokenTLS())
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	m := e.deliverer(outbound.Options{IdleTimeout: time.Hour, TLS: outbound.Opportunistic})
	for _, rcpt := range []string{"b@example.test", "c@example.test", "d@example.test"} {
		check(t, m.Deliver(context.Background(), e.delivery("example.test", rcpt)),
			want{queue.Delivered, "250 ", "mx1.example.test"})
	}
	// One connection whose STARTTLS failed, one plain-text for all three.
	if got := r.Conns(); got != 2 {
		t.Errorf("%d connections, want 2", got)
	}
	if got := len(r.Messages()); got != 3 {
		t.Errorf("%d messages, want 3", got)
	}
}

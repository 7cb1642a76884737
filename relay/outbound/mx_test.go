package outbound_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

// waitLimit bounds every wait in these tests. It is a safety net against a
// hang, never a measure of speed: no test asserts how long anything takes.
const waitLimit = 30 * time.Second

const msgText = "From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n"

// body is an in-memory queue.Body that counts open readers.
type body struct {
	data []byte
	open atomic.Int64
}

func (b *body) Size() int64 { return int64(len(b.data)) }
func (b *body) Open() (io.ReadCloser, error) {
	b.open.Add(1)
	return &bodyReader{Reader: bytes.NewReader(b.data), b: b}, nil
}

type bodyReader struct {
	*bytes.Reader
	b    *body
	done bool
}

func (r *bodyReader) Close() error {
	if !r.done {
		r.done = true
		r.b.open.Add(-1)
	}
	return nil
}

// env is one test world: a DNS server and receivers sharing a port on
// 127.0.0.x addresses.
type env struct {
	t    *testing.T
	dns  *relaytest.DNS
	port int
	rx   map[string]*relaytest.Receiver // by IP
	body *body
}

func newEnv(t *testing.T, ips ...string) *env {
	t.Helper()
	all := append([]string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, ips...)
	e := &env{
		t:    t,
		dns:  relaytest.NewDNS(t, relaytest.Zone{}),
		port: relaytest.FreePort(t, all...),
		rx:   map[string]*relaytest.Receiver{},
		body: &body{data: []byte(msgText)},
	}
	t.Cleanup(e.checkIdle)
	return e
}

// receiver starts a receiver on ip at the shared port.
func (e *env) receiver(ip string, opts ...relaytest.ReceiverOption) *relaytest.Receiver {
	e.t.Helper()
	r := relaytest.NewReceiver(e.t, net.JoinHostPort(ip, strconv.Itoa(e.port)), opts...)
	e.rx[ip] = r
	return r
}

// mx publishes an MX host with one IPv4 address.
func (e *env) mx(domain string, pref uint16, host, ip string) {
	e.dns.AddMX(domain, relaytest.MX{Pref: pref, Host: host})
	e.dns.SetA(host, ip)
}

func (e *env) deliverer(o outbound.Options) *outbound.MX {
	o.Resolver = e.dns.Addr()
	o.Port = e.port
	o.Hostname = "postern.test"
	m := outbound.New(o)
	// Before checkIdle (cleanups run last first): parked connections
	// are closed by Close, not by Deliver.
	e.t.Cleanup(func() { m.Close() })
	return m
}

func (e *env) delivery(domain string, rcpts ...string) *queue.Delivery {
	return &queue.Delivery{
		ID: "q1", From: "a@sender.test", Rcpts: rcpts, Domain: domain,
		Attempt: 1, Created: time.Now(), Body: e.body,
	}
}

// checkIdle asserts that the deliverer left no connection open on any
// receiver and no body reader open: the leak check every test gets.
func (e *env) checkIdle() {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for ip, r := range e.rx {
		if err := r.WaitIdle(ctx); err != nil {
			e.t.Errorf("receiver %s: %d connections still open: %v", ip, r.OpenConns(), err)
		}
	}
	if n := e.body.open.Load(); n != 0 {
		e.t.Errorf("%d body readers left open", n)
	}
}

type want struct {
	outcome queue.Outcome
	reply   string // prefix of Result.Reply
	mta     string
}

func check(t *testing.T, got []queue.Result, want ...want) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Outcome != w.outcome || !strings.HasPrefix(g.Reply.String(), w.reply) || g.RemoteMTA != w.mta {
			t.Errorf("result %d = {%v %q %q}, want {%v %q... %q}", i, g.Outcome, g.Reply.String(), g.RemoteMTA, w.outcome, w.reply, w.mta)
		}
	}
}

func TestDeliverTransaction(t *testing.T) {
	const mx1 = "mx1.example.test"
	tests := []struct {
		name  string
		rcpts []string
		setup func(r *relaytest.Receiver)
		want  []want
		// wantTo is the recipients of the message received; nil: no message.
		wantTo []string
	}{{
		name:   "delivered",
		rcpts:  []string{"b@example.test", "c@example.test"},
		want:   []want{{queue.Delivered, "250 ", mx1}, {queue.Delivered, "250 ", mx1}},
		wantTo: []string{"b@example.test", "c@example.test"},
	}, {
		name:  "per-recipient 550 permanent and 451 temporary",
		rcpts: []string{"ok@example.test", "gone@example.test", "busy@example.test"},
		setup: func(r *relaytest.Receiver) {
			r.FailRcpt("gone@example.test", 550, "5.1.1 no such user")
			r.FailRcpt("busy@example.test", 451, "4.3.0 try later")
		},
		want: []want{
			{queue.Delivered, "250 ", mx1},
			{queue.Permanent, "550 5.1.1 no such user", mx1},
			{queue.Temporary, "451 4.3.0 try later", mx1},
		},
		wantTo: []string{"ok@example.test"},
	}, {
		name:  "552 at RCPT is temporary",
		rcpts: []string{"full@example.test", "ok@example.test"},
		setup: func(r *relaytest.Receiver) { r.FailRcpt("full@example.test", 552, "5.2.2 mailbox full") },
		want: []want{
			{queue.Temporary, "552 5.2.2 mailbox full", mx1},
			{queue.Delivered, "250 ", mx1},
		},
		wantTo: []string{"ok@example.test"},
	}, {
		name:  "reply without enhanced code",
		rcpts: []string{"b@example.test"},
		setup: func(r *relaytest.Receiver) { r.FailRcpt("b@example.test", 550, "nope") },
		want:  []want{{queue.Permanent, "550 nope", mx1}},
	}, {
		name:  "no DATA when every RCPT fails",
		rcpts: []string{"x@example.test", "y@example.test"},
		setup: func(r *relaytest.Receiver) {
			r.FailRcpt("x@example.test", 550, "5.1.1 no")
			r.FailRcpt("y@example.test", 450, "4.2.1 later")
		},
		want: []want{{queue.Permanent, "550 5.1.1 no", mx1}, {queue.Temporary, "450 4.2.1 later", mx1}},
	}, {
		name:  "MAIL 550 fails every recipient",
		rcpts: []string{"b@example.test", "c@example.test"},
		setup: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdMAIL, 550, "5.7.1 sender rejected", 1) },
		want:  []want{{queue.Permanent, "550 5.7.1 sender rejected", mx1}, {queue.Permanent, "550 5.7.1 sender rejected", mx1}},
	}, {
		name:  "DATA 554 applies to accepted recipients only",
		rcpts: []string{"b@example.test", "gone@example.test"},
		setup: func(r *relaytest.Receiver) {
			r.FailRcpt("gone@example.test", 550, "5.1.1 no such user")
			r.FailNext(relaytest.CmdDATA, 554, "5.7.1 spam", 1)
		},
		want: []want{{queue.Permanent, "554 5.7.1 spam", mx1}, {queue.Permanent, "550 5.1.1 no such user", mx1}},
	}, {
		name:  "DATA 451 temporary",
		rcpts: []string{"b@example.test"},
		setup: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdDATA, 451, "4.3.0 disk full", 1) },
		want:  []want{{queue.Temporary, "451 4.3.0 disk full", mx1}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.receiver("127.0.0.2")
			e.mx("example.test", 10, mx1, "127.0.0.2")
			if tt.setup != nil {
				tt.setup(r)
			}
			got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", tt.rcpts...))
			check(t, got, tt.want...)
			msgs := r.Messages()
			if tt.wantTo == nil {
				if len(msgs) != 0 {
					t.Errorf("got %d messages, want none", len(msgs))
				}
				return
			}
			if len(msgs) != 1 {
				t.Fatalf("got %d messages, want 1", len(msgs))
			}
			m := msgs[0]
			if m.From != "a@sender.test" || strings.Join(m.To, ",") != strings.Join(tt.wantTo, ",") {
				t.Errorf("envelope = %q -> %q, want a@sender.test -> %q", m.From, m.To, tt.wantTo)
			}
			if string(m.Data) != msgText {
				t.Errorf("data = %q, want %q", m.Data, msgText)
			}
			if m.Helo != "postern.test" {
				t.Errorf("EHLO name %q", m.Helo)
			}
		})
	}
}

func TestDeliverNullSender(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	d := e.delivery("example.test", "b@example.test")
	d.From = ""
	check(t, e.deliverer(outbound.Options{}).Deliver(context.Background(), d), want{queue.Delivered, "250 ", "mx1.example.test"})
	if m := r.Messages(); len(m) != 1 || m[0].From != "" {
		t.Fatalf("messages = %+v, want one from <>", m)
	}
}

// TestDeliverReturnPath: a delivery with a return path (VERP) sends it in
// MAIL FROM instead of the sender.
func TestDeliverReturnPath(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	d := e.delivery("example.test", "b@example.test")
	d.ReturnPath = "b+token@bounces.sender.test"
	check(t, e.deliverer(outbound.Options{}).Deliver(context.Background(), d), want{queue.Delivered, "250 ", "mx1.example.test"})
	if m := r.Messages(); len(m) != 1 || m[0].From != "b+token@bounces.sender.test" {
		t.Fatalf("messages = %+v, want one from the return path", m)
	}
}

// TestDeliverNextMX covers the failures that move delivery on to the next
// MX, and what happens when every MX fails.
func TestDeliverNextMX(t *testing.T) {
	tests := []struct {
		name  string
		first func(e *env) // sets up the first MX, 127.0.0.2
		// wantFirstConns is how many connections the first MX saw (-1: no
		// receiver there).
		wantFirstConns int
	}{
		{"unreachable", func(e *env) {}, -1},
		{"421 greeting", func(e *env) {
			e.receiver("127.0.0.2").FailNext(relaytest.CmdConnect, 421, "4.3.2 busy", 1)
		}, 1},
		{"554 greeting", func(e *env) {
			e.receiver("127.0.0.2").FailNext(relaytest.CmdConnect, 554, "5.3.2 no service", 1)
		}, 1},
		{"421 EHLO", func(e *env) {
			e.receiver("127.0.0.2").FailNext(relaytest.CmdEHLO, 421, "4.7.0 go away", -1)
		}, 1},
		{"451 MAIL", func(e *env) {
			e.receiver("127.0.0.2").FailNext(relaytest.CmdMAIL, 451, "4.3.0 later", 1)
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.first(e)
			second := e.receiver("127.0.0.3")
			e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
			e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
			got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
			check(t, got, want{queue.Delivered, "250 ", "mx2.example.test"})
			if n := len(second.Messages()); n != 1 {
				t.Errorf("second MX got %d messages, want 1", n)
			}
			if first := e.rx["127.0.0.2"]; first != nil {
				if n := first.Conns(); n != tt.wantFirstConns {
					t.Errorf("first MX saw %d connections, want %d", n, tt.wantFirstConns)
				}
				if n := len(first.Messages()); n != 0 {
					t.Errorf("first MX got %d messages", n)
				}
			}
		})
	}
}

func TestDeliverAllMXFail(t *testing.T) {
	e := newEnv(t)
	e.receiver("127.0.0.3").FailNext(relaytest.CmdConnect, 421, "4.3.2 too busy", 1)
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2") // nothing listens
	e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
	got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "b@example.test", "c@example.test"))
	w := want{queue.Temporary, "421 4.3.2 too busy", "mx2.example.test"}
	check(t, got, w, w)
}

func TestDeliverDNS(t *testing.T) {
	tests := []struct {
		name  string
		zone  func(d *relaytest.DNS)
		want  want
		ok    bool   // delivered to 127.0.0.2
		reply string // substring of the reply
	}{{
		name: "A fallback without MX",
		zone: func(d *relaytest.DNS) { d.SetA("example.test", "127.0.0.2") },
		want: want{queue.Delivered, "250 ", "example.test"},
		ok:   true,
	}, {
		name: "NXDOMAIN",
		zone: func(d *relaytest.DNS) {},
		want: want{queue.Permanent, "550 5.1.2 ", ""},
	}, {
		name: "SERVFAIL",
		zone: func(d *relaytest.DNS) { d.SetServFail("example.test") },
		want: want{queue.Temporary, "451 4.4.3 ", ""}, reply: "SERVFAIL",
	}, {
		name: "REFUSED",
		zone: func(d *relaytest.DNS) { d.SetRcode("example.test", dns.RcodeRefused) },
		want: want{queue.Temporary, "451 4.4.3 ", ""}, reply: "REFUSED",
	}, {
		name: "null MX",
		zone: func(d *relaytest.DNS) { d.SetMX("example.test", relaytest.MX{Pref: 0, Host: "."}) },
		want: want{queue.Permanent, "556 5.1.10 ", ""},
	}, {
		name: "null MX mixed with a real MX is ignored",
		zone: func(d *relaytest.DNS) {
			d.SetMX("example.test", relaytest.MX{Pref: 0, Host: "."}, relaytest.MX{Pref: 10, Host: "mx1.example.test"})
			d.SetA("mx1.example.test", "127.0.0.2")
		},
		want: want{queue.Delivered, "250 ", "mx1.example.test"},
		ok:   true,
	}, {
		name: "no MX and no address",
		zone: func(d *relaytest.DNS) { d.SetTXT("example.test", "v=spf1 -all") },
		want: want{queue.Permanent, "550 5.1.2 ", ""},
	}, {
		name: "MX host without address is temporary",
		zone: func(d *relaytest.DNS) {
			d.SetMX("example.test", relaytest.MX{Pref: 10, Host: "mx1.example.test"})
			d.SetTXT("mx1.example.test", "exists")
		},
		want: want{queue.Temporary, "451 4.4.4 ", ""}, reply: "mx1.example.test",
	}, {
		name: "MX host not found is temporary",
		zone: func(d *relaytest.DNS) { d.SetMX("example.test", relaytest.MX{Pref: 10, Host: "mx1.example.test"}) },
		want: want{queue.Temporary, "451 4.4.3 ", ""}, reply: "A mx1.example.test: NXDOMAIN; AAAA mx1.example.test: NXDOMAIN",
	}, {
		name: "MX host SERVFAIL then next MX",
		zone: func(d *relaytest.DNS) {
			d.SetMX("example.test", relaytest.MX{Pref: 10, Host: "mx1.example.test"}, relaytest.MX{Pref: 20, Host: "mx2.example.test"})
			d.SetServFail("mx1.example.test")
			d.SetA("mx2.example.test", "127.0.0.2")
		},
		want: want{queue.Delivered, "250 ", "mx2.example.test"},
		ok:   true,
	}, {
		name: "IPv4 before IPv6",
		zone: func(d *relaytest.DNS) {
			d.SetMX("example.test", relaytest.MX{Pref: 10, Host: "mx1.example.test"})
			d.SetAAAA("mx1.example.test", "::1")
			d.SetA("mx1.example.test", "127.0.0.2")
		},
		want: want{queue.Delivered, "250 ", "mx1.example.test"},
		ok:   true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.receiver("127.0.0.2")
			tt.zone(e.dns)
			got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
			check(t, got, tt.want)
			if !strings.Contains(got[0].Reply.String(), tt.reply) {
				t.Errorf("reply %q does not mention %q", got[0].Reply.String(), tt.reply)
			}
			if n := len(r.Messages()); (n == 1) != tt.ok {
				t.Errorf("receiver got %d messages", n)
			}
		})
	}
}

func TestDeliverIPv6(t *testing.T) {
	e := newEnv(t, "::1")
	r := e.receiver("::1")
	e.dns.SetMX("example.test", relaytest.MX{Pref: 10, Host: "mx1.example.test"})
	e.dns.SetA("mx1.example.test", "127.0.0.4") // nothing listens there
	e.dns.SetAAAA("mx1.example.test", "::1")
	got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Delivered, "250 ", "mx1.example.test"})
	if n := len(r.Messages()); n != 1 {
		t.Errorf("got %d messages", n)
	}
}

func TestDeliverResolverDown(t *testing.T) {
	// A UDP port nobody listens on: loopback answers "port unreachable".
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	m := outbound.New(outbound.Options{Resolver: addr})
	got := m.Deliver(context.Background(), &queue.Delivery{ID: "q", Rcpts: []string{"b@example.test"}, Domain: "example.test", Body: &body{}})
	check(t, got, want{queue.Temporary, "451 4.4.3 ", ""})
}

func TestDeliverAddressLiteral(t *testing.T) {
	e := newEnv(t)
	got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("[127.0.0.2]", "b@[127.0.0.2]"))
	check(t, got, want{queue.Permanent, "550 5.1.2 ", ""})
}

func TestDeliverSMTPUTF8(t *testing.T) {
	t.Run("offered", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2", relaytest.WithServer(func(s *smtp.Server) { s.EnableSMTPUTF8 = true }))
		e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
		got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "jörg@example.test"))
		check(t, got, want{queue.Delivered, "250 ", "mx1.example.test"})
		if m := r.Messages(); len(m) != 1 || !m[0].Opts.UTF8 {
			t.Errorf("messages = %+v, want one with SMTPUTF8", m)
		}
	})
	t.Run("not offered", func(t *testing.T) {
		e := newEnv(t)
		r := e.receiver("127.0.0.2")
		e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
		got := e.deliverer(outbound.Options{}).Deliver(context.Background(), e.delivery("example.test", "jörg@example.test"))
		check(t, got, want{queue.Permanent, "553 5.6.7 ", "mx1.example.test"})
		if n := len(r.Messages()); n != 0 {
			t.Errorf("got %d messages", n)
		}
	})
}

func TestDeliverTLS(t *testing.T) {
	const mx1 = "mx1.example.test"
	tests := []struct {
		name    string
		mode    outbound.TLSMode
		rxOpts  []relaytest.ReceiverOption
		trust   bool // give the deliverer the receiver's CertPool
		want    want
		wantTLS bool
		conns   int // connections the receiver saw
	}{
		{"opportunistic self-signed", outbound.Opportunistic, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, false,
			want{queue.Delivered, "250 ", mx1}, true, 1},
		{"opportunistic without STARTTLS", outbound.Opportunistic, nil, false,
			want{queue.Delivered, "250 ", mx1}, false, 1},
		{"opportunistic broken handshake falls back to plain text", outbound.Opportunistic, []relaytest.ReceiverOption{relaytest.WithBrokenTLS()}, false,
			want{queue.Delivered, "250 ", mx1}, false, 2},
		{"required untrusted", outbound.Required, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, false,
			want{queue.Temporary, "451 4.7.5 ", mx1}, false, 1},
		{"required wrong name", outbound.Required, []relaytest.ReceiverOption{relaytest.WithSTARTTLS("other.example.test")}, true,
			want{queue.Temporary, "451 4.7.5 ", mx1}, false, 1},
		{"required trusted", outbound.Required, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, true,
			want{queue.Delivered, "250 ", mx1}, true, 1},
		{"required without STARTTLS", outbound.Required, nil, false,
			want{queue.Temporary, "451 4.7.10 ", mx1}, false, 1},
		{"disabled", outbound.Disabled, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, false,
			want{queue.Delivered, "250 ", mx1}, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.receiver("127.0.0.2", tt.rxOpts...)
			e.mx("example.test", 10, mx1, "127.0.0.2")
			o := outbound.Options{TLS: tt.mode}
			if tt.trust {
				o.RootCAs = r.CertPool()
			}
			got := e.deliverer(o).Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
			check(t, got, tt.want)
			checkReceived(t, r, tt.want.outcome == queue.Delivered, tt.wantTLS)
			if n := r.Conns(); n != tt.conns {
				t.Errorf("receiver saw %d connections, want %d", n, tt.conns)
			}
		})
	}
}

// checkReceived asserts that r received one message, over TLS or not as
// wantTLS says, when delivered, and none otherwise.
func checkReceived(t *testing.T, r *relaytest.Receiver, delivered, wantTLS bool) {
	t.Helper()
	msgs := r.Messages()
	if delivered {
		if len(msgs) != 1 || msgs[0].TLS != wantTLS {
			t.Errorf("messages = %+v, want one with TLS=%v", msgs, wantTLS)
		}
	} else if len(msgs) != 0 {
		t.Errorf("got %d messages, want none", len(msgs))
	}
}

// TestDeliverRequiredTLSNextMX: under Required, a server whose certificate
// fails verification is skipped for the next MX.
func TestDeliverRequiredTLSNextMX(t *testing.T) {
	e := newEnv(t)
	e.receiver("127.0.0.2", relaytest.WithSTARTTLS("mx1.example.test"))
	good := e.receiver("127.0.0.3", relaytest.WithSTARTTLS("mx2.example.test"))
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
	got := e.deliverer(outbound.Options{TLS: outbound.Required, RootCAs: good.CertPool()}).
		Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Delivered, "250 ", "mx2.example.test"})
}

// TestDeliverCancel cancels the context while the server has not greeted:
// Deliver must return Temporary at once and close the connection.
func TestDeliverCancel(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	closed := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			closed <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitLimit))
		// Greet, read the EHLO line, then leave the client waiting for
		// the EHLO reply and cancel.
		if _, err := io.WriteString(c, "220 slow.example.test\r\n"); err != nil {
			closed <- err
			return
		}
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			closed <- err
			return
		}
		cancel()
		_, err = io.Copy(io.Discard, br) // returns at the client's close
		closed <- err
	}()
	got := e.deliverer(outbound.Options{}).Deliver(ctx, e.delivery("example.test", "b@example.test", "c@example.test"))
	w := want{queue.Temporary, "context canceled", "mx1.example.test"}
	check(t, got, w, w)
	if err := <-closed; err != nil {
		t.Errorf("server side: %v (connection not closed by the client?)", err)
	}
}

// TestDeliverNoLeak runs many deliveries of every kind against the same
// receivers and checks that all connections are closed afterwards.
// TestDeliverNoLeak runs deliveries that end every way (TLS failure,
// EHLO 421, MAIL 451, RCPT 550, DATA 554, success) and checks that no
// connection stays open: without reuse once Deliver returns, with reuse
// once Close returns.
func TestDeliverNoLeak(t *testing.T) {
	for _, tt := range []struct {
		name  string
		idle  time.Duration
		close bool
	}{
		{"without reuse", -1, false},
		{"with reuse, after Close", time.Hour, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r1 := e.receiver("127.0.0.2", relaytest.WithBrokenTLS())
			r2 := e.receiver("127.0.0.3", relaytest.WithSTARTTLS("mx2.example.test"))
			e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
			e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
			r1.FailRcpt("gone@example.test", 550, "5.1.1 no")
			r1.FailNext(relaytest.CmdMAIL, 451, "4.3.0 later", 3)
			r1.FailNext(relaytest.CmdDATA, 554, "5.7.1 no", 2)
			r2.FailNext(relaytest.CmdEHLO, 421, "4.7.0 no", 2)
			m := e.deliverer(outbound.Options{IdleTimeout: tt.idle})
			for range 10 {
				m.Deliver(context.Background(), e.delivery("example.test", "b@example.test", "gone@example.test"))
			}
			if tt.close {
				m.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			for _, r := range []*relaytest.Receiver{r1, r2} {
				if err := r.WaitIdle(ctx); err != nil {
					t.Fatalf("%s: %d connections open: %v", r.Addr(), r.OpenConns(), err)
				}
			}
			if !tt.close && r1.Conns()+r2.Conns() < 10 {
				t.Errorf("only %d connections for 10 deliveries", r1.Conns()+r2.Conns())
			}
		})
	}
}

func TestParseTLSMode(t *testing.T) {
	for in, want := range map[string]outbound.TLSMode{
		"": outbound.Opportunistic, "opportunistic": outbound.Opportunistic,
		"Required": outbound.Required, " disabled ": outbound.Disabled,
	} {
		got, err := outbound.ParseTLSMode(in)
		if err != nil || got != want {
			t.Errorf("ParseTLSMode(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in != "" && !strings.EqualFold(strings.TrimSpace(in), got.String()) {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	if _, err := outbound.ParseTLSMode("always"); err == nil {
		t.Error("ParseTLSMode(always) succeeded")
	}
}

// TestDeliverLog checks the one log line per attempt on an MX address.
func TestDeliverLog(t *testing.T) {
	e := newEnv(t)
	e.receiver("127.0.0.3")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2") // nothing listens
	e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
	core, logs := observer.New(zap.DebugLevel)
	got := e.deliverer(outbound.Options{Logger: zap.New(core)}).Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Delivered, "250 ", "mx2.example.test"})
	entries := logs.FilterMessage("delivery attempt").AllUntimed()
	if len(entries) != 2 {
		t.Fatalf("got %d attempt lines, want 2: %v", len(entries), logs.AllUntimed())
	}
	replies := make([]map[string]any, 2)
	for i, mx := range []string{"mx1.example.test", "mx2.example.test"} {
		f := entries[i].ContextMap()
		replies[i], _ = f["reply"].(map[string]any)
		if f["id"] != "q1" || f["mx"] != mx || replies[i] == nil {
			t.Errorf("line %d fields = %v", i, f)
		}
	}
	// The reply as typed fields: no code for a refused connection, the
	// remote's code for its reply.
	if r := replies[0]; r["code"] != nil || !strings.Contains(fmt.Sprint(r["text"]), "connection refused") {
		t.Errorf("first attempt reply %v", r)
	}
	if r := replies[1]; fmt.Sprint(r["code"]) != "250" {
		t.Errorf("second attempt reply %v", r)
	}
}

type brokenBody struct{}

func (brokenBody) Size() int64                  { return 10 }
func (brokenBody) Open() (io.ReadCloser, error) { return nil, errors.New("disk on fire") }

// TestDeliverBodyError: a queued message that cannot be read defers the
// accepted recipients and sends no DATA.
func TestDeliverBodyError(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	d := e.delivery("example.test", "b@example.test")
	d.Body = brokenBody{}
	got := e.deliverer(outbound.Options{}).Deliver(context.Background(), d)
	check(t, got, want{queue.Temporary, "451 4.3.0 ", "mx1.example.test"})
	if !strings.Contains(got[0].Reply.String(), "disk on fire") {
		t.Errorf("reply %q hides the cause", got[0].Reply.String())
	}
	if n := len(r.Messages()); n != 0 {
		t.Errorf("got %d messages", n)
	}
}

// TestDeliverCommandTimeout: a server that accepts and never greets is a
// temporary failure once CommandTimeout passes. Only the outcome is
// checked, never the time it took.
func TestDeliverCommandTimeout(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitLimit))
		io.Copy(io.Discard, c)
	}()
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	got := e.deliverer(outbound.Options{CommandTimeout: 50 * time.Millisecond}).
		Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Temporary, "", "mx1.example.test"})
	if !strings.Contains(got[0].Reply.String(), "timeout") {
		t.Errorf("reply %q", got[0].Reply.String())
	}
}

// truncatedBody yields the start of a message, then fails: a disk error
// in the middle of reading a spooled message.
type truncatedBody struct{}

func (truncatedBody) Size() int64 { return 100 }
func (truncatedBody) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("Subject: cut\r\n\r\nthe first part"),
		iotest.ErrReader(errors.New("disk on fire")))), nil
}

// TestDeliverBodyErrorMidData: a message that fails half-way through DATA
// is never delivered cut short (the final dot must not follow it, and QUIT
// would write one), and is deferred to be sent whole later.
func TestDeliverBodyErrorMidData(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.2")
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	d := e.delivery("example.test", "b@example.test")
	d.Body = truncatedBody{}
	got := e.deliverer(outbound.Options{}).Deliver(context.Background(), d)
	if got[0].Outcome != queue.Temporary {
		t.Fatalf("outcome %v, want deferred", got[0].Outcome)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := r.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Messages()); n != 0 {
		t.Fatalf("the receiver accepted %d cut-short message(s)", n)
	}
}

// TestMailLoop: an MX that resolves to an unspecified address, or to the
// address and port postern itself listens on, is never dialed; when it is
// all the domain has, the mail fails for good as a loop (554 5.4.6), and
// another MX of the domain still takes it. Other loopback MX hosts, as in
// every other test here, are fine.
func TestMailLoop(t *testing.T) {
	e := newEnv(t)
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.4"), uint16(e.port))
	e.mx("zero.test", 10, "mx.zero.test", "0.0.0.0")
	e.mx("self.test", 10, "mx.self.test", "127.0.0.4")
	e.mx("any.test", 10, "mx.any.test", "127.0.0.3")
	e.mx("mixed.test", 10, "mx1.mixed.test", "127.0.0.4")
	e.mx("mixed.test", 20, "mx2.mixed.test", "127.0.0.2")
	e.receiver("127.0.0.2")
	m := e.deliverer(outbound.Options{Local: []netip.AddrPort{self}})
	ctx := context.Background()
	check(t, m.Deliver(ctx, e.delivery("zero.test", "b@zero.test")), want{queue.Permanent, "554 5.4.6", ""})
	check(t, m.Deliver(ctx, e.delivery("self.test", "b@self.test")), want{queue.Permanent, "554 5.4.6", ""})
	check(t, m.Deliver(ctx, e.delivery("mixed.test", "b@mixed.test")), want{queue.Delivered, "250 ", "mx2.mixed.test"})

	// A listener on every address: any local address on its port loops.
	any := e.deliverer(outbound.Options{Local: []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(e.port))}})
	check(t, any.Deliver(ctx, e.delivery("any.test", "b@any.test")), want{queue.Permanent, "554 5.4.6", ""})
}

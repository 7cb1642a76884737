package main

// End-to-end tests of issue 13's isolation and shaping: a tarpit MX that
// never answers must not hold up other mail, and a provider that answers
// "421 4.7.28" past a rate must be slowed down as a whole (at most one
// refused attempt per delivered message), resume by itself, and show as
// suspended in `postern queue destinations`.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"postern/configs"
	"postern/queue"
	"postern/relay/relaytest"
)

// relayMany submits one message per recipient through the relay listener,
// on one connection, and fails the test on any refusal.
func relayMany(t testing.TB, addr string, rcpts ...string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("bulk.test"); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range rcpts {
		msg := fmt.Sprintf("From: app@example.test\r\nTo: %s\r\nSubject: bulk\r\n\r\nHello.\r\n", rcpt)
		if err := c.SendMail("app@example.test", []string{rcpt}, strings.NewReader(msg)); err != nil {
			t.Fatalf("submitting to %s: %v", rcpt, err)
		}
	}
	c.Quit()
}

// tarpitMX accepts TCP connections and never sends a byte: the greeting
// never comes. It counts the connections accepted and those the client
// has closed.
type tarpitMX struct {
	accepted, closed atomic.Int64
	first            chan struct{} // closed at the first connection
	once             sync.Once
}

func newTarpitMX(t *testing.T, addr string) *tarpitMX {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tp := &tarpitMX{first: make(chan struct{})}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tp.accepted.Add(1)
			tp.once.Do(func() { close(tp.first) })
			conns.Go(func() {
				defer c.Close()
				io.Copy(io.Discard, c) // until the client closes
				tp.closed.Add(1)
			})
		}
	}()
	return tp
}

// TestTarpitDoesNotStallOtherMail: with more messages queued for a tarpit
// (an MX that accepts and never greets) than there are workers, a message
// to a healthy domain is delivered while the tarpit's connections are
// still open, and the tarpit gets one connection, not one per worker.
func TestTarpitDoesNotStallOtherMail(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("tarpit.test", "127.0.2.3")
	w.mx("dest.test", "127.0.2.2")
	tp := newTarpitMX(t, fmt.Sprintf("127.0.2.3:%d", w.port))
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, w.config())
	in.start()

	// More than the default number of workers: each would otherwise take
	// one and wait on the tarpit.
	n := configs.Default().Delivery.Workers + 50
	var rcpts []string
	for i := range n {
		rcpts = append(rcpts, fmt.Sprintf("victim%d@tarpit.test", i))
	}
	relayMany(t, in.cfg.Relay, rcpts...)
	select {
	case <-tp.first:
	case <-time.After(30 * time.Second):
		t.Fatalf("the tarpit got no connection\n%s", in.logs.String())
	}

	relayOne(t, in, "bob@dest.test")
	if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1); err != nil {
		t.Fatalf("the healthy domain's message was not delivered: %v\n%s", err, in.logs.String())
	}
	// The ordering: the tarpit's connection was opened before, and is
	// still open after, the healthy delivery.
	if open := tp.accepted.Load() - tp.closed.Load(); open < 1 {
		t.Errorf("no tarpit connection open when the healthy message was delivered (%d accepted, %d closed)",
			tp.accepted.Load(), tp.closed.Load())
	}
	// One probe for a domain whose MX hosts are not known yet, one more
	// at most once they are, until a host answers.
	if got := tp.accepted.Load(); got > 2 {
		t.Errorf("the tarpit got %d connections, want at most 2 (it has not answered yet)", got)
	}
}

// rateLimitedMX is a fake provider MX: it accepts at most allow
// recipients in any window, answers "421 4.7.28" to RCPT beyond that, and
// everything with refuseAll set. It counts deliveries and refusals.
type rateLimitedMX struct {
	allow  int
	window time.Duration

	mu        sync.Mutex
	accepted  []time.Time
	delivered int
	refused   int
	refuseAll string // when set, every RCPT gets "450 4.7.0 " + this
	changed   chan struct{}
}

func (m *rateLimitedMX) NewSession(*smtp.Conn) (smtp.Session, error) { return &rlSession{m: m}, nil }

type rlSession struct {
	m     *rateLimitedMX
	rcpts int
}

func (s *rlSession) Mail(string, *smtp.MailOptions) error { return nil }

func (s *rlSession) Rcpt(string, *smtp.RcptOptions) error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.notify()
	if m.refuseAll != "" {
		m.refused++
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: m.refuseAll}
	}
	now := time.Now()
	kept := m.accepted[:0]
	for _, at := range m.accepted {
		if now.Sub(at) < m.window {
			kept = append(kept, at)
		}
	}
	m.accepted = kept
	if len(m.accepted) >= m.allow {
		m.refused++
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 28},
			Message: "Our system has detected an unusual rate of mail from your IP address: rate limited"}
	}
	m.accepted = append(m.accepted, now)
	s.rcpts++
	return nil
}

func (s *rlSession) Data(r io.Reader) error {
	io.Copy(io.Discard, r)
	s.m.mu.Lock()
	s.m.delivered += s.rcpts
	s.m.notify()
	s.m.mu.Unlock()
	return nil
}

func (s *rlSession) Reset()        { s.rcpts = 0 }
func (s *rlSession) Logout() error { return nil }

// notify wakes waiters; m.mu is held.
func (m *rateLimitedMX) notify() {
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
}

// wait blocks until cond holds (checked under m.mu) or ctx ends.
func (m *rateLimitedMX) wait(ctx context.Context, cond func() bool) error {
	for {
		m.mu.Lock()
		if cond() {
			m.mu.Unlock()
			return nil
		}
		if m.changed == nil {
			m.changed = make(chan struct{})
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (m *rateLimitedMX) counts() (delivered, refused int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.delivered, m.refused
}

func startRateLimitedMX(t *testing.T, addr string, m *rateLimitedMX) {
	t.Helper()
	srv := smtp.NewServer(m)
	srv.Domain = "mx1.provider.test"
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestRateLimitedProviderE2E: a provider MX that takes 8 messages in any
// 2 seconds and answers "421 4.7.28" beyond, with 40 messages queued for
// it: every one is delivered without intervention, with at most one
// refused attempt per delivered message. Then the provider says to go
// away for an hour (a pattern with its own suspension): the provider
// shows as suspended in `postern queue destinations`, and the message
// waiting for it is deferred to the end of the suspension without another
// attempt.
func TestRateLimitedProviderE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.dns.SetMX("provider.test", relaytest.MX{Pref: 10, Host: "mx1.provider.test"})
	w.dns.SetA("mx1.provider.test", "127.0.2.2")
	mx := &rateLimitedMX{allow: 8, window: 2 * time.Second}
	startRateLimitedMX(t, fmt.Sprintf("127.0.2.2:%d", w.port), mx)
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	in := newInstance(t, cfg)
	setDelivery(t, in, `
shaping:
  providers:
    - {name: fakeprov, mx_suffixes: [.provider.test], connections: 5}
  rate_limit_patterns:
    - {text: "go away for an hour", suspend: 1h}
    - {enhanced_code: "4.7.28"}
`)
	in.start()

	const n = 40
	var rcpts []string
	for i := range n {
		rcpts = append(rcpts, fmt.Sprintf("user%d@provider.test", i))
	}
	relayMany(t, in.cfg.Relay, rcpts...)
	if err := mx.wait(ctxTimeout(t, 3*time.Minute), func() bool { return mx.delivered == n }); err != nil {
		d, r := mx.counts()
		t.Fatalf("%d of %d delivered (%d refused): %v\n%s", d, n, r, err, in.logs.String())
	}
	delivered, refused := mx.counts()
	t.Logf("%d delivered, %d refused attempts", delivered, refused)
	if refused > delivered {
		t.Errorf("%d refused attempts for %d delivered messages, want at most one per delivery", refused, delivered)
	}
	if refused == 0 {
		t.Error("the provider never refused: the test did not test the slow-down")
	}

	// The provider says to go away for an hour.
	mx.mu.Lock()
	mx.refuseAll = "go away for an hour"
	mx.mu.Unlock()
	id := relayOne(t, in, "late@provider.test")
	in.waitLog(30*time.Second, func(e logEntry) bool {
		return e.isMsg("destination suspended") && e.str("destination") == "fakeprov"
	})
	out, err := in.postern("", "queue", "destinations", "--json")
	if err != nil {
		t.Fatalf("queue destinations: %v\n%s", err, out)
	}
	var ds []queue.Destination
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("queue destinations --json: %v\n%s", err, out)
	}
	var prov *queue.Destination
	for i := range ds {
		if ds[i].Name == "fakeprov" {
			prov = &ds[i]
		}
	}
	if prov == nil || prov.Kind != "provider" || prov.State != "suspended" || time.Until(prov.Until) < 50*time.Minute ||
		prov.LastReply.Code != 450 || prov.LastReply.Text != "go away for an hour" || prov.Delivered != n {
		t.Fatalf("provider fakeprov: %+v, want suspended for an hour after 450 4.7.0, %d delivered\n%s", prov, n, out)
	}
	table, err := in.postern("", "queue", "destinations")
	if err != nil || !strings.Contains(table, "fakeprov") || !strings.Contains(table, "suspended") ||
		!strings.Contains(table, "450 4.7.0 go away for an hour") {
		t.Errorf("queue destinations: %v\n%s", err, table)
	}

	// Its retry comes due within seconds (retry.initial 300ms): the
	// queue defers it to the end of the suspension, without an attempt.
	e := in.waitLog(30*time.Second, hasID(id, "delivery suspended"))
	if r := e.reply(); r.Text != "delivery temporarily suspended: 450 4.7.0 go away for an hour" || r.Enhanced.String() != "4.7.0" {
		t.Errorf("suspended with %+v", r)
	}
	m := showJSON(t, in, id)
	if r := m.Rcpts[0]; r.Attempts != 1 || time.Until(r.NextAttempt) < 50*time.Minute {
		t.Errorf("the waiting recipient: %+v, want 1 attempt and the next in about an hour", r)
	}
	if _, r := mx.counts(); r != refused+1 {
		t.Errorf("%d refusals after the suspension began, want 1 (the one that began it)", r-refused)
	}
}

package bounces

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/relaytest"
)

// fakeQueue holds traces by queue id and records what RecordFeedback is
// given; err, when set, is RecordFeedback's answer (nothing recorded).
type fakeQueue struct {
	traces map[string]*queue.Trace
	err    error

	mu   sync.Mutex
	evs  []queue.Event
	sups []queue.Suppression
}

func (f *fakeQueue) Trace(id string) (*queue.Trace, error) {
	if t := f.traces[id]; t != nil {
		return t, nil
	}
	return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
}

func (f *fakeQueue) RecordFeedback(evs []queue.Event, sups []queue.Suppression) error {
	if f.err != nil {
		return f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evs, f.sups = append(f.evs, evs...), append(f.sups, sups...)
	return nil
}

func (f *fakeQueue) recorded() ([]queue.Event, []queue.Suppression) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]queue.Event(nil), f.evs...), append([]queue.Suppression(nil), f.sups...)
}

const (
	msg1 = "00000000000000A1" // one recipient, nobody@dest.example
	msg2 = "00000000000000A2" // three recipients
)

func newFakeQueue() *fakeQueue {
	return &fakeQueue{traces: map[string]*queue.Trace{
		msg1: {QueueID: msg1, User: "alice", MessageID: "<m1@example.test>", Tags: []string{"t"}, Rcpts: []string{"nobody@dest.example"}},
		msg2: {QueueID: msg2, User: "", MessageID: "<m2@example.test>",
			Rcpts: []string{"a@dest.example", "Gone.User@contoso.example", "user@example.com"}},
	}}
}

// startMX serves an MX over q on a free loopback port.
func startMX(t *testing.T, q Queue, tlsConf *tls.Config) (string, *Tokens) {
	t.Helper()
	tk := testTokens(t)
	m := NewMX(MXOptions{Hostname: "mx.bounces.example.test", Tokens: tk, Queue: q, TLS: tlsConf, MaxMessageBytes: 64 << 10})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve(l) }()
	t.Cleanup(func() {
		m.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String(), tk
}

// hello connects to addr and says EHLO; the client is closed at the end
// of the test.
func hello(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("relay.example.net"); err != nil {
		t.Fatal(err)
	}
	return c
}

// send delivers data from <> to rcpts and returns the first error, with
// the command it answered.
func send(t *testing.T, addr string, rcpts []string, data []byte) error {
	t.Helper()
	c := hello(t, addr)
	if err := c.Mail("", nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return fmt.Errorf("RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return c.Quit()
}

func smtpCode(err error) string {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return fmt.Sprint(err)
	}
	return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
}

func testdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

// TestMXRefusesAllButTokens: any other domain is a relay attempt (550
// 5.7.1); at the bounce domain, only a valid token of a message the queue
// still knows is taken (else 550 5.1.1). Nothing is recorded.
func TestMXRefusesAllButTokens(t *testing.T) {
	q := newFakeQueue()
	addr, tk := startMX(t, q, nil)
	valid := tk.ReturnPath(msg1, []int{0})
	local, _, _ := strings.Cut(valid, "@")
	for _, tc := range []struct{ rcpt, want string }{
		{"bob@example.org", "550 5.7.1"},
		{local + "@example.org", "550 5.7.1"},
		{"postmaster@bounces.example.test", "550 5.1.1"},
		{local[:len(local)-1] + "q@bounces.example.test", "550 5.1.1"},
		{tk.ReturnPath("00000000000000FF", []int{0}), "550 5.1.1"}, // a real token, a message long gone
	} {
		err := send(t, addr, []string{tc.rcpt}, testdata(t, "postfix-remote.eml"))
		if got := smtpCode(err); got != tc.want || !strings.HasPrefix(err.Error(), "RCPT") {
			t.Errorf("RCPT %s: %v, want %s at RCPT", tc.rcpt, err, tc.want)
		}
	}
	if evs, sups := q.recorded(); len(evs)+len(sups) != 0 {
		t.Errorf("recorded %v, %v", evs, sups)
	}
}

// TestMXBounce: a failed DSN to a recipient's token becomes a
// message.bounced event with the remote's typed reply and, for an
// address that is gone, a suppression for the message's user.
func TestMXBounce(t *testing.T) {
	q := newFakeQueue()
	addr, tk := startMX(t, q, nil)
	if err := send(t, addr, []string{tk.ReturnPath(msg1, []int{0})}, testdata(t, "postfix-remote.eml")); err != nil {
		t.Fatal(err)
	}
	evs, sups := q.recorded()
	if len(evs) != 1 || len(sups) != 1 {
		t.Fatalf("recorded %+v, %+v; want one event and one suppression", evs, sups)
	}
	e, s := evs[0], sups[0]
	if e.Type != queue.EventBounced || e.QueueID != msg1 || e.Recipient != "nobody@dest.example" || e.User != "alice" ||
		e.MessageID != "<m1@example.test>" || e.Reply.Code != 550 || e.Reply.Enhanced.String() != "5.1.1" || e.RemoteMTA != "mx.dest.example" {
		t.Errorf("event %+v", e)
	}
	if s.User != "alice" || s.Address != "nobody@dest.example" || s.Reason != queue.SuppressBounce || s.QueueID != msg1 || s.Reply != e.Reply {
		t.Errorf("suppression %+v", s)
	}
}

// TestMXSameReturnPathTwice: one report to the same return path given
// twice in RCPT is recorded once.
func TestMXSameReturnPathTwice(t *testing.T) {
	q := newFakeQueue()
	addr, tk := startMX(t, q, nil)
	rp := tk.ReturnPath(msg1, []int{0})
	if err := send(t, addr, []string{rp, rp}, testdata(t, "postfix-remote.eml")); err != nil {
		t.Fatal(err)
	}
	if evs, sups := q.recorded(); len(evs) != 1 || len(sups) != 1 {
		t.Errorf("recorded %d events and %d suppressions, want one each", len(evs), len(sups))
	}
}

// TestMXBounceByFinalRecipient: a token for a delivery of several
// recipients names the message only; Final-Recipient says which one. A
// full mailbox bounces without suppressing; a delayed notice records
// nothing.
func TestMXBounceByFinalRecipient(t *testing.T) {
	q := newFakeQueue()
	q.traces[msg2].Rcpts = append(q.traces[msg2].Rcpts, "full@dest.example", "slow@dest.example")
	addr, tk := startMX(t, q, nil)
	rp := tk.ReturnPath(msg2, []int{0, 1, 3, 4})
	for _, f := range []string{"exchange.eml", "delayed-two.eml"} {
		if err := send(t, addr, []string{rp}, testdata(t, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	evs, sups := q.recorded()
	var got []string
	for _, e := range evs {
		got = append(got, e.Recipient+" "+e.Reply.Enhanced.String())
	}
	if strings.Join(got, ",") != "Gone.User@contoso.example 5.1.10,full@dest.example 5.2.2" {
		t.Errorf("events for %q", got)
	}
	if len(sups) != 1 || sups[0].Address != "Gone.User@contoso.example" || sups[0].User != "" {
		t.Errorf("suppressions %+v, want Gone.User alone (5.1.10; a full mailbox is not gone)", sups)
	}
}

// TestMXComplaint: an ARF report becomes message.complained with its
// feedback type and a complaint suppression of the recipient.
func TestMXComplaint(t *testing.T) {
	q := newFakeQueue()
	addr, tk := startMX(t, q, nil)
	if err := send(t, addr, []string{tk.ReturnPath(msg2, []int{0, 2})}, testdata(t, "arf-rfc5965.eml")); err != nil {
		t.Fatal(err)
	}
	evs, sups := q.recorded()
	if len(evs) != 1 || evs[0].Type != queue.EventComplained || evs[0].FeedbackType != "abuse" || evs[0].Recipient != "user@example.com" {
		t.Errorf("events %+v", evs)
	}
	if len(sups) != 1 || sups[0].Reason != queue.SuppressComplaint || sups[0].Address != "user@example.com" {
		t.Errorf("suppressions %+v", sups)
	}
}

// TestMXFailures: a queue that cannot record gets the remote to retry
// (451), never a 250 for a report that was not kept; a message that is no
// report is taken and dropped; one over the size limit is refused.
func TestMXFailures(t *testing.T) {
	q := newFakeQueue()
	q.err = errors.New("queue: disk on fire")
	addr, tk := startMX(t, q, nil)
	rp := tk.ReturnPath(msg1, []int{0})
	if err := send(t, addr, []string{rp}, testdata(t, "postfix-remote.eml")); smtpCode(err) != "451 4.3.0" {
		t.Errorf("with a failing queue: %v, want 451 4.3.0", err)
	}
	if err := send(t, addr, []string{rp}, testdata(t, "autoreply.eml")); err != nil {
		t.Errorf("an auto-reply: %v, want it taken", err)
	}
	big := append(testdata(t, "postfix-remote.eml"), bytes.Repeat([]byte("x\r\n"), 40<<10)...)
	if err := send(t, addr, []string{rp}, big); smtpCode(err) != "552 5.3.4" {
		t.Errorf("a report over the limit: %v, want 552 5.3.4", err)
	}
}

// TestMXOffersSTARTTLSNotAUTH: STARTTLS is offered when a certificate is
// configured; AUTH never is.
func TestMXOffersSTARTTLSNotAUTH(t *testing.T) {
	cert, pool, err := relaytest.SelfSigned("mx.bounces.example.test")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startMX(t, newFakeQueue(), &tls.Config{Certificates: []tls.Certificate{cert}})
	c := hello(t, addr)
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not offered")
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH offered")
	}
	tc, err := smtp.DialStartTLS(addr, &tls.Config{RootCAs: pool, ServerName: "mx.bounces.example.test"})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer tc.Close()
	if _, ok := tc.TLSConnectionState(); !ok {
		t.Error("no TLS after STARTTLS")
	}
}

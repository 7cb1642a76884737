package queue

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"postern/queue/reply"
)

func TestAddressGone(t *testing.T) {
	for _, tt := range []struct {
		enhanced string
		want     bool
	}{
		{"5.1.1", true},  // no such mailbox
		{"5.1.2", true},  // no such domain
		{"5.1.10", true}, // null MX (RFC 7505)
		{"5.1.6", true},  // moved
		{"5.2.1", true},  // disabled
		{"5.2.2", false}, // full: it may empty
		{"5.7.1", false}, // policy
		{"5.6.0", false}, // content
		{"5.3.4", false}, // too big
		{"4.1.1", false}, // temporary
		{"", false},      // no enhanced code: the text is not read
	} {
		if got := addressGone(rp(550, tt.enhanced, "x")); got != tt.want {
			t.Errorf("addressGone(%q) = %v", tt.enhanced, got)
		}
	}
}

// TestSuppressionFromBounce: a recipient refused because it does not exist
// is suppressed for the message's user in the same commit, with the reply;
// a policy refusal is not; the list can be read, listed and edited, and an
// expiry is honoured.
func TestSuppressionFromBounce(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) { o.Suppression = SuppressionOptions{Enabled: true, ExpireAfter: 30 * 24 * time.Hour} }
	h.fake.on("Gone@x.test", 1, Permanent, rp(550, "5.1.1", "no such user"))
	h.fake.on("spam@x.test", 1, Permanent, rp(554, "5.7.1", "rejected as spam"))
	q := h.open()
	env := &Envelope{From: "app@example.org", Rcpts: []string{"Gone@x.test", "spam@x.test"}, User: "app", Listener: "submission"}
	id, err := q.Enqueue(context.Background(), env, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	h.step()

	s, err := q.Suppressed("app", "gone@X.test")
	if err != nil || s == nil {
		t.Fatalf("Suppressed = %v, %v; want the bounced address", s, err)
	}
	if s.Reason != SuppressBounce || s.Reply.Code != 550 || s.Reply.Enhanced != reply.MustEnhanced("5.1.1") ||
		s.QueueID != id || !s.Created.Equal(t0) || !s.Expires.Equal(t0.Add(30*24*time.Hour)) {
		t.Errorf("suppression = %+v", s)
	}
	if s, _ := q.Suppressed("app", "spam@x.test"); s != nil {
		t.Errorf("a policy refusal was suppressed: %+v", s)
	}
	if s, _ := q.Suppressed("other", "gone@x.test"); s != nil {
		t.Errorf("another user's list has it: %+v", s)
	}

	if err := q.Suppress(Suppression{User: "other", Address: "x@y.test"}); err != nil {
		t.Fatal(err)
	}
	if l, err := q.Suppressions("app", false); err != nil || len(l) != 1 || l[0].Address != "Gone@x.test" {
		t.Errorf("Suppressions(app) = %+v, %v", l, err)
	}
	if l, err := q.Suppressions("", true); err != nil || len(l) != 2 || l[1].Reason != SuppressManual {
		t.Errorf("Suppressions(all) = %+v, %v", l, err)
	}
	if err := q.Unsuppress("other", "x@y.test"); err != nil {
		t.Fatal(err)
	}
	if err := q.Unsuppress("other", "x@y.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Unsuppress: %v, want ErrNotFound", err)
	}

	h.clock.Advance(30 * 24 * time.Hour)
	if s, _ := q.Suppressed("app", "gone@x.test"); s != nil {
		t.Errorf("expired suppression still applies: %+v", s)
	}
	if err := q.Unsuppress("app", "gone@x.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Unsuppress of an expired suppression: %v, want ErrNotFound", err)
	}
}

// TestSuppressionOff: without Options.Suppression nothing is recorded, and
// the queue's own messages (no listener) never are.
func TestSuppressionOff(t *testing.T) {
	h := newHarness(t)
	h.fake.on("gone@x.test", 1, Permanent, rp(550, "5.1.1", "no such user"))
	q := h.open()
	if _, err := q.Enqueue(context.Background(), &Envelope{From: "a@example.org", Rcpts: []string{"gone@x.test"}, Listener: "relay"},
		strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	h.step()
	if l, _ := q.Suppressions("", true); len(l) != 0 {
		t.Errorf("suppressed with the list off: %+v", l)
	}
}

// TestIdempotencyKey: the key is remembered with the message, per user,
// for IdempotencyWindow, and then forgotten by the purge.
func TestIdempotencyKey(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	if a, err := q.Idempotent("u", "k1"); a != nil || err != nil {
		t.Fatalf("unknown key: %v, %v", a, err)
	}
	id, err := q.Enqueue(context.Background(), &Envelope{From: "a@example.org", Rcpts: []string{"r@x.test"}, User: "u",
		MessageID: "<m@example.org>", IdempotencyKey: "k1"}, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := q.Idempotent("u", "k1")
	if err != nil || a == nil || a.ID != id || a.MessageID != "<m@example.org>" {
		t.Fatalf("Idempotent = %+v, %v", a, err)
	}
	if a, _ := q.Idempotent("v", "k1"); a != nil {
		t.Errorf("another user's key matched")
	}
	h.clock.Advance(IdempotencyWindow)
	if a, _ := q.Idempotent("u", "k1"); a != nil {
		t.Errorf("key still remembered after the window")
	}
	q.purge(h.clock.Now())
	if n, m := bucketLen(t, q, bIdempotency), bucketLen(t, q, bIdempotencyExp); n != 0 || m != 0 {
		t.Errorf("after the purge: %d keys, %d expiry entries", n, m)
	}
}

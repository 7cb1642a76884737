package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// verp is a BounceOptions.ReturnPath for tests: the id and the indexes,
// readable.
func verp(id string, rcpts []int) string { return fmt.Sprintf("b+%s-%v@bounces.test", id, rcpts) }

// TestTraceOutlivesMessage: a submitted message is delivered with a
// return path per delivery (the indexes of its recipients), the sender
// staying in the record; once it is delivered and gone, its trace still
// answers Trace until Keep has passed, and the purge then removes it.
func TestTraceOutlivesMessage(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) { o.Bounces = BounceOptions{ReturnPath: verp, Keep: 48 * time.Hour} }
	q := h.open()
	env := &Envelope{From: "app@example.org", Rcpts: []string{"a@x.test", "b@y.test", "c@x.test"}, User: "app",
		Listener: "submission", MessageID: "<m1@example.org>", Tags: []string{"welcome"}, Metadata: map[string]string{"k": "v"}}
	id, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	h.wait(2) // one delivery per domain
	var paths []string
	for _, c := range h.fake.Calls() {
		if c.From != "app@example.org" {
			t.Errorf("Delivery.From = %q, want the envelope sender", c.From)
		}
		paths = append(paths, c.MailFrom())
	}
	slices.Sort(paths)
	want := []string{verp(id, []int{0, 2}), verp(id, []int{1})}
	if !slices.Equal(paths, want) {
		t.Errorf("return paths %q, want %q", paths, want)
	}
	if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the delivered message is still there: %v", err)
	}

	tr, err := q.Trace(id)
	if err != nil {
		t.Fatalf("Trace after delivery: %v", err)
	}
	if tr.QueueID != id || tr.User != "app" || tr.Listener != "submission" || tr.MessageID != "<m1@example.org>" ||
		!slices.Equal(tr.Tags, []string{"welcome"}) || tr.Metadata["k"] != "v" ||
		!slices.Equal(tr.Rcpts, env.Rcpts) || !tr.Expires.Equal(h.clock.Now().Add(48*time.Hour)) {
		t.Errorf("trace %+v", tr)
	}

	h.clock.Advance(48 * time.Hour)
	if _, err := q.Trace(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Trace after Keep: %v, want ErrNotFound", err)
	}
	if n := bucketLen(t, q, bTraces); n != 1 {
		t.Fatalf("%d traces before the purge, want 1", n)
	}
	q.purge(h.clock.Now())
	if n, m := bucketLen(t, q, bTraces), bucketLen(t, q, bTraceExp); n != 0 || m != 0 {
		t.Errorf("after the purge: %d traces, %d expiry entries; want none", n, m)
	}
}

// TestTraceOnlyForSubmittedMailWithASender: the null sender (nothing
// answers a bounce of a bounce) and mail the queue made itself (no
// listener) keep their sender in MAIL FROM and leave no trace.
func TestTraceOnlyForSubmittedMailWithASender(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) { o.Bounces = BounceOptions{ReturnPath: verp} }
	q := h.open()
	var ids []string
	for _, env := range []*Envelope{
		{From: "", Rcpts: []string{"a@x.test"}, Listener: "relay"},
		{From: "app@example.org", Rcpts: []string{"b@x.test"}},
	} {
		id, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	q.Start()
	h.wait(2)
	for _, c := range h.fake.Calls() {
		if c.ReturnPath != "" || c.MailFrom() != c.From {
			t.Errorf("delivery from %q went out with return path %q", c.From, c.ReturnPath)
		}
	}
	for _, id := range ids {
		if _, err := q.Trace(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Trace(%s) = %v, want ErrNotFound", id, err)
		}
	}
	if n := bucketLen(t, q, bTraces); n != 0 {
		t.Errorf("%d traces written", n)
	}
}

// TestRecordFeedback: a late report's events and suppressions are written
// together; an automatic suppression gets the list's expiry, and with the
// list off only the events are written.
func TestRecordFeedback(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(fmt.Sprint("suppression=", enabled), func(t *testing.T) {
			h := newHarness(t)
			h.opts = func(o *Options) {
				o.Subscribers = []Subscriber{{Name: "all"}}
				o.Suppression = SuppressionOptions{Enabled: enabled, ExpireAfter: time.Hour}
			}
			q := h.open()
			ev := Event{Type: EventBounced, QueueID: "0000000000000001", Recipient: "gone@x.test", User: "u",
				Reply: rp(550, "5.1.1", "no such user")}
			sup := Suppression{User: "u", Address: "gone@x.test", Reason: SuppressBounce, Reply: ev.Reply}
			if err := q.RecordFeedback([]Event{ev}, []Suppression{sup}); err != nil {
				t.Fatal(err)
			}
			if got := drain(t, q, "all", h.clock.Now()); !slices.Equal(got, []string{"message.bounced gone@x.test"}) {
				t.Errorf("events %q", got)
			}
			s, err := q.Suppressed("u", "Gone@X.test")
			switch {
			case err != nil:
				t.Fatal(err)
			case !enabled && s != nil:
				t.Errorf("suppressed with the list off: %+v", s)
			case enabled && (s == nil || s.Reason != SuppressBounce || !s.Expires.Equal(h.clock.Now().Add(time.Hour))):
				t.Errorf("suppression %+v, want a bounce expiring in an hour", s)
			}
		})
	}
}

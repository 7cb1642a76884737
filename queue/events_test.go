package queue

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// drain takes sub's due events one at a time, in the order DueEvents gives
// them, marking each done, and returns "type recipient" for each.
func drain(t *testing.T, q *Queue, sub string, now time.Time) []string {
	t.Helper()
	var got []string
	for range 100 {
		due, _, err := q.DueEvents(sub, now, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(due) == 0 {
			return got
		}
		got = append(got, string(due[0].Event.Type)+" "+due[0].Event.Recipient)
		if err := q.EventDone(sub, due[0].Seq); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("events never ran out")
	return nil
}

func bucketLen(t *testing.T, q *Queue, name []byte) int {
	t.Helper()
	n := 0
	if err := q.view(func(tx *bolt.Tx) error { n = tx.Bucket(name).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEventsFollowStateChanges: a submitted message's recipients produce
// accepted, deferred, delayed, delivered and bounced events, each written
// with the change, in order per message, with what the submitter gave;
// a subscriber gets only what it wants; the queue's own DSN has none.
func TestEventsFollowStateChanges(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 24 * time.Hour}
	h.opts = func(o *Options) {
		o.Subscribers = []Subscriber{
			{Name: "all"},
			{Name: "bounces", Wants: func(e *Event) bool { return e.Type == EventBounced }},
		}
	}
	h.fake.on("a@x.test", 1, Delivered, rp(250, "2.0.0", "ok"))
	h.fake.on("b@y.test", 1, Temporary, rp(451, "4.7.1", "greylisted"))
	h.fake.on("b@y.test", 2, Temporary, rp(451, "4.7.1", "greylisted"))
	h.fake.on("b@y.test", 3, Permanent, rp(550, "5.1.1", "no such user"))
	q := h.open()
	env := &Envelope{From: "app@example.org", Rcpts: []string{"a@x.test", "b@y.test"}, User: "app@example.org",
		Listener: "submission", MessageID: "<m1@example.org>", Tags: []string{"welcome"}, Metadata: map[string]string{"user_id": "42"}}
	id, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.EventsWritten():
	default:
		t.Error("Enqueue recorded events without signalling EventsWritten")
	}

	// One due event per message at a time: the first accepted one.
	due, _, err := q.DueEvents("all", h.clock.Now(), 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("DueEvents = %v, %v; want the first event only", due, err)
	}
	ev := due[0].Event
	if ev.Type != EventAccepted || ev.Recipient != "a@x.test" || ev.QueueID != id || ev.MessageID != "<m1@example.org>" ||
		ev.User != "app@example.org" || !slices.Equal(ev.Tags, []string{"welcome"}) || ev.Metadata["user_id"] != "42" ||
		!strings.HasPrefix(ev.ID, "ev_") || !ev.Time.Equal(t0) {
		t.Errorf("first event = %+v", ev)
	}

	h.step()                   // 0h: a delivered, b deferred
	h.clock.Advance(time.Hour) // 1h
	h.step()                   // b deferred again
	h.clock.Advance(time.Hour) // 2h: past the delay warning
	h.step()                   // b fails for good; a delay notice was due first? no: it fails
	h.clock.Advance(time.Hour) // the DSN to app@example.org is attempted
	for h.step() > 0 {         // and its attempts record no events
		h.clock.Advance(time.Hour)
	}
	got := drain(t, q, "all", h.clock.Now())
	// The first attempts of a and b ran side by side (two domains):
	// either may have been recorded first.
	if len(got) > 3 && got[2] > got[3] {
		got[2], got[3] = got[3], got[2]
	}
	want := []string{
		"message.accepted a@x.test", "message.accepted b@y.test",
		"message.deferred b@y.test", "message.delivered a@x.test",
		"message.deferred b@y.test",
		"message.bounced b@y.test",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events for all:\n got %q\nwant %q", got, want)
	}
	if got := drain(t, q, "bounces", h.clock.Now()); !slices.Equal(got, []string{"message.bounced b@y.test"}) {
		t.Errorf("events for bounces: %q", got)
	}
	// Delivered to every subscriber: nothing is left.
	if n, m := bucketLen(t, q, bOutbox), bucketLen(t, q, bDeliveries); n != 0 || m != 0 {
		t.Errorf("outbox keeps %d events, %d deliveries after all were done", n, m)
	}
}

// TestDelayedEvent: the delay notice of DelayWarning is an event too.
func TestDelayedEvent(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 24 * time.Hour}
	h.opts = func(o *Options) {
		o.DelayWarning = 2 * time.Hour
		o.Subscribers = []Subscriber{{Name: "all", Wants: func(e *Event) bool { return e.Type == EventDelayed }}}
	}
	for a := 1; a <= 4; a++ {
		h.fake.on("b@x.test", a, Temporary, rp(451, "4.7.1", "greylisted"))
	}
	q := h.open()
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, Listener: "relay"}
	if _, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		h.step()
		h.clock.Advance(time.Hour)
	}
	due, _, err := q.DueEvents("all", h.clock.Now(), 10)
	if err != nil || len(due) != 1 || due[0].Event.Type != EventDelayed || due[0].Event.Reply.Code != 451 {
		t.Fatalf("DueEvents = %+v, %v; want one delayed event with the last reply", due, err)
	}
}

// TestEventsSurviveRestartAndRetry: deliveries are in the file: a restart
// keeps them, a failed attempt is counted and rescheduled, and a
// subscriber removed from the configuration loses its deliveries.
func TestEventsSurviveRestartAndRetry(t *testing.T) {
	h := newHarness(t)
	subs := []Subscriber{{Name: "hook1"}, {Name: "hook2"}}
	h.opts = func(o *Options) { o.Subscribers = subs }
	q := h.open()
	if _, err := q.Enqueue(context.Background(), &Envelope{From: "a@example.org", Rcpts: []string{"r@x.test"}, Listener: "relay"},
		strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	q.Close(context.Background())

	q = h.open()
	due, _, err := q.DueEvents("hook1", h.clock.Now(), 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("after reopen: %v, %v", due, err)
	}
	retryAt := h.clock.Now().Add(time.Minute)
	if err := q.EventRetry("hook1", due[0].Seq, retryAt, "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	due2, next, err := q.DueEvents("hook1", h.clock.Now(), 10)
	if err != nil || len(due2) != 0 || !next.Equal(retryAt) {
		t.Fatalf("after retry: due %v next %v err %v", due2, next, err)
	}
	pend, err := q.PendingEvents("")
	if err != nil || len(pend["hook1"]) != 1 || pend["hook1"][0].Attempts != 1 || pend["hook1"][0].LastError != "HTTP 500" ||
		len(pend["hook2"]) != 1 {
		t.Fatalf("PendingEvents = %+v, %v", pend, err)
	}
	if err := q.EventDone("hook1", due[0].Seq); err != nil {
		t.Fatal(err)
	}
	if bucketLen(t, q, bOutbox) != 1 {
		t.Error("the event went while hook2 still had to deliver it")
	}
	if err := q.EventDone("hook1", due[0].Seq); err != ErrNoDelivery {
		t.Errorf("second EventDone: %v, want ErrNoDelivery", err)
	}
	q.Close(context.Background())

	subs = []Subscriber{{Name: "hook1"}} // hook2 removed from the config
	q = h.open()
	if n, m := bucketLen(t, q, bOutbox), bucketLen(t, q, bDeliveries); n != 0 || m != 0 {
		t.Errorf("after hook2 was removed: %d events, %d deliveries", n, m)
	}
}

// TestNoSubscribersNoEvents: without subscribers nothing is written, and
// RecordEvents records events no state change carries.
func TestNoSubscribersNoEvents(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	h.enqueue("a@example.org", "x\r\n", "r@x.test")
	if n := bucketLen(t, q, bOutbox); n != 0 {
		t.Errorf("%d events without subscribers", n)
	}
	q.Close(context.Background())
	h.opts = func(o *Options) { o.Subscribers = []Subscriber{{Name: "s"}} }
	q = h.open()
	if err := q.RecordEvents(Event{Type: EventSuppressed, Recipient: "gone@x.test", User: "u"}); err != nil {
		t.Fatal(err)
	}
	due, _, err := q.DueEvents("s", h.clock.Now(), 10)
	if err != nil || len(due) != 1 || due[0].Event.Type != EventSuppressed || due[0].Event.ID == "" || !due[0].Event.Time.Equal(t0) {
		t.Fatalf("RecordEvents: %+v, %v", due, err)
	}
}

package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/postgres/pgtest"
)

// The outbox hands a subscriber one event per message at a time, in
// recording order; a failed delivery holds back that message's later
// events, not another message's; done deliveries go, and the backlog
// counts what waits.
func TestOutboxOrderPerMessage(t *testing.T) {
	dsn := pgtest.DB(t)
	subs := []queue.Subscriber{{Name: "all"}, {Name: "delivered", Wants: func(e *queue.Event) bool { return e.Type == queue.EventDelivered }}}
	q := open(t, dsn, Options{Subscribers: subs})
	env := func(rcpts ...string) *queue.Envelope {
		return &queue.Envelope{From: "s@src.test", Rcpts: rcpts, Listener: "relay", User: "u", MessageID: "<m@x>"}
	}
	a, err := q.Enqueue(context.Background(), env("a1@d.test", "a2@d.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := q.Enqueue(context.Background(), env("b1@d.test"), strings.NewReader("x\r\n"))
	// Not submitted (a DSN of the queue's own): no events.
	q.Enqueue(context.Background(), &queue.Envelope{Rcpts: []string{"s@src.test"}}, strings.NewReader("x\r\n"))
	<-q.EventsWritten()
	now := time.Now().Add(time.Second)
	due, _, err := q.DueEvents("all", now, 10)
	if err != nil || len(due) != 2 || due[0].Event.QueueID != a || due[0].Event.Recipient != "a1@d.test" ||
		due[1].Event.QueueID != b || due[0].Event.Type != queue.EventAccepted || due[0].Event.ID == "" {
		t.Fatalf("due = %+v, %v", due, err)
	}
	if d, _, _ := q.DueEvents("delivered", now, 10); len(d) != 0 {
		t.Fatalf("a subscriber got events it does not want: %+v", d)
	}
	// a's first event fails: a's second waits; b's is done.
	later := now.Add(time.Minute)
	if err := q.EventRetry("all", due[0].Seq, later, "500"); err != nil {
		t.Fatal(err)
	}
	if err := q.EventDone("all", due[1].Seq); err != nil {
		t.Fatal(err)
	}
	if err := q.EventDone("all", due[1].Seq); err != queue.ErrNoDelivery {
		t.Errorf("second EventDone: %v", err)
	}
	d2, next, _ := q.DueEvents("all", now, 10)
	if len(d2) != 0 || next.Sub(later).Abs() > time.Microsecond {
		t.Fatalf("after the failure: due %+v, next %v (want %v)", d2, next, later)
	}
	bl, err := q.EventBacklogs(5)
	if err != nil || len(bl) != 2 || bl[0].Pending != 2 || bl[0].Failing != 1 || len(bl[0].First) != 2 || bl[1].Pending != 0 {
		t.Fatalf("backlogs %+v, %v", bl, err)
	}
	d3, _, _ := q.DueEvents("all", later.Add(time.Second), 10)
	if len(d3) != 1 || d3[0].Attempts != 1 || d3[0].LastError != "500" || d3[0].Event.Recipient != "a1@d.test" {
		t.Fatalf("the retry: %+v", d3)
	}
	q.EventDone("all", d3[0].Seq)
	d4, _, _ := q.DueEvents("all", later.Add(time.Second), 10)
	if len(d4) != 1 || d4[0].Event.Recipient != "a2@d.test" {
		t.Fatalf("a's second event after its first: %+v", d4)
	}
	// RecordEvents: the send API's suppressed events.
	if err := q.RecordEvents(queue.Event{Type: queue.EventSuppressed, Recipient: "x@d.test", User: "u"}); err != nil {
		t.Fatal(err)
	}
	var events int
	q.pool.QueryRow(context.Background(), `SELECT count(*) FROM postern_events`).Scan(&events)
	if events != 2 { // a's second, and the suppression
		t.Errorf("%d events kept, want 2 (a done event must go)", events)
	}
}

// A submitted message gets a VERP return path per delivery and, once it
// is gone, a trace that late reports are matched with; feedback records
// its events and suppressions in one transaction.
func TestTracesAndFeedback(t *testing.T) {
	dsn := pgtest.DB(t)
	rec := &recorder{}
	var asked []string
	q := open(t, dsn, Options{Deliverer: rec, Subscribers: []queue.Subscriber{{Name: "all"}},
		Suppression: queue.SuppressionOptions{Enabled: true, ExpireAfter: time.Hour},
		Bounces: queue.BounceOptions{Keep: time.Hour, ReturnPath: func(id string, rcpts []int) string {
			asked = append(asked, id)
			return "b+token@bounces.test"
		}}})
	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: "app@src.test", Rcpts: []string{"r@d.test"},
		Listener: "relay", User: "u", MessageID: "<m@x>"}, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tr, err := q.Trace(id); err != nil || tr.User != "u" || tr.Expires.IsZero() == false {
		t.Fatalf("trace of a queued message: %+v, %v", tr, err)
	}
	q.Start()
	eventually(t, "the message gone", func() bool { return rows(t, q) == 0 })
	rec.mu.Lock()
	if len(rec.calls) != 1 || rec.calls[0].ReturnPath != "b+token@bounces.test" || rec.calls[0].MailFrom() != "b+token@bounces.test" {
		t.Errorf("delivery %+v", rec.calls)
	}
	rec.mu.Unlock()
	tr, err := q.Trace(id)
	if err != nil || tr.QueueID != id || tr.MessageID != "<m@x>" || len(tr.Rcpts) != 1 || tr.Expires.IsZero() {
		t.Fatalf("trace after delivery: %+v, %v", tr, err)
	}
	if _, err := q.Trace("00000000000000FF"); err == nil {
		t.Error("a trace of nothing")
	}
	err = q.RecordFeedback([]queue.Event{{Type: queue.EventComplained, QueueID: id, Recipient: "r@d.test", User: "u"}},
		[]queue.Suppression{{User: "u", Address: "r@d.test", Reason: queue.SuppressComplaint}})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := q.Suppressed("u", "r@d.test")
	if s == nil || s.Reason != queue.SuppressComplaint || s.Expires.IsZero() {
		t.Errorf("suppression %+v", s)
	}
	bl, _ := q.EventBacklogs(10)
	var types []queue.EventType
	for _, d := range bl[0].First {
		types = append(types, d.Event.Type)
	}
	if len(types) != 3 || types[0] != queue.EventAccepted || types[1] != queue.EventDelivered || types[2] != queue.EventComplained {
		t.Errorf("events %v", types)
	}
}

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
	if len(d2) != 0 || !next.Equal(later.UTC().Round(time.Microsecond)) {
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

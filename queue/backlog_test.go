package queue

import (
	"testing"
	"time"
)

// TestEventBacklogs: every subscriber has an entry, in configuration
// order, counting what waits and what has failed, with the first events
// read in full only up to the limit.
func TestEventBacklogs(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) {
		o.Subscribers = []Subscriber{
			{Name: "b-all"},
			{Name: "a-bounces", Wants: func(e *Event) bool { return e.Type == EventBounced }},
			{Name: "b"}, // a prefix of "b-all": its keys must not be counted there
		}
	}
	q := h.open()
	if err := q.RecordEvents(
		Event{Type: EventAccepted, QueueID: "0000000000000001", Recipient: "r1@x.test"},
		Event{Type: EventAccepted, QueueID: "0000000000000002", Recipient: "r2@x.test"},
		Event{Type: EventBounced, QueueID: "0000000000000001", Recipient: "r1@x.test"},
	); err != nil {
		t.Fatal(err)
	}
	due, _, err := q.DueEvents("b-all", h.clock.Now(), 1)
	if err != nil || len(due) != 1 {
		t.Fatalf("DueEvents = %v, %v", due, err)
	}
	if err := q.EventRetry("b-all", due[0].Seq, h.clock.Now().Add(time.Minute), "HTTP 500"); err != nil {
		t.Fatal(err)
	}

	bl, err := q.EventBacklogs(2)
	if err != nil {
		t.Fatal(err)
	}
	if len(bl) != 3 || bl[0].Subscriber != "b-all" || bl[1].Subscriber != "a-bounces" || bl[2].Subscriber != "b" {
		t.Fatalf("EventBacklogs = %+v, want b-all, a-bounces, b in that order", bl)
	}
	if b := bl[0]; b.Pending != 3 || b.Failing != 1 || len(b.First) != 2 ||
		b.First[0].Event.Recipient != "r1@x.test" || b.First[0].LastError != "HTTP 500" || b.First[0].Attempts != 1 ||
		b.First[1].Event.Recipient != "r2@x.test" {
		t.Errorf("b-all: %+v", b)
	}
	if b := bl[1]; b.Pending != 1 || b.Failing != 0 || len(b.First) != 1 || b.First[0].Event.Type != EventBounced {
		t.Errorf("a-bounces: %+v", b)
	}
	if b := bl[2]; b.Pending != 3 || b.Failing != 0 {
		t.Errorf("b: %+v", b)
	}

	// Counting only: no event is read.
	bl, err = q.EventBacklogs(0)
	if err != nil || bl[0].Pending != 3 || bl[0].First != nil {
		t.Errorf("EventBacklogs(0) = %+v, %v", bl, err)
	}
}

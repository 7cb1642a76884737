package queue

import (
	"testing"
	"time"
)

// TestActivity: a message waiting for its first attempt is due, one in
// flight is counted, and once the only message left is deferred the queue
// is idle until its retry time, and not at it.
func TestActivity(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 24 * time.Hour}
	slow := make(chan struct{})
	h.fake.blockDomain = map[string]chan struct{}{"a.test": slow}
	h.fake.on("bob@b.test", 1, Temporary, rp(451, "4.3.0", "later"))
	q := h.open()

	h.enqueue("app@example.test", "m1", "alice@a.test")
	if a := q.Activity(); a.InFlight != 0 || !a.NextDue.Equal(t0) || a.Idle(t0) {
		t.Errorf("before Start: %+v, idle %v; want due at t0, not idle", a, a.Idle(t0))
	}
	q.Start()
	<-h.fake.called
	// The lease set the recipient's next attempt at its backoff: the
	// attempt counts as in flight, not as due.
	if a := q.Activity(); a.InFlight != 1 || !a.NextDue.After(t0) || a.Idle(t0) {
		t.Errorf("in flight: %+v, idle %v; want 1 in flight, nothing else due", a, a.Idle(t0))
	}
	close(slow)
	h.wait(1)

	h.enqueue("app@example.test", "m2", "bob@b.test")
	h.wait(1)
	// The attempt's end is recorded before its slot is given back.
	deadline := time.Now().Add(10 * time.Second)
	for q.Activity().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	retry := t0.Add(time.Hour)
	if a := q.Activity(); a.InFlight != 0 || !a.NextDue.Equal(retry) || !a.Idle(t0) || a.Idle(retry) {
		t.Errorf("deferred: %+v; want nothing in flight, due at %s: idle now, not then", a, retry)
	}
}

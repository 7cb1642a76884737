package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// commitCount counts the shared transactions the commit loop runs from now
// on.
func commitCount(q *Queue) func() int {
	before := q.batches.Load()
	return func() int { return int(q.batches.Load() - before) }
}

// TestHandOffLeasesInTheEnqueueCommit: with a worker free, the record the
// enqueue commits is already leased, the first attempt starts without a
// lease commit of its own, and a message with recipients at two domains
// becomes two concurrent jobs, as lease would make them.
func TestHandOffLeasesInTheEnqueueCommit(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	h.fake.block = make(chan struct{})
	q.Start()
	commits := commitCount(q)

	id := h.enqueue("a@x.test", "Subject: s\r\n\r\nbody\r\n", "b@one.test", "c@two.test", "d@one.test")
	if n := commits(); n != 1 {
		t.Errorf("%d commits before the attempts ended, want 1 (the enqueue)", n)
	}
	m := h.get(id)
	for _, r := range m.Rcpts {
		if r.Attempts != 1 || !r.LastAttempt.Equal(t0) || !r.NextAttempt.Equal(t0.Add(time.Minute)) || r.State != StateQueued {
			t.Errorf("%s as committed by Enqueue: attempts %d, last %v, next %v, state %v; want 1, %v, %v, queued",
				r.Address, r.Attempts, r.LastAttempt, r.NextAttempt, r.State, t0, t0.Add(time.Minute))
		}
	}
	byDomain := map[string][]string{}
	for range 2 {
		d := <-h.fake.called
		if d.Attempt != 1 || d.ID != id {
			t.Errorf("delivery %s attempt %d, want %s attempt 1", d.ID, d.Attempt, id)
		}
		byDomain[d.Domain] = d.Rcpts
	}
	if len(byDomain["one.test"]) != 2 || len(byDomain["two.test"]) != 1 {
		t.Errorf("jobs by domain %v, want one.test: 2 recipients, two.test: 1", byDomain)
	}
	close(h.fake.block)
	h.wait(2)
	// The two jobs' results may share a commit.
	if n := commits(); n != 2 && n != 3 {
		t.Errorf("%d commits in all, want 2 or 3 (the enqueue, the results of two jobs)", n)
	}
	if _, err := q.Get(id); err == nil {
		t.Errorf("%s still queued after every recipient was delivered", id)
	}
	if calls := h.fake.Calls(); len(calls) != 2 || string(calls[0].body) != "Subject: s\r\n\r\nbody\r\n" {
		t.Errorf("calls %d, body %q", len(calls), calls[0].body)
	}
}

// TestHandOffOnlyToFreeWorkers: when every worker is busy, a new message
// is committed unleased and due at once, and the dispatcher leases it once
// a worker is free; before Start, nothing is handed off at all.
func TestHandOffOnlyToFreeWorkers(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) { o.Workers = 1 }
	q := h.open()

	early := h.enqueue("a@x.test", "m0\r\n", "b@y.test")
	if r := h.get(early).Rcpts[0]; r.Attempts != 0 || !r.NextAttempt.Equal(t0) {
		t.Errorf("enqueued before Start: attempts %d, next %v; want 0, %v", r.Attempts, r.NextAttempt, t0)
	}

	h.fake.block = make(chan struct{})
	q.Start()
	<-h.fake.called // the dispatcher leased early: the one worker is busy
	id := h.enqueue("a@x.test", "m1\r\n", "c@y.test")
	if r := h.get(id).Rcpts[0]; r.Attempts != 0 || !r.NextAttempt.Equal(t0) {
		t.Errorf("enqueued with no worker free: attempts %d, next %v; want 0, %v", r.Attempts, r.NextAttempt, t0)
	}
	close(h.fake.block)
	h.wait(2)
	var got []string
	for _, c := range h.fake.Calls() {
		got = append(got, c.ID)
	}
	if len(got) != 2 || got[0] != early || got[1] != id {
		t.Errorf("deliveries %v, want %s then %s", got, early, id)
	}
}

// TestHandOffCutOffByClose: a handed-off attempt that Close cuts off keeps
// its lease, exactly as a leased one does: after a restart the message is
// not due before its backoff, then it is tried again as attempt 2.
func TestHandOffCutOffByClose(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	h.fake.block = make(chan struct{})
	q.Start()
	id := h.enqueue("a@x.test", "m\r\n", "b@y.test")
	<-h.fake.called
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := q.Close(ctx); err == nil {
		t.Fatal("Close with an attempt blocked and ctx done: nil error, want one")
	}

	h.fake = newFake()
	q = h.open()
	if r := h.get(id).Rcpts[0]; r.Attempts != 1 || !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Errorf("after the restart: attempts %d, next %v; want 1, %v", r.Attempts, r.NextAttempt, t0.Add(time.Minute))
	}
	q.Start()
	h.advance(time.Minute)
	d := <-h.fake.called
	if d.ID != id || d.Attempt != 2 {
		t.Errorf("retried %s as attempt %d, want %s attempt 2", d.ID, d.Attempt, id)
	}
	h.wait(1)
}

// TestHandOffRollback: when the transaction holding a handed-off enqueue
// is rolled back because another writer's function failed, and the enqueue
// is run again on its own (see batch), its in-flight mark is not counted
// twice: once its attempt is recorded, no mark and no worker slot is left.
// (A mark left behind would keep the message from ever being leased.)
func TestHandOffRollback(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	q.Start()
	// Hold the commit loop, so that the enqueue and the failing function
	// form the next batch together, the enqueue first (writers are
	// batched in the order they are submitted).
	release := holdCommits(t, q)
	enq := make(chan string, 1)
	go func() { enq <- h.enqueue("a@x.test", "m\r\n", "b@y.test") }()
	waitPending(t, q, 1)
	errBoom := errors.New("boom")
	fail := make(chan error, 1)
	go func() { fail <- q.batch(func(*bolt.Tx) error { return errBoom }) }()
	waitPending(t, q, 2)
	release()
	if err := <-fail; !errors.Is(err, errBoom) {
		t.Fatalf("failing batch: %v", err)
	}
	id := <-enq
	h.wait(1)
	// The worker lets go of its slot and mark just after its results are
	// recorded.
	eventually(t, "no worker slot or in-flight mark left", func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.busy == 0 && len(q.inflight) == 0
	})
	if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(%s) after delivery: %v, want ErrNotFound", id, err)
	}
}

// TestStopDelivery: the first step of a shutdown. The attempt in flight
// goes on and its result is recorded; a message enqueued afterwards is
// neither handed off nor leased, even when due, but kept for the next
// start; Close then waits for nothing more.
func TestStopDelivery(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	h.fake.block = make(chan struct{})
	q.Start()
	inFlight := h.enqueue("a@x.test", "m1\r\n", "b@y.test")
	<-h.fake.called
	q.StopDelivery()
	later := h.enqueue("a@x.test", "m2\r\n", "c@y.test")
	q.notify()
	h.advance(time.Hour) // due, if anything were leasing
	close(h.fake.block)
	h.wait(1)
	if _, err := q.Get(inFlight); !errors.Is(err, ErrNotFound) {
		t.Errorf("the attempt in flight was not recorded: Get(%s) = %v", inFlight, err)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls := h.fake.Calls(); len(calls) != 1 {
		t.Errorf("%d attempts, want 1: nothing may start after StopDelivery", len(calls))
	}
	h.fake = newFake()
	q = h.open()
	if r := h.get(later).Rcpts[0]; r.Attempts != 0 || r.State != StateQueued {
		t.Errorf("message enqueued after StopDelivery: attempts %d, state %s; want 0, queued", r.Attempts, r.State)
	}
}

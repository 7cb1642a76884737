package queue

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestModifyStopsWithoutFailingTheBatch: a change that stops before writing
// (the message is gone, or change says there is nothing to do) returns its
// reason to its caller but does not roll back the transaction it shares:
// the other writers in the batch are committed once, not run again one by
// one.
func TestModifyStopsWithoutFailingTheBatch(t *testing.T) {
	for _, tt := range []struct {
		name    string
		id      func(h *harness) uint64
		change  func(*record) error
		wantErr error
	}{
		{"message gone", func(*harness) uint64 { return 999 }, func(*record) error { return nil }, ErrNotFound},
		{"no change", func(h *harness) uint64 {
			id, _ := parseID(h.enqueue("a@x.test", "m\r\n", "b@y.test"))
			return id
		}, func(*record) error { return errNoChange }, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			q := h.open()
			id := tt.id(h)

			// Hold the commit loop so that both writers below form
			// the next batch, in the order they are submitted.
			release := holdCommits(t, q)
			var mu sync.Mutex
			runs := 0
			other := make(chan error, 1)
			go func() {
				other <- q.batch(func(*bolt.Tx) error { mu.Lock(); runs++; mu.Unlock(); return nil })
			}()
			// The other writer first: its function runs before
			// modify's in the batch, and would be run again if
			// modify's failed the transaction.
			waitPending(t, q, 1)
			mod := make(chan error, 1)
			go func() {
				_, err := q.modify(id, true, t0, tt.change)
				mod <- err
			}()
			waitPending(t, q, 2)
			release()
			if err := <-mod; !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("modify: %v, want %v", err, tt.wantErr)
			}
			if err := <-other; err != nil {
				t.Errorf("the other writer: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if runs != 1 {
				t.Errorf("the other writer's function ran %d times, want 1", runs)
			}
		})
	}
}

// TestLazyWriterWaitsForAWaitedOne: the results of an attempt (a lazy
// writer) are held until a writer someone waits on arrives, and the two
// share one commit; alone, they are committed after lazyWait.
func TestLazyWriterWaitsForAWaitedOne(t *testing.T) {
	t.Run("shared", func(t *testing.T) {
		h := newHarness(t)
		h.opts = func(o *Options) { o.lazyWait = time.Hour }
		q := h.open()
		holding := make(chan struct{}, 1)
		q.commit.onHold = func() { holding <- struct{}{} }
		commits := commitCount(q)
		lazy := make(chan error, 1)
		go func() { lazy <- q.batchLazy(func(*bolt.Tx) error { return nil }) }()
		// The loop has taken the lazy writer alone and holds it: were it
		// committed alone, onHold would not be called (and with an hour
		// to wait, nothing else ends the hold).
		select {
		case <-holding:
		case err := <-lazy:
			t.Fatalf("the lazy writer was committed alone (%v)", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the commit loop never held the lazy writer")
		}
		h.enqueue("a@x.test", "m\r\n", "b@y.test")
		if err := <-lazy; err != nil {
			t.Fatal(err)
		}
		if n := commits(); n != 1 {
			t.Errorf("%d commits, want 1 shared by both writers", n)
		}
	})
	t.Run("alone", func(t *testing.T) {
		h := newHarness(t)
		h.opts = func(o *Options) { o.lazyWait = time.Millisecond }
		q := h.open()
		commits := commitCount(q)
		if err := q.batchLazy(func(*bolt.Tx) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if n := commits(); n != 1 {
			t.Errorf("%d commits, want 1", n)
		}
	})
}

// TestGroupCommit: enqueues that arrive while a commit runs share the next
// one (one fsync for all of them), and each still returns only after it.
func TestGroupCommit(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	release := holdCommits(t, q)
	commits := commitCount(q)
	const writers = 10
	done := make(chan string, writers)
	for range writers {
		go func() { done <- h.enqueue("a@x.test", "m\r\n", "b@y.test") }()
	}
	waitPending(t, q, writers)
	if len(done) != 0 {
		t.Fatalf("Enqueue returned %s while the commit before it was still running", <-done)
	}
	release()
	for range writers {
		<-done
	}
	// Every writer waited for the held commit: they all share the next.
	if n := commits(); n != 1 {
		t.Errorf("%d writers took %d commits, want 1", writers, n)
	}
}

// holdCommits blocks the commit loop inside a batch of its own until the
// returned function is called, so that the writers submitted meanwhile
// form the next batch.
func holdCommits(t *testing.T, q *Queue) (release func()) {
	t.Helper()
	hold, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	go q.batch(func(*bolt.Tx) error { once.Do(func() { close(held) }); <-hold; return nil })
	<-held
	return func() { close(hold) }
}

// waitPending waits until n writers wait for the commit loop, in the
// order they were submitted.
func waitPending(t *testing.T, q *Queue, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d writers waiting for a commit", n), func() bool { return q.pendingWriters() == n })
}

// TestNothingWrittenNothingSynced: a batch in which no function wrote (the
// results of a message deleted meanwhile, say) is rolled back rather than
// committed, which would write and sync a meta page for nothing; its
// caller still gets its own answer.
func TestNothingWrittenNothingSynced(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	pageWrites := func() int64 { st := q.db.Stats(); return st.TxStats.GetWrite() }
	before := pageWrites()
	if _, err := q.modify(999, true, t0, func(*record) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("modify of a missing message: %v, want ErrNotFound", err)
	}
	if err := q.batch(func(*bolt.Tx) error { return errUnchanged }); err != nil {
		t.Fatalf("batch of a function that wrote nothing: %v, want nil", err)
	}
	if n := pageWrites() - before; n != 0 {
		t.Errorf("%d pages written for batches that changed nothing", n)
	}
}

package queue

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// maxCommitBatch bounds how many writers share one transaction, so that a
// burst cannot make one commit (and the latency of everyone in it)
// arbitrarily large.
const maxCommitBatch = 128

// lazyWait is how long the commit loop holds a batch made only of lazy
// writers (see batchLazy) for a writer that is waiting on its commit.
const lazyWait = 2 * time.Millisecond

// commitReq is one writer waiting for its function to be committed.
type commitReq struct {
	fn   func(*bolt.Tx) error
	done chan error
	lazy bool
}

// batch commits fn in a write transaction shared with whatever other
// writers are waiting (group commit): concurrent sessions pay for one
// fsync together, and each caller returns only once the transaction
// holding its change is on disk.
//
// Unlike bbolt's DB.Batch, it never waits on a timer. A lone writer is
// committed at once (DB.Batch would hold it for MaxBatchDelay first, which
// caps a single SMTP session at a few hundred messages a second); writers
// that arrive while a commit is running form the next batch, so batches grow
// exactly as large as the load makes them. Only a batch made of lazy
// writers alone waits, for a writer someone waits on (batchLazy).
//
// As with DB.Batch, fn may run more than once: when one function of a batch
// fails, the transaction is rolled back, that caller gets its error and
// every other function is run again in a transaction of its own. So fn must
// have no effect outside tx (or reset what it sets on entry).
//
// The caller holds q.dbMu shared, so q.db cannot be swapped underneath,
// and the loop cannot be stopped before this writer is served.
func (q *Queue) batch(fn func(*bolt.Tx) error) error {
	return q.submit(&commitReq{fn: fn, done: make(chan error, 1)})
}

// batchLazy is batch for a write nobody is waiting on: the results of a
// delivery attempt. Its commit may wait up to lazyWait for a writer that
// someone is waiting on, an SMTP session's enqueue above all, and then
// share its fsync. With one session sending, each message's results used
// to take a commit of their own, between that session's enqueues; now
// they ride along with the next one.
//
// Waiting costs no safety: until the results are on disk the lease
// stands, exactly as during the attempt. A crash in between makes a
// delivered recipient be delivered again (as a crash between the remote's
// reply and any commit would), and any other retried after its backoff.
func (q *Queue) batchLazy(fn func(*bolt.Tx) error) error {
	return q.submit(&commitReq{fn: fn, done: make(chan error, 1), lazy: true})
}

// committer is the state the commit loop shares with writers: the writers
// waiting, in the order they came, and a wake-up. A list under a mutex
// rather than a channel, so that the order of the writers in a batch is
// the order they were submitted in, which tests can see (pendingWriters).
type committer struct {
	mu      sync.Mutex
	pending []*commitReq
	closed  bool          // no writer will come: stop once pending is done
	wake    chan struct{} // capacity 1: "pending changed"
	done    chan struct{} // closed when the loop has stopped
	// onHold, a test hook, is called when the loop starts holding a batch
	// of lazy writers for a waited-on one.
	onHold func()
}

func newCommitter() *committer {
	return &committer{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (c *committer) signal() {
	select {
	case c.wake <- struct{}{}:
	default: // a wake-up is pending already and covers this one
	}
}

// submit queues req for the next batch and waits for its commit.
func (q *Queue) submit(req *commitReq) error {
	c := q.commit
	c.mu.Lock()
	c.pending = append(c.pending, req)
	c.mu.Unlock()
	c.signal()
	return <-req.done
}

// stopCommits ends the loop once the writers queued are served, and waits
// for it. No writer may submit after (Close holds dbMu exclusively).
func (q *Queue) stopCommits() {
	c := q.commit
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.signal()
	<-c.done
}

// pendingWriters counts the writers waiting for a batch, for tests.
func (q *Queue) pendingWriters() int {
	q.commit.mu.Lock()
	defer q.commit.mu.Unlock()
	return len(q.commit.pending)
}

// take moves up to maxCommitBatch-len(batch) waiting writers, in order,
// into batch. It reports whether every writer in batch is lazy, and
// whether the loop is to stop once pending is empty.
func (c *committer) take(batch []*commitReq) (_ []*commitReq, lazy, closed bool) {
	c.mu.Lock()
	n := min(len(c.pending), maxCommitBatch-len(batch))
	batch = append(batch, c.pending[:n]...)
	clear(c.pending[:n])
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = c.pending[:0:0] // let the backing array go
	}
	closed = c.closed
	c.mu.Unlock()
	lazy = true
	for _, r := range batch {
		lazy = lazy && r.lazy
	}
	return batch, lazy, closed
}

// commitLoop runs the shared transactions, one at a time, until
// stopCommits.
func (q *Queue) commitLoop() {
	c := q.commit
	defer close(c.done)
	batch := make([]*commitReq, 0, maxCommitBatch)
	wait := time.NewTimer(q.lazyWait)
	wait.Stop()
	for range c.wake {
		for {
			var lazy, closed bool
			batch, lazy, closed = c.take(batch[:0])
			if len(batch) == 0 {
				if closed {
					return
				}
				break // wait for the next wake-up
			}
			if lazy && !closed && len(batch) < maxCommitBatch {
				// Nobody waits on this batch yet: give a writer who
				// does a moment to join.
				if c.onHold != nil {
					c.onHold()
				}
				wait.Reset(q.lazyWait)
			hold:
				for len(batch) < maxCommitBatch {
					select {
					case <-c.wake:
						batch, lazy, closed = c.take(batch)
						if !lazy || closed {
							break hold
						}
					case <-wait.C:
						break hold
					}
				}
				wait.Stop()
			}
			q.runBatch(batch)
		}
	}
}

func (q *Queue) runBatch(batch []*commitReq) {
	q.batches.Add(1)
	failed := -1
	err := q.update(func(tx *bolt.Tx) error {
		wrote := false
		for i, r := range batch {
			switch err := r.fn(tx); {
			case errors.Is(err, errUnchanged):
			case err != nil:
				failed = i
				return err
			default:
				wrote = true
			}
		}
		if !wrote {
			return errUnchanged // roll back: no fsync for nothing
		}
		return nil
	})
	switch {
	case err == nil || errors.Is(err, errUnchanged):
		for _, r := range batch {
			r.done <- nil
		}
	case failed < 0 || len(batch) == 1:
		// The commit itself failed (a full disk): nobody's change is on
		// disk, and trying again one by one would only fail again.
		for _, r := range batch {
			r.done <- err
		}
	default:
		batch[failed].done <- err
		for i, r := range batch {
			if i != failed {
				err := q.update(r.fn)
				if errors.Is(err, errUnchanged) {
					err = nil
				}
				r.done <- err
			}
		}
	}
}

// errUnchanged, from a batch function, says it wrote nothing and has no
// error for the others: they go on, and a batch in which every function
// says so is rolled back instead of committed (bbolt syncs even an empty
// commit). The caller of batch gets nil.
var errUnchanged = errors.New("queue: nothing written")

package queue

import (
	"errors"
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
// The caller holds q.dbMu shared, so q.db cannot be swapped underneath.
func (q *Queue) batch(fn func(*bolt.Tx) error) error {
	req := &commitReq{fn: fn, done: make(chan error, 1)}
	q.commits <- req
	return <-req.done
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
	req := &commitReq{fn: fn, done: make(chan error, 1), lazy: true}
	q.commits <- req
	return <-req.done
}

// commitLoop runs the shared transactions, one at a time, until commits
// is closed.
func (q *Queue) commitLoop() {
	defer close(q.commitsDone)
	batch := make([]*commitReq, 0, maxCommitBatch)
	wait := time.NewTimer(q.lazyWait)
	wait.Stop()
	for req := range q.commits {
		batch = append(batch[:0], req)
		lazy := req.lazy
		open := q.drain(&batch, &lazy)
		if lazy && open && len(batch) < maxCommitBatch {
			// Nobody waits on this batch yet: give a writer who does
			// a moment to join.
			wait.Reset(q.lazyWait)
		hold:
			for len(batch) < maxCommitBatch {
				select {
				case r, ok := <-q.commits:
					if !ok {
						break hold
					}
					batch = append(batch, r)
					if !r.lazy {
						q.drain(&batch, &lazy)
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

// drain adds the writers already waiting to batch, without blocking, and
// clears lazy if one of them is not lazy. It reports false once commits is
// closed.
func (q *Queue) drain(batch *[]*commitReq, lazy *bool) bool {
	for len(*batch) < maxCommitBatch {
		select {
		case r, ok := <-q.commits:
			if !ok {
				return false
			}
			*batch = append(*batch, r)
			*lazy = *lazy && r.lazy
		default:
			return true
		}
	}
	return true
}

func (q *Queue) runBatch(batch []*commitReq) {
	q.batches.Add(1)
	failed := -1
	err := q.db.Update(func(tx *bolt.Tx) error {
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
				err := q.db.Update(r.fn)
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

package queue

import bolt "go.etcd.io/bbolt"

// sharedUpdate is update through the group commit (batch): the results
// of a subscriber's concurrent requests (EventDone, EventRetry) share one
// transaction and one fsync, with each other and with whatever else is
// being committed, instead of each paying for a commit of its own
// (BenchmarkDelivery in relay/webhooks: the fsyncs were the limit). Each
// caller still returns only once its change is on disk, so the next
// event of a message is never handed out before the one before it is
// recorded as done. fn may run more than once (see batch).
func (q *Queue) sharedUpdate(fn func(*bolt.Tx) error) error {
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return ErrClosed
	}
	err := q.batch(fn)
	q.dbMu.RUnlock()
	if err != nil {
		q.checkDB(err) // needs dbMu exclusively
	}
	return err
}

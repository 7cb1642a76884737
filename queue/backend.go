package queue

import (
	"context"
	"io"
	"time"
)

// Backend is the queue as the rest of postern uses it, whatever stores
// it: *Queue keeps everything in one bbolt file on the node (the default,
// nothing to set up), and queue/postgres keeps it in a PostgreSQL
// database that several nodes share, so that a dead node's messages are
// delivered by the others. The rooms that use a queue each define the
// few methods they need (smtpd, submit, httpapi, webhooks...); this is
// their union, what cmd/postern wires.
//
// The durability promise is the same for every backend: Enqueue returns
// an id only once the message is on disk (bbolt: fsync; PostgreSQL:
// COMMIT with synchronous_commit on), and every result, DSN and event is
// committed in the transaction that records what caused it.
type Backend interface {
	Enqueue(ctx context.Context, env *Envelope, body io.Reader) (id string, err error)
	EnqueuePrefixed(ctx context.Context, env *Envelope, body io.Reader, prefix func() ([]byte, error)) (id string, err error)

	// Administration (see the methods of *Queue for each contract).
	Get(id string) (*Message, error)
	List(f Filter) ([]*Message, error)
	Hold(id string) error
	Release(id string) error
	Retry(id string) error
	RetryAll() (int, error)
	Delete(id string) error
	Bounce(id string) error
	Depth() map[State]int

	// The suppression list and the send API's idempotency keys.
	Suppressed(user, addr string) (*Suppression, error)
	Suppress(s Suppression) error
	Unsuppress(user, addr string) error
	Suppressions(user string, all bool) ([]Suppression, error)
	Idempotent(user, key string) (*Accepted, error)

	// The event outbox (webhooks) and the traces of listen.mx. A backend
	// without them reports no subscriber's events, as *Queue does when
	// no subscriber is configured; configs refuses the settings that
	// would need them.
	RecordEvents(evs ...Event) error
	DueEvents(sub string, now time.Time, limit int) ([]EventDelivery, time.Time, error)
	EventDone(sub string, seq uint64) error
	EventRetry(sub string, seq uint64, next time.Time, errText string) error
	EventsWritten() <-chan struct{}
	EventBacklogs(limit int) ([]EventBacklog, error)
	Trace(id string) (*Trace, error)
	RecordFeedback(evs []Event, sups []Suppression) error

	// The state other rooms keep beside the queue (StateStore).
	StateBackend

	// Drain begins a drain (postern drain): a queue other nodes share
	// stops taking new work here and reports true; the node's own queue
	// goes on delivering what is due, the drain waiting for it, and
	// reports false.
	Drain() bool
	// Activity is what delivery on this node is doing now (postern
	// drain). A shared backend reports its attempts in flight only: the
	// fleet delivers what is due.
	Activity() Activity

	// Start begins delivery; StopDelivery starts no new attempt; Close
	// waits (up to ctx) for attempts in flight and closes the storage.
	Start()
	StopDelivery()
	Close(ctx context.Context) error
}

var _ Backend = (*Queue)(nil)

// Drain does nothing: what this queue holds, only this node delivers.
func (q *Queue) Drain() bool { return false }

// WithDefaults returns r with its zero fields set to their defaults.
func (r Retry) WithDefaults() Retry { return r.withDefaults() }

// Backoff is the wait after attempt number attempt (1 for the first),
// jittered by u in [0,1): the schedule every backend follows.
func (r Retry) Backoff(attempt int, u float64) time.Duration {
	return r.withDefaults().backoff(attempt, u)
}

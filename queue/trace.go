package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/reply"
)

// Bounce traces. With Options.Bounces, each delivery of a submitted
// message with a sender goes out with a return path of its own (VERP,
// made by BounceOptions.ReturnPath), and the queue keeps what the events
// of a late bounce or complaint need after the message itself is gone: a
// delivered message is removed at once, but a remote that accepted it may
// still bounce it hours later, and a recipient may report it as spam days
// later. relay/bounces reads a trace with Trace and records what a report
// says with RecordFeedback.

// defaultTraceKeep is how long a trace outlives its message by default.
const defaultTraceKeep = 7 * 24 * time.Hour

// BounceOptions turn on VERP return paths and traces (Options.Bounces).
type BounceOptions struct {
	// ReturnPath, when set, gives the reverse-path that a delivery of
	// message id to its recipients number rcpts (indexes into the
	// message's recipients, as Trace lists them) is sent with, in place
	// of the envelope sender; "" keeps the sender. It is asked only for
	// messages that have a trace: submitted (Envelope.Listener set), with
	// a sender other than the null reverse-path. It must be quick and
	// must not call back into the queue.
	ReturnPath func(id string, rcpts []int) string
	// Keep is how long the trace of a message is kept after its last
	// recipient became final (default 7 days).
	Keep time.Duration
}

// Trace is what the queue keeps of a submitted message for the reports
// that arrive about it after its delivery: who sent it, what events
// carry, and its recipients in their order.
type Trace struct {
	QueueID   string            `json:"queue_id"`
	User      string            `json:"user,omitempty"`
	Listener  string            `json:"listener,omitempty"`
	MessageID string            `json:"message_id,omitempty"`
	Tags      []string          `json:"tags,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Rcpts     []string          `json:"rcpts"`
	Created   time.Time         `json:"created"`
	// Expires is when the trace is forgotten; zero while the message is
	// still in the queue.
	Expires time.Time `json:"expires,omitzero"`
}

// traced reports whether rec gets VERP return paths and a trace: a
// submitted message with a sender. The queue's own DSNs (no listener, the
// null sender) and null-sender mail never do: nothing answers them.
func (r *record) traced() bool { return r.Env.Listener != "" && r.Env.From != "" }

// traceOf is rec's trace.
func traceOf(id uint64, rec *record) *Trace {
	t := &Trace{QueueID: formatID(id), User: rec.Env.User, Listener: rec.Env.Listener, MessageID: rec.Env.MessageID,
		Tags: rec.Env.Tags, Metadata: rec.Env.Metadata, Created: rec.Created, Rcpts: make([]string, len(rec.Rcpts))}
	for i, r := range rec.Rcpts {
		t.Rcpts[i] = r.Address
	}
	return t
}

// keepTrace writes, in the transaction in which message id became final,
// its trace and the trace's expiry entry.
func (q *Queue) keepTrace(tx *bolt.Tx, id uint64, rec *record, sv saved, now time.Time) error {
	if q.bounces.ReturnPath == nil || !sv.final || !rec.traced() {
		return nil
	}
	t := traceOf(id, rec)
	t.Expires = now.Add(q.bounces.Keep)
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bTraces).Put(idKey(id), data); err != nil {
		return err
	}
	return tx.Bucket(bTraceExp).Put(schedKey(t.Expires.UnixNano(), id), nil)
}

// Trace returns what the queue knows of message id for a late report:
// from the message itself while it is in the queue (or kept as failed),
// else from its trace. ErrNotFound when it has neither, or is not a
// message with a trace.
func (q *Queue) Trace(id string) (*Trace, error) {
	n, err := lookup(id)
	if err != nil {
		return nil, err
	}
	var t *Trace
	err = q.view(func(tx *bolt.Tx) error {
		if data := tx.Bucket(bMessages).Get(idKey(n)); data != nil {
			rec, err := decodeRecord(data)
			if err != nil {
				return fmt.Errorf("queue: message %s: %w", id, err)
			}
			if rec.traced() {
				t = traceOf(n, rec)
			}
			return nil
		}
		if data := tx.Bucket(bTraces).Get(idKey(n)); data != nil {
			t = new(Trace)
			if err := json.Unmarshal(data, t); err != nil {
				return fmt.Errorf("queue: trace %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if t == nil || !t.Expires.IsZero() && !q.clock().Before(t.Expires) {
		return nil, fmt.Errorf("%w: %s (no trace)", ErrNotFound, id)
	}
	return t, nil
}

// purgeTraces forgets the traces whose time has passed.
func purgeTraces(tx *bolt.Tx, now time.Time) error {
	exp, traces := tx.Bucket(bTraceExp), tx.Bucket(bTraces)
	for _, k := range expiredKeys(exp, now) {
		if err := exp.Delete(k); err != nil {
			return err
		}
		if err := traces.Delete(idKey(schedID(k))); err != nil {
			return err
		}
	}
	return nil
}

// expiredKeys returns (copies of) the first keys of an expiry index (time
// ‖ anything) whose time is at or before now, at most purgeChunk of them,
// so the caller can delete them after the cursor is done.
func expiredKeys(exp *bolt.Bucket, now time.Time) [][]byte {
	var done [][]byte
	c := exp.Cursor()
	for k, _ := c.First(); k != nil && schedTime(k) <= now.UnixNano() && len(done) < purgeChunk; k, _ = c.Next() {
		done = append(done, bytes.Clone(k))
	}
	return done
}

// tracesDue reports whether purgeTraces has work at now.
func tracesDue(tx *bolt.Tx, now time.Time) bool {
	k, _ := tx.Bucket(bTraceExp).Cursor().First()
	return k != nil && int64(binary.BigEndian.Uint64(k[:8])) <= now.UnixNano()
}

// RecordFeedback records, in one transaction, what a report about
// earlier mail says: its events (for the subscribers that want them) and
// the suppressions it calls for. Suppressions are left out when
// Options.Suppression is off; an automatic one (a bounce, a complaint)
// without an expiry gets Options.Suppression's. Once it returns nil, both
// are on disk: the caller may acknowledge the report.
func (q *Queue) RecordFeedback(evs []Event, sups []Suppression) error {
	sups, err := PrepareFeedback(evs, sups, q.clock(), q.suppress)
	if err != nil {
		return err
	}
	if len(sups) == 0 && len(q.subs) == 0 {
		return nil // nothing would be written: spare the commit
	}
	var n int
	err = q.updateOpen(func(tx *bolt.Tx) error {
		var err error
		if n, err = q.emit(tx, evs); err != nil {
			return err
		}
		for _, s := range sups {
			if err := putSuppression(tx, s); err != nil {
				return err
			}
		}
		return nil
	})
	q.eventsRecorded(n)
	return err
}

// PrepareFeedback completes what RecordFeedback records, the same for
// every backend: events without a time get now; suppressions are dropped
// when the list is off, and get their creation time, a reason (manual)
// and, when automatic, opts' expiry.
func PrepareFeedback(evs []Event, sups []Suppression, now time.Time, opts SuppressionOptions) ([]Suppression, error) {
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	if !opts.Enabled {
		return nil, nil
	}
	for i := range sups {
		s := &sups[i]
		if s.Address == "" {
			return nil, fmt.Errorf("queue: suppression without an address")
		}
		if s.Created.IsZero() {
			s.Created = now
		}
		if s.Reason == "" {
			s.Reason = SuppressManual
		}
		if s.Expires.IsZero() && s.Reason != SuppressManual && opts.ExpireAfter > 0 {
			s.Expires = s.Created.Add(opts.ExpireAfter)
		}
	}
	return sups, nil
}

// AddressGone reports whether a permanent failure with reply r says the
// address itself cannot receive mail: the rule by which a failure, here
// or in a late bounce, suppresses the address (see Options.Suppression).
func AddressGone(r reply.Reply) bool { return addressGone(r) }

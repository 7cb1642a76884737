package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue"
)

// Traces, as bbolt's queue keeps them (queue/trace.go): with
// Options.Bounces, each delivery of a submitted message with a sender
// goes out with a VERP return path, and when the message becomes final
// its trace (who sent it, what events carry, its recipients) is kept for
// Bounces.Keep, so that listen.mx can match a late bounce or complaint
// with it on any node.

// traced reports whether a message of env gets VERP return paths and a
// trace: submitted, with a sender.
func traced(env *queue.Envelope) bool { return env.Listener != "" && env.From != "" }

func traceOf(m *row) *queue.Trace {
	t := &queue.Trace{QueueID: formatID(m.id), User: m.env.User, Listener: m.env.Listener, MessageID: m.env.MessageID,
		Tags: m.env.Tags, Metadata: m.env.Metadata, Created: m.created, Rcpts: make([]string, len(m.rcpts))}
	for i, r := range m.rcpts {
		t.Rcpts[i] = r.Address
	}
	return t
}

// keepTrace writes, in the transaction in which m became final, its
// trace.
func (q *Queue) keepTrace(ctx context.Context, tx pgx.Tx, m *row, now time.Time) error {
	if q.opts.Bounces.ReturnPath == nil || !traced(&m.env) {
		return nil
	}
	t := traceOf(m)
	t.Expires = now.Add(q.opts.Bounces.Keep)
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO postern_traces (id, data, expires) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires = excluded.expires`, m.id, data, t.Expires)
	return err
}

// Trace returns what the queue knows of message id for a late report:
// from the message while it is queued (or kept as failed), else from its
// trace; queue.ErrNotFound when it has neither.
func (q *Queue) Trace(id string) (*queue.Trace, error) {
	n, err := parseID(id)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	var t *queue.Trace
	m, err := scanRow(q.pool.QueryRow(ctx, `SELECT `+rowCols+` FROM postern_messages WHERE id = $1`, n))
	switch {
	case err == nil:
		if traced(&m.env) {
			t = traceOf(m)
		}
	case errors.Is(err, pgx.ErrNoRows):
		var data []byte
		err := q.pool.QueryRow(ctx, `SELECT data FROM postern_traces WHERE id = $1`, n).Scan(&data)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, wrap(err)
		}
		if data != nil {
			t = new(queue.Trace)
			if err := json.Unmarshal(data, t); err != nil {
				return nil, fmt.Errorf("queue: trace %s: %w", id, err)
			}
		}
	default:
		return nil, wrap(err)
	}
	if t == nil || !t.Expires.IsZero() && !q.clock().Before(t.Expires) {
		return nil, fmt.Errorf("%w: %s (no trace)", queue.ErrNotFound, id)
	}
	return t, nil
}

// RecordFeedback records, in one transaction, what a report about
// earlier mail says: its events and the suppressions it calls for (see
// queue.Queue.RecordFeedback). Once it returns nil, both are committed.
func (q *Queue) RecordFeedback(evs []queue.Event, sups []queue.Suppression) error {
	sups, err := queue.PrepareFeedback(evs, sups, q.clock(), q.opts.Suppression)
	if err != nil {
		return err
	}
	if len(sups) == 0 && len(q.opts.Subscribers) == 0 {
		return nil
	}
	ctx := context.Background()
	var n int
	err = pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		var err error
		if n, err = q.emit(ctx, tx, evs); err != nil {
			return err
		}
		for _, s := range sups {
			if err := putSuppression(ctx, tx, s, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		q.eventsRecorded(n)
	}
	return wrap(err)
}

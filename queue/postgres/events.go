package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue"
)

// The event outbox (webhooks), as bbolt's queue keeps it (queue/events.go):
// the events of a change are written in the transaction that makes it,
// one delivery row per subscriber that wants each; a subscriber is handed
// at most one event per message at a time, so it sees each message's
// events in order. Every node runs the webhook sender: a delivery may be
// posted by two nodes at once (at least once, as the webhooks promise),
// never out of order.

// wantsEvents says whether a message of env has events: only submitted
// ones, and only with subscribers.
func (q *Queue) wantsEvents(env *queue.Envelope) bool {
	return len(q.opts.Subscribers) > 0 && env.Listener != ""
}

// eventOf is an event of message m with what every event of it carries.
func eventOf(id int64, env *queue.Envelope, t queue.EventType, rcpt string, now time.Time) queue.Event {
	return queue.Event{Type: t, Time: now, QueueID: formatID(id), MessageID: env.MessageID, User: env.User,
		Tags: env.Tags, Metadata: env.Metadata, Recipient: rcpt}
}

// acceptedEvents are the events of a message just queued: accepted per
// recipient, and suppressed for the recipients the submitter left out.
func acceptedEvents(id int64, env *queue.Envelope, now time.Time) []queue.Event {
	var evs []queue.Event
	for _, a := range env.Rcpts {
		evs = append(evs, eventOf(id, env, queue.EventAccepted, a, now))
	}
	for _, r := range env.Suppressed {
		ev := eventOf(id, env, queue.EventSuppressed, r.Address, now)
		ev.Reply = r.Reply
		evs = append(evs, ev)
	}
	return evs
}

// changeEvents are the events of m's recipients that changed (see
// row.before): delivered, bounced, or deferred (each attempt that ended
// so, even when it was deferred before), and the delay warnings its DSN
// carried.
func changeEvents(m *row, now time.Time) []queue.Event {
	if m.env.Listener == "" || m.before == nil {
		return nil
	}
	var evs []queue.Event
	for i, a := range m.rcpts {
		b := m.before[i]
		if !pending(b.State) || (a.State == b.State && !m.attempted[i]) {
			continue
		}
		var t queue.EventType
		switch a.State {
		case queue.StateDelivered:
			t = queue.EventDelivered
		case queue.StateFailed:
			t = queue.EventBounced
		case queue.StateDeferred:
			t = queue.EventDeferred
		default:
			continue
		}
		ev := eventOf(m.id, &m.env, t, a.Address, now)
		ev.Attempt, ev.RemoteMTA, ev.Reply = a.Attempts, a.RemoteMTA, a.LastReply
		evs = append(evs, ev)
	}
	for _, i := range m.delayed {
		r := m.rcpts[i]
		ev := eventOf(m.id, &m.env, queue.EventDelayed, r.Address, now)
		ev.Attempt, ev.RemoteMTA, ev.Reply = r.Attempts, r.RemoteMTA, r.LastReply
		evs = append(evs, ev)
	}
	return evs
}

// emit writes evs to the outbox in tx, one delivery per subscriber that
// wants each, in one round trip (a batch), and returns how many
// deliveries it wrote.
func (q *Queue) emit(ctx context.Context, tx pgx.Tx, evs []queue.Event) (int, error) {
	n := 0
	b := &pgx.Batch{}
	for i := range evs {
		ev := &evs[i]
		var subs []string
		for _, s := range q.opts.Subscribers {
			if s.Wants == nil || s.Wants(ev) {
				subs = append(subs, s.Name)
			}
		}
		if len(subs) == 0 {
			continue
		}
		if ev.ID == "" {
			ev.ID = queue.NewEventID()
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return 0, err
		}
		// One statement: the event and its deliveries.
		b.Queue(`WITH e AS (INSERT INTO postern_events (event) VALUES ($1) RETURNING seq)
			INSERT INTO postern_event_deliveries (sub, seq, queue_id, next) SELECT s, e.seq, $2, $3 FROM e, unnest($4::text[]) s`,
			data, ev.QueueID, ev.Time, subs)
		n += len(subs)
	}
	if b.Len() == 0 {
		return 0, nil
	}
	return n, tx.SendBatch(ctx, b).Close()
}

// eventsRecorded tells the webhook sender, after a commit, that events
// were written.
func (q *Queue) eventsRecorded(n int) {
	if n == 0 {
		return
	}
	select {
	case q.eventKick <- struct{}{}:
	default:
	}
}

// EventsWritten fires after a commit of this node wrote events. (Events
// another node wrote are found by the sender's next look.)
func (q *Queue) EventsWritten() <-chan struct{} { return q.eventKick }

// RecordEvents writes events that are no state change of a queued
// message (the send API's suppressions) in one transaction.
func (q *Queue) RecordEvents(evs ...queue.Event) error {
	if len(q.opts.Subscribers) == 0 {
		return nil
	}
	now := q.clock()
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	var n int
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		var err error
		n, err = q.emit(ctx, tx, evs)
		return err
	})
	if err == nil {
		q.eventsRecorded(n)
	}
	return wrap(err)
}

// DueEvents returns sub's deliveries due at now, at most limit, in
// recording order and at most one per message (the first one waiting),
// and when the first one not returned comes due.
func (q *Queue) DueEvents(sub string, now time.Time, limit int) (due []queue.EventDelivery, next time.Time, err error) {
	ctx := context.Background()
	rows, err := q.pool.Query(ctx, `WITH heads AS (
			SELECT DISTINCT ON (queue_id) seq, attempts, next, last_error FROM postern_event_deliveries
			WHERE sub = $1 AND queue_id <> '' ORDER BY queue_id, seq)
		SELECT h.seq, h.attempts, h.next, h.last_error, e.event FROM (
			SELECT * FROM heads
			UNION ALL SELECT seq, attempts, next, last_error FROM postern_event_deliveries WHERE sub = $1 AND queue_id = '') h
		JOIN postern_events e USING (seq)
		ORDER BY h.next <= $2 DESC, CASE WHEN h.next <= $2 THEN h.seq END, h.next
		LIMIT $3 + 1`, sub, now, limit)
	if err != nil {
		return nil, time.Time{}, wrap(err)
	}
	defer rows.Close()
	for rows.Next() {
		var d queue.EventDelivery
		var seq int64
		var data []byte
		if err := rows.Scan(&seq, &d.Attempts, &d.Next, &d.LastError, &data); err != nil {
			return nil, time.Time{}, wrap(err)
		}
		d.Seq, d.Next = uint64(seq), d.Next.UTC()
		if d.Next.After(now) || len(due) == limit {
			if next.IsZero() || d.Next.Before(next) {
				next = d.Next
			}
			break
		}
		if err := json.Unmarshal(data, &d.Event); err != nil {
			return nil, time.Time{}, fmt.Errorf("queue: outbox event %d: %w", seq, err)
		}
		due = append(due, d)
	}
	return due, next, wrap(rows.Err())
}

// EventDone records that sub's delivery of event seq succeeded (or was
// given up); the event goes once no subscriber waits for it.
func (q *Queue) EventDone(sub string, seq uint64) error {
	ctx := context.Background()
	var found bool
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM postern_event_deliveries WHERE sub = $1 AND seq = $2`, sub, int64(seq))
		if err != nil {
			return err
		}
		if found = tag.RowsAffected() > 0; !found {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM postern_events WHERE seq = $1
			AND NOT EXISTS (SELECT 1 FROM postern_event_deliveries WHERE seq = $1)`, int64(seq))
		return err
	})
	if err == nil && !found {
		return queue.ErrNoDelivery
	}
	return wrap(err)
}

// EventRetry records a failed attempt of sub's delivery of event seq and
// when to try again.
func (q *Queue) EventRetry(sub string, seq uint64, next time.Time, errText string) error {
	tag, err := q.pool.Exec(context.Background(), `UPDATE postern_event_deliveries
		SET attempts = attempts + 1, next = $3, last_error = $4 WHERE sub = $1 AND seq = $2`,
		sub, int64(seq), next.UTC(), errText)
	if err != nil {
		return wrap(err)
	}
	if tag.RowsAffected() == 0 {
		return queue.ErrNoDelivery
	}
	return nil
}

// EventBacklogs counts what waits for each configured subscriber, with
// the first limit deliveries in full.
func (q *Queue) EventBacklogs(limit int) ([]queue.EventBacklog, error) {
	ctx := context.Background()
	out := make([]queue.EventBacklog, len(q.opts.Subscribers))
	for i, s := range q.opts.Subscribers {
		b := queue.EventBacklog{Subscriber: s.Name}
		if err := q.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE attempts > 0)
			FROM postern_event_deliveries WHERE sub = $1`, s.Name).Scan(&b.Pending, &b.Failing); err != nil {
			return nil, wrap(err)
		}
		if limit > 0 {
			rows, err := q.pool.Query(ctx, `SELECT d.seq, d.attempts, d.next, d.last_error, e.event
				FROM postern_event_deliveries d JOIN postern_events e USING (seq) WHERE d.sub = $1 ORDER BY d.seq LIMIT $2`, s.Name, limit)
			if err != nil {
				return nil, wrap(err)
			}
			for rows.Next() {
				var d queue.EventDelivery
				var seq int64
				var data []byte
				if err := rows.Scan(&seq, &d.Attempts, &d.Next, &d.LastError, &data); err != nil {
					rows.Close()
					return nil, wrap(err)
				}
				d.Seq, d.Next = uint64(seq), d.Next.UTC()
				if err := json.Unmarshal(data, &d.Event); err != nil {
					rows.Close()
					return nil, fmt.Errorf("queue: outbox event %d: %w", seq, err)
				}
				b.First = append(b.First, d)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, wrap(err)
			}
		}
		out[i] = b
	}
	return out, nil
}

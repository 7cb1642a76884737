package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue"
)

// modify runs change on message id under its row lock and saves it. A
// message leased by a node keeps its lease: that node's results are
// recorded over what change did (for recipients still pending).
func (q *Queue) modify(id string, change func(m *row) error) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var events int
	err = pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		m, err := scanRow(tx.QueryRow(ctx, `SELECT `+rowCols+` FROM postern_messages WHERE id = $1 FOR UPDATE`, n))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", queue.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		m.before = append([]rcpt(nil), m.rcpts...)
		if err := change(m); err != nil {
			return err
		}
		_, err = q.save(ctx, tx, m, q.clock(), false)
		events = m.events
		return err
	})
	if err == nil {
		q.kick()
		q.announce.Store(true)
		q.eventsRecorded(events)
	}
	if errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrFinal) || errors.Is(err, queue.ErrHeld) || errors.Is(err, queue.ErrNotHeld) {
		return err
	}
	return wrap(err)
}

func hasPending(m *row) bool {
	for _, r := range m.rcpts {
		if pending(r.State) {
			return true
		}
	}
	return false
}

// Hold takes the message out of the schedule until Release.
func (q *Queue) Hold(id string) error {
	return q.modify(id, func(m *row) error {
		if !hasPending(m) {
			return queue.ErrFinal
		}
		m.held = true
		return nil
	})
}

// Release makes a held message due now.
func (q *Queue) Release(id string) error {
	return q.modify(id, func(m *row) error {
		if !m.held {
			return queue.ErrNotHeld
		}
		m.held = false
		now := q.clock()
		for i := range m.rcpts {
			if pending(m.rcpts[i].State) {
				m.rcpts[i].NextAttempt = now
			}
		}
		return nil
	})
}

// Retry makes every pending recipient due now.
func (q *Queue) Retry(id string) error {
	return q.modify(id, func(m *row) error {
		if m.held {
			return queue.ErrHeld
		}
		if !hasPending(m) {
			return queue.ErrFinal
		}
		now := q.clock()
		for i := range m.rcpts {
			if pending(m.rcpts[i].State) {
				m.rcpts[i].NextAttempt = now
			}
		}
		return nil
	})
}

// RetryAll retries every message that is not held and has a pending
// recipient, and returns how many.
func (q *Queue) RetryAll() (int, error) {
	rows, err := q.pool.Query(context.Background(), `SELECT id FROM postern_messages WHERE due IS NOT NULL AND NOT held`)
	if err != nil {
		return 0, wrap(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, wrap(err)
	}
	n := 0
	for _, id := range ids {
		switch err := q.Retry(formatID(id)); {
		case err == nil:
			n++
		case errors.Is(err, queue.ErrNotFound), errors.Is(err, queue.ErrFinal), errors.Is(err, queue.ErrHeld):
		default:
			return n, err
		}
	}
	return n, nil
}

// Delete removes the message without a DSN. A node delivering it drops
// its results.
func (q *Queue) Delete(id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	tag, err := q.pool.Exec(context.Background(), `DELETE FROM postern_messages WHERE id = $1`, n)
	if err != nil {
		return wrap(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", queue.ErrNotFound, id)
	}
	return nil
}

// Bounce fails every pending recipient now, with a DSN to the sender.
func (q *Queue) Bounce(id string) error {
	return q.modify(id, func(m *row) error {
		if !hasPending(m) {
			return queue.ErrFinal
		}
		for i := range m.rcpts {
			if r := &m.rcpts[i]; pending(r.State) {
				r.State = queue.StateFailed
				r.LastReply = adminBounce
			}
		}
		m.held = false
		return nil
	})
}

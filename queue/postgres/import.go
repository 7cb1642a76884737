package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"postern/queue"
)

// Import inserts a message exported from another queue (a stopped node's
// bbolt file: `postern queue migrate`), keeping its id-independent state:
// envelope, acceptance time, each recipient's state, attempts, next
// attempt and last reply, what DSNs were sent, and whether it is held.
// origin names it in its old queue; a second Import of the same origin
// inserts nothing and returns false, so that a migration cut off between
// this insert and the old queue's delete can simply be run again.
func (q *Queue) Import(ctx context.Context, origin string, e *queue.Exported) (inserted bool, err error) {
	m := e.Message
	rs := make([]rcpt, len(m.Rcpts))
	for i, r := range m.Rcpts {
		rs[i] = rcpt{Address: r.Address, State: r.State, Attempts: r.Attempts, NextAttempt: r.NextAttempt,
			LastAttempt: r.LastAttempt, LastReply: r.LastReply, RemoteMTA: r.RemoteMTA,
			Reported: i < len(e.Reported) && e.Reported[i], Warned: i < len(e.Warned) && e.Warned[i],
			RemoteDSN: i < len(e.RemoteDSN) && e.RemoteDSN[i]}
	}
	var body []byte
	if e.Body != nil {
		f, err := e.Body.Open()
		if err != nil {
			return false, fmt.Errorf("message %s: body: %w", m.ID, err)
		}
		body, err = io.ReadAll(f)
		f.Close()
		if err != nil {
			return false, fmt.Errorf("message %s: body: %w", m.ID, err)
		}
	}
	env := m.Envelope
	env.Rcpts = nil
	for _, r := range rs {
		env.Rcpts = append(env.Rcpts, r.Address)
	}
	envJSON, err := json.Marshal(env)
	if err != nil {
		return false, err
	}
	rcJSON, err := json.Marshal(rs)
	if err != nil {
		return false, err
	}
	st := messageState(rs, m.Held)
	next, ok := nextDue(rs)
	var due, purge any
	switch {
	case !ok:
		purge = q.clock().Add(q.opts.KeepFailed)
		body = nil
	case m.Held:
	case body == nil:
		return false, fmt.Errorf("message %s has pending recipients and no body", m.ID)
	default:
		due = next
	}
	tag, err := q.pool.Exec(ctx, `INSERT INTO postern_messages (origin, created, envelope, size, body, rcpts, state, held, due, purge_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (origin) DO NOTHING`,
		origin, m.Created, envJSON, m.Size, body, rcJSON, st, m.Held, due, purge)
	if err != nil {
		return false, wrap(err)
	}
	if tag.RowsAffected() == 1 {
		q.announce.Store(true)
		return true, nil
	}
	return false, nil
}

package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"postern/queue"
)

// Suppressed returns user's live suppression of addr, or nil.
func (q *Queue) Suppressed(user, addr string) (*queue.Suppression, error) {
	var data []byte
	err := q.pool.QueryRow(context.Background(), `SELECT data FROM postern_suppressions WHERE username = $1 AND address = $2`,
		user, strings.ToLower(addr)).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, wrap(err)
	}
	s := new(queue.Suppression)
	if err := json.Unmarshal(data, s); err != nil {
		return nil, err
	}
	if !s.Expires.IsZero() && !q.clock().Before(s.Expires) {
		return nil, nil
	}
	return s, nil
}

func putSuppression(ctx context.Context, db querier, s queue.Suppression, replace bool) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	sql := `INSERT INTO postern_suppressions (username, address, data) VALUES ($1, $2, $3) ON CONFLICT (username, address) DO `
	if replace {
		sql += `UPDATE SET data = excluded.data`
	} else {
		// An automatic suppression does not replace an operator's.
		sql += `UPDATE SET data = excluded.data WHERE postern_suppressions.data->>'reason' <> 'manual'`
	}
	_, err = db.Exec(ctx, sql, s.User, strings.ToLower(s.Address), data)
	return err
}

// Suppress adds or replaces a suppression; Created is set when zero.
func (q *Queue) Suppress(s queue.Suppression) error {
	if s.Address == "" || strings.ContainsRune(s.User, 0) {
		return fmt.Errorf("queue: suppression needs an address and a user without NUL")
	}
	if s.Created.IsZero() {
		s.Created = q.clock()
	}
	if s.Reason == "" {
		s.Reason = queue.SuppressManual
	}
	return wrap(putSuppression(context.Background(), q.pool, s, true))
}

// Unsuppress removes user's suppression of addr; ErrNotFound if there is
// none (or only an expired one).
func (q *Queue) Unsuppress(user, addr string) error {
	s, err := q.Suppressed(user, addr)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("%w: %s is not suppressed", queue.ErrNotFound, addr)
	}
	_, err = q.pool.Exec(context.Background(), `DELETE FROM postern_suppressions WHERE username = $1 AND address = $2`,
		user, strings.ToLower(addr))
	return wrap(err)
}

// Suppressions lists user's live suppressions (every user's with all),
// in address order.
func (q *Queue) Suppressions(user string, all bool) ([]queue.Suppression, error) {
	sql := `SELECT data FROM postern_suppressions WHERE username = $1 ORDER BY address`
	args := []any{user}
	if all {
		sql, args = `SELECT data FROM postern_suppressions ORDER BY username, address`, nil
	}
	rows, err := q.pool.Query(context.Background(), sql, args...)
	if err != nil {
		return nil, wrap(err)
	}
	raw, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, wrap(err)
	}
	now := q.clock()
	var out []queue.Suppression
	for _, data := range raw {
		var s queue.Suppression
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, err
		}
		if s.Expires.IsZero() || now.Before(s.Expires) {
			out = append(out, s)
		}
	}
	return out, nil
}

// Idempotent returns what the send API answered for user's key within
// IdempotencyWindow, or nil.
func (q *Queue) Idempotent(user, key string) (*queue.Accepted, error) {
	var data []byte
	err := q.pool.QueryRow(context.Background(), `SELECT data FROM postern_idempotency WHERE username = $1 AND key = $2`,
		user, key).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, wrap(err)
	}
	a := new(queue.Accepted)
	if err := json.Unmarshal(data, a); err != nil {
		return nil, err
	}
	if q.clock().Sub(a.Created) >= queue.IdempotencyWindow {
		return nil, nil
	}
	return a, nil
}

// StateGet implements queue.StateBackend.
func (q *Queue) StateGet(ns, key string) ([]byte, bool, error) {
	var v []byte
	err := q.pool.QueryRow(context.Background(), `SELECT value FROM postern_state WHERE ns = $1 AND key = $2`, ns, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	return v, err == nil, wrap(err)
}

// StatePut implements queue.StateBackend: every key in one transaction.
func (q *Queue) StatePut(ns string, m map[string][]byte) error {
	b := &pgx.Batch{}
	for k, v := range m {
		b.Queue(`INSERT INTO postern_state (ns, key, value) VALUES ($1, $2, $3) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value`, ns, k, v)
	}
	ctx := context.Background()
	return wrap(pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() }))
}

// StateDelete implements queue.StateBackend.
func (q *Queue) StateDelete(ns, key string) error {
	_, err := q.pool.Exec(context.Background(), `DELETE FROM postern_state WHERE ns = $1 AND key = $2`, ns, key)
	return wrap(err)
}

// StateList implements queue.StateBackend.
func (q *Queue) StateList(ns string) (map[string][]byte, error) {
	rows, err := q.pool.Query(context.Background(), `SELECT key, value FROM postern_state WHERE ns = $1`, ns)
	if err != nil {
		return nil, wrap(err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, wrap(rows.Err())
}

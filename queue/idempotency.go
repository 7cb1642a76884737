package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// IdempotencyWindow is how long an idempotency key is remembered.
const IdempotencyWindow = 24 * time.Hour

// Accepted is what Enqueue answered for an idempotency key: a retry of
// the same request gets it again instead of a second message.
type Accepted struct {
	ID        string    `json:"id"`
	MessageID string    `json:"message_id,omitempty"`
	Created   time.Time `json:"created"`
}

func idempotencyKey(user, key string) []byte {
	return append(append([]byte(user), 0), key...)
}

// Idempotent returns what Enqueue answered for user's key within
// IdempotencyWindow, or nil. The caller serialises requests with the same
// key: the record is written with the message, not before it.
func (q *Queue) Idempotent(user, key string) (*Accepted, error) {
	var a *Accepted
	err := q.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bIdempotency).Get(idempotencyKey(user, key))
		if v == nil {
			return nil
		}
		a = new(Accepted)
		return json.Unmarshal(v, a)
	})
	if err != nil || a == nil || q.clock().Sub(a.Created) >= IdempotencyWindow {
		return nil, err
	}
	return a, nil
}

// putIdempotency records, in the transaction that inserts message id,
// the answer for env's idempotency key, with its expiry in the index the
// purge walks.
func putIdempotency(tx *bolt.Tx, env *Envelope, id uint64, now time.Time) error {
	if env.IdempotencyKey == "" {
		return nil
	}
	k := idempotencyKey(env.User, env.IdempotencyKey)
	data, err := json.Marshal(Accepted{ID: formatID(id), MessageID: env.MessageID, Created: now})
	if err != nil {
		return err
	}
	if err := tx.Bucket(bIdempotency).Put(k, data); err != nil {
		return err
	}
	exp := binary.BigEndian.AppendUint64(nil, uint64(now.Add(IdempotencyWindow).UnixNano()))
	return tx.Bucket(bIdempotencyExp).Put(append(exp, k...), nil)
}

// purgeIdempotency forgets the keys whose window has passed.
func purgeIdempotency(tx *bolt.Tx, now time.Time) error {
	exp, keys := tx.Bucket(bIdempotencyExp), tx.Bucket(bIdempotency)
	var done [][]byte
	c := exp.Cursor()
	for k, _ := c.First(); k != nil && schedTime(k) <= now.UnixNano() && len(done) < purgeChunk; k, _ = c.Next() {
		done = append(done, bytes.Clone(k))
	}
	for _, k := range done {
		if err := exp.Delete(k); err != nil {
			return err
		}
		// A key used again later has a newer record: leave that one.
		if v := keys.Get(k[8:]); v != nil {
			var a Accepted
			if json.Unmarshal(v, &a) == nil && a.Created.Add(IdempotencyWindow).UnixNano() > now.UnixNano() {
				continue
			}
			if err := keys.Delete(k[8:]); err != nil {
				return err
			}
		}
	}
	return nil
}

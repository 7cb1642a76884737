package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Exported is one message as Export hands it to another backend: the
// snapshot operators see, the bookkeeping that keeps a DSN from being
// sent twice, and its body (nil for the record of a failed message,
// which has none).
type Exported struct {
	Message *Message
	// Reported, Warned and RemoteDSN are parallel to Message.Rcpts: a
	// DSN already reported the recipient's final state, a delay warning
	// was sent, the remote took over DSN duty.
	Reported, Warned, RemoteDSN []bool
	Body                        Body
}

var keyInstance = []byte("instance")

// Instance names this queue file for as long as it exists: random, made
// at the first call and kept in the meta bucket. A migration marks each
// message it moves with it, so that a rerun recognises what it moved.
func (q *Queue) Instance() (string, error) {
	var id string
	err := q.updateOpen(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		if v := meta.Get(keyInstance); v != nil {
			id = string(v)
			return nil
		}
		var b [12]byte
		rand.Read(b[:])
		id = hex.EncodeToString(b[:])
		return meta.Put(keyInstance, []byte(id))
	})
	return id, err
}

// Export calls fn with every message, in id order, each read in a
// read transaction of its own that is closed before fn runs: fn may
// Delete the message it was given. It is meant for a queue that is not
// delivering (a stopped node's, opened by `postern queue migrate`).
func (q *Queue) Export(fn func(*Exported) error) error {
	var after []byte
	for {
		var e *Exported
		err := q.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(bMessages).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			if k == nil {
				return nil
			}
			after = append([]byte(nil), k...)
			id := binary.BigEndian.Uint64(k)
			rec, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("queue: message %s: %w", formatID(id), err)
			}
			e = &Exported{Message: rec.message(id)}
			for _, r := range rec.Rcpts {
				e.Reported = append(e.Reported, r.reported)
				e.Warned = append(e.Warned, r.warned)
				e.RemoteDSN = append(e.RemoteDSN, r.remoteDSN)
			}
			switch {
			case rec.Spool != "":
				e.Body = q.body(rec, nil)
			default:
				if b := tx.Bucket(bBodies).Get(k); b != nil {
					e.Body = inlineBody(append([]byte(nil), b...))
				}
			}
			return nil
		})
		if err != nil || e == nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

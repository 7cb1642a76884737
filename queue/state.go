package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// StateStore is a small durable store of typed values by key, in one namespace
// of the queue database, for what other rooms must keep across restarts
// beside the messages: caches (MTA-STS policies) and counters (TLS
// report counts). The queue knows nothing of what the values mean: they
// are stored JSON-encoded, in a bucket of their own per namespace inside
// the state bucket (see "Storage layout" in doc.go).
//
// Each Put and Delete is its own transaction, shared with the queue's
// other writers (group commit) and synced before it returns; PutAll
// writes many keys in one. Values are meant to be small (a few KiB):
// every one is read whole, and List reads the namespace whole.
//
// Its methods are safe for concurrent use; after the queue is closed they
// return ErrClosed.
type StateStore[T any] struct {
	q  *Queue
	ns []byte
}

// NewStateStore returns the store of namespace in q. A namespace is a short
// name of the room's choosing ("mta-sts", "tlsrpt"); the bucket is
// created at its first write.
func NewStateStore[T any](q *Queue, namespace string) (*StateStore[T], error) {
	if namespace == "" || len(namespace) > 64 || strings.ContainsAny(namespace, "\x00/") {
		return nil, fmt.Errorf("queue: bad state namespace %q", namespace)
	}
	return &StateStore[T]{q: q, ns: []byte(namespace)}, nil
}

// ErrStateValue is wrapped by the error of a stored value that does not
// decode as T (written by another version of its room, or corrupt).
var ErrStateValue = errors.New("queue: undecodable state value")

// view runs fn on the namespace's bucket, nil while it does not exist.
func (s *StateStore[T]) view(fn func(b *bolt.Bucket) error) error {
	q := s.q
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return ErrClosed
	}
	return q.db.View(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bState).Bucket(s.ns))
	})
}

// update runs fn on the namespace's bucket, created if needed, in a
// shared commit. fn may run more than once (see batch).
func (s *StateStore[T]) update(fn func(b *bolt.Bucket) error) error {
	q := s.q
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return ErrClosed
	}
	err := q.batch(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bState).CreateBucketIfNotExists(s.ns)
		if err != nil {
			return err
		}
		return fn(b)
	})
	q.dbMu.RUnlock()
	if err != nil {
		q.checkDB(err) // needs dbMu free
		return fmt.Errorf("queue: state %s: %w", s.ns, errnoOf(err))
	}
	return nil
}

func (s *StateStore[T]) decode(key string, data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("queue: state %s key %q: %w: %v", s.ns, key, ErrStateValue, err)
	}
	return v, nil
}

// Get returns the value of key, and whether there is one.
func (s *StateStore[T]) Get(key string) (v T, ok bool, err error) {
	err = s.view(func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		data := b.Get([]byte(key))
		if data == nil {
			return nil
		}
		ok = true
		// json.Unmarshal copies out of bbolt's memory map.
		v, err = s.decode(key, data)
		return err
	})
	return v, ok, err
}

// Put stores v as the value of key, durably.
func (s *StateStore[T]) Put(key string, v T) error {
	return s.PutAll(map[string]T{key: v})
}

// PutAll stores every value of m under its key, durably, in one
// transaction: all of them or none.
func (s *StateStore[T]) PutAll(m map[string]T) error {
	if len(m) == 0 {
		return nil
	}
	enc := make(map[string][]byte, len(m))
	for k, v := range m {
		if k == "" {
			return fmt.Errorf("queue: state %s: empty key", s.ns)
		}
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("queue: state %s key %q: %w", s.ns, k, err)
		}
		enc[k] = data
	}
	return s.update(func(b *bolt.Bucket) error {
		for k, data := range enc {
			if err := b.Put([]byte(k), data); err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete removes key; removing a key that is not there is no error.
func (s *StateStore[T]) Delete(key string) error {
	return s.update(func(b *bolt.Bucket) error { return b.Delete([]byte(key)) })
}

// List returns every key and value of the namespace. A value that does
// not decode fails the whole call (wrapping ErrStateValue), naming its
// key, so that the caller can Delete it.
func (s *StateStore[T]) List() (map[string]T, error) {
	out := make(map[string]T)
	err := s.view(func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, data []byte) error {
			v, err := s.decode(string(k), data)
			if err != nil {
				return err
			}
			out[string(k)] = v
			return nil
		})
	})
	return out, err
}

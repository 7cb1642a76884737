package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// StateStore is a small durable store of typed values by key, in one namespace
// of the queue's storage, for what other rooms must keep across restarts
// beside the messages: caches (MTA-STS policies) and counters (TLS
// report counts). The queue knows nothing of what the values mean: they
// are stored JSON-encoded, per namespace (for bbolt, a bucket of their own
// inside the state bucket: see "Storage layout" in doc.go; for PostgreSQL,
// rows of the state table).
//
// Each Put and Delete is its own transaction, synced before it returns
// (with bbolt, shared with the queue's other writers: group commit);
// PutAll writes many keys in one. Values are meant to be small (a few
// KiB): every one is read whole, and List reads the namespace whole.
//
// Its methods are safe for concurrent use; after the queue is closed they
// return ErrClosed.
type StateStore[T any] struct {
	b  StateBackend
	ns string
}

// StateBackend is the storage under a StateStore: raw values by namespace
// and key. *Queue (bbolt) and the PostgreSQL queue implement it; rooms
// use StateStore, which encodes and checks.
type StateBackend interface {
	// StateGet returns the value of key, and whether there is one.
	StateGet(ns, key string) ([]byte, bool, error)
	// StatePut stores every value of m under its key, durably, in one
	// transaction.
	StatePut(ns string, m map[string][]byte) error
	// StateDelete removes key; a missing key is no error.
	StateDelete(ns, key string) error
	// StateList returns every key and value of the namespace.
	StateList(ns string) (map[string][]byte, error)
}

// NewStateStore returns the store of namespace in b. A namespace is a
// short name of the room's choosing ("mta-sts", "tlsrpt"); its storage is
// created at its first write.
func NewStateStore[T any](b StateBackend, namespace string) (*StateStore[T], error) {
	if namespace == "" || len(namespace) > 64 || strings.ContainsAny(namespace, "\x00/") {
		return nil, fmt.Errorf("queue: bad state namespace %q", namespace)
	}
	return &StateStore[T]{b: b, ns: namespace}, nil
}

// ErrStateValue is wrapped by the error of a stored value that does not
// decode as T (written by another version of its room, or corrupt).
var ErrStateValue = errors.New("queue: undecodable state value")

func (s *StateStore[T]) decode(key string, data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("queue: state %s key %q: %w: %v", s.ns, key, ErrStateValue, err)
	}
	return v, nil
}

// Get returns the value of key, and whether there is one.
func (s *StateStore[T]) Get(key string) (v T, ok bool, err error) {
	data, ok, err := s.b.StateGet(s.ns, key)
	if err != nil || !ok {
		return v, false, err
	}
	v, err = s.decode(key, data)
	return v, err == nil, err
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
	return s.b.StatePut(s.ns, enc)
}

// Delete removes key; removing a key that is not there is no error.
func (s *StateStore[T]) Delete(key string) error {
	return s.b.StateDelete(s.ns, key)
}

// List returns every key and value of the namespace. A value that does
// not decode fails the whole call (wrapping ErrStateValue), naming its
// key, so that the caller can Delete it.
func (s *StateStore[T]) List() (map[string]T, error) {
	raw, err := s.b.StateList(s.ns)
	if err != nil {
		return nil, err
	}
	out := make(map[string]T, len(raw))
	for k, data := range raw {
		v, err := s.decode(k, data)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// stateView runs fn on the namespace's bucket, nil while it does not exist.
func (q *Queue) stateView(ns string, fn func(b *bolt.Bucket) error) error {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return ErrClosed
	}
	return q.db.View(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bState).Bucket([]byte(ns)))
	})
}

// stateUpdate runs fn on the namespace's bucket, created if needed, in a
// shared commit. fn may run more than once (see batch).
func (q *Queue) stateUpdate(ns string, fn func(b *bolt.Bucket) error) error {
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return ErrClosed
	}
	err := q.batch(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bState).CreateBucketIfNotExists([]byte(ns))
		if err != nil {
			return err
		}
		return fn(b)
	})
	q.dbMu.RUnlock()
	if err != nil {
		q.checkDB(err) // needs dbMu free
		return fmt.Errorf("queue: state %s: %w", ns, errnoOf(err))
	}
	return nil
}

// StateGet implements StateBackend.
func (q *Queue) StateGet(ns, key string) (data []byte, ok bool, err error) {
	err = q.stateView(ns, func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(key)); v != nil {
			// Copied out of bbolt's memory map, valid only in the
			// transaction.
			data, ok = append([]byte(nil), v...), true
		}
		return nil
	})
	return data, ok, err
}

// StatePut implements StateBackend.
func (q *Queue) StatePut(ns string, m map[string][]byte) error {
	return q.stateUpdate(ns, func(b *bolt.Bucket) error {
		for k, data := range m {
			if err := b.Put([]byte(k), data); err != nil {
				return err
			}
		}
		return nil
	})
}

// StateDelete implements StateBackend.
func (q *Queue) StateDelete(ns, key string) error {
	return q.stateUpdate(ns, func(b *bolt.Bucket) error { return b.Delete([]byte(key)) })
}

// StateList implements StateBackend.
func (q *Queue) StateList(ns string) (map[string][]byte, error) {
	out := make(map[string][]byte)
	err := q.stateView(ns, func(b *bolt.Bucket) error {
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			out[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	return out, err
}

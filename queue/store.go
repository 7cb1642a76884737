package queue

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket names. See doc.go for what each holds.
var (
	bMeta     = []byte("meta")
	bMessages = []byte("messages")
	bBodies   = []byte("bodies")
	bSpool    = []byte("spool")
	bSchedule = []byte("schedule")

	allBuckets = [][]byte{bMeta, bMessages, bBodies, bSpool, bSchedule}

	keyVersion = []byte("version")
)

// formatVersion is stored in the meta bucket so a later postern can tell an
// old layout from a new one and migrate instead of misreading it.
const formatVersion = 1

// idKey is the bbolt key of message id: 8 bytes big-endian, so that byte
// order equals numeric order and keys sort by acceptance (bbolt README,
// "Autoincrementing integer for the bucket").
func idKey(id uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, id)
	return k
}

// formatID is the printable queue ID: fixed width so that IDs sort as
// strings the way they sort as numbers, upper case to read well in logs.
func formatID(id uint64) string {
	return fmt.Sprintf("%016X", id)
}

// parseID is the inverse of formatID. It accepts only what formatID makes.
func parseID(s string) (uint64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("queue: bad id %q: want 16 hex digits", s)
	}
	for _, c := range []byte(s) {
		if ('a' <= c && c <= 'f') || c == '+' || c == '-' {
			return 0, fmt.Errorf("queue: bad id %q: want upper-case hex", s)
		}
	}
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("queue: bad id %q: %w", s, err)
	}
	return id, nil
}

// schedKey is a schedule entry: the time first, so a cursor walks entries
// in due order, then the id, so two messages due at the same nanosecond get
// distinct keys.
func schedKey(unixNano int64, id uint64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k[:8], uint64(unixNano))
	binary.BigEndian.PutUint64(k[8:], id)
	return k
}

func schedTime(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[:8])) }
func schedID(k []byte) uint64  { return binary.BigEndian.Uint64(k[8:16]) }

// record is what the messages bucket stores, JSON-encoded so later issues
// can add fields (DSN parameters, REQUIRETLS...) without a migration.
type record struct {
	// Env is the envelope as accepted, with Rcpts left empty: the
	// addresses live in Rcpts below, once.
	Env     Envelope  `json:"env"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"`
	// Spool is the body's file name in SpoolDir; "" means the body is in
	// the bodies bucket.
	Spool string `json:"spool,omitempty"`
	// Next is the time part of this message's schedule key, kept so the key
	// can be found and deleted without a scan; 0 when nothing is pending.
	Next  int64       `json:"next,omitempty"`
	Rcpts []Recipient `json:"rcpts"`
}

func marshalRecord(rec *record) ([]byte, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("queue: encode record: %w", err)
	}
	return data, nil
}

func decodeRecord(data []byte) (*record, error) {
	rec := new(record)
	// json.Unmarshal copies every string out of data, so nothing refers to
	// bbolt's memory map after the transaction ends.
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, err
	}
	if len(rec.Rcpts) == 0 {
		return nil, fmt.Errorf("record has no recipients")
	}
	return rec, nil
}

func (r *record) message(id uint64) *Message {
	m := &Message{
		ID:       formatID(id),
		Envelope: r.Env,
		Created:  r.Created,
		Size:     r.Size,
		Rcpts:    append([]Recipient(nil), r.Rcpts...),
	}
	m.Envelope.Rcpts = make([]string, len(r.Rcpts))
	for i, rc := range r.Rcpts {
		m.Envelope.Rcpts[i] = rc.Address
	}
	return m
}

// nextDue is the earliest NextAttempt among pending recipients, and false
// when none is pending (the message is final).
func (r *record) nextDue() (time.Time, bool) {
	var next time.Time
	found := false
	for _, rc := range r.Rcpts {
		if rc.State.pending() && (!found || rc.NextAttempt.Before(next)) {
			next, found = rc.NextAttempt, true
		}
	}
	return next, found
}

// insert stores a new message in tx and returns its id. It runs inside
// db.Batch, which may call it more than once: it only touches tx, and the id
// it allocates is rolled back with any transaction that does not commit.
func insert(tx *bolt.Tx, data, inline []byte, spool string, next int64) (uint64, error) {
	msgs := tx.Bucket(bMessages)
	id, err := msgs.NextSequence()
	if err != nil {
		return 0, err
	}
	k := idKey(id)
	if err := msgs.Put(k, data); err != nil {
		return 0, err
	}
	if spool == "" {
		if err := tx.Bucket(bBodies).Put(k, inline); err != nil {
			return 0, err
		}
	} else if err := tx.Bucket(bSpool).Put([]byte(spool), k); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bSchedule).Put(schedKey(next, id), []byte{}); err != nil {
		return 0, err
	}
	return id, nil
}

// save writes rec back and moves its schedule entry to its earliest pending
// NextAttempt. If nothing is pending it deletes the message instead and
// reports final; the caller removes the spool file after the commit.
func save(tx *bolt.Tx, id uint64, rec *record) (final bool, err error) {
	k := idKey(id)
	sched := tx.Bucket(bSchedule)
	next, pending := rec.nextDue()
	if rec.Next != 0 && (!pending || next.UnixNano() != rec.Next) {
		if err := sched.Delete(schedKey(rec.Next, id)); err != nil {
			return false, err
		}
	}
	if !pending {
		for _, b := range [][]byte{bMessages, bBodies} {
			if err := tx.Bucket(b).Delete(k); err != nil {
				return false, err
			}
		}
		if rec.Spool != "" {
			if err := tx.Bucket(bSpool).Delete([]byte(rec.Spool)); err != nil {
				return false, err
			}
		}
		rec.Next = 0
		return true, nil
	}
	if next.UnixNano() != rec.Next {
		rec.Next = next.UnixNano()
		if err := sched.Put(schedKey(rec.Next, id), []byte{}); err != nil {
			return false, err
		}
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	return false, tx.Bucket(bMessages).Put(k, data)
}

package queue

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/reply"
)

// Bucket names. See doc.go for what each holds.
var (
	bMeta     = []byte("meta")
	bMessages = []byte("messages")
	bBodies   = []byte("bodies")
	bSpool    = []byte("spool")
	bSchedule = []byte("schedule")
	bPurge    = []byte("purge")
	bState    = []byte("state") // state.go
	// Beside the messages: events waiting for subscribers
	// (events.go), suppressed addresses (suppress.go), and idempotency
	// keys with their expiry index (idempotency.go).
	bOutbox         = []byte("outbox")
	bDeliveries     = []byte("outbox-deliveries")
	bSuppressed     = []byte("suppressed")
	bIdempotency    = []byte("idempotency")
	bIdempotencyExp = []byte("idempotency-expiry")
	// What late bounces and complaints need of a message after it is
	// gone, with the expiry index the purge walks (trace.go).
	bTraces   = []byte("traces")
	bTraceExp = []byte("trace-expiry")

	allBuckets = [][]byte{bMeta, bMessages, bBodies, bSpool, bSchedule, bPurge, bState,
		bOutbox, bDeliveries, bSuppressed, bIdempotency, bIdempotencyExp, bTraces, bTraceExp}

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

// schedKey is a schedule (or purge) entry: the time first, so a cursor
// walks entries in time order, then the id, so two messages due at the same
// nanosecond get distinct keys.
func schedKey(unixNano int64, id uint64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k[:8], uint64(unixNano))
	binary.BigEndian.PutUint64(k[8:], id)
	return k
}

func schedTime(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[:8])) }
func schedID(k []byte) uint64  { return binary.BigEndian.Uint64(k[8:16]) }

// record is what the messages bucket stores, JSON-encoded so later issues
// can add fields without a migration.
type record struct {
	// Env is the envelope as accepted, with Rcpts left empty: the
	// addresses live in Rcpts below, once.
	Env     Envelope  `json:"env"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"`
	// Spool is the body's file name in SpoolDir; "" means the body is in
	// the bodies bucket (or, once the message is final, gone).
	Spool string `json:"spool,omitempty"`
	// Prefix is the start of a spooled message that was only known after
	// its body (the Received and DKIM-Signature fields, which the session
	// computes while the body streams to the spool file): the message is
	// Prefix followed by the file. Inline bodies hold their prefix.
	Prefix []byte `json:"prefix,omitempty"`
	// Next is the time part of this message's schedule key, kept so the key
	// can be found and deleted without a scan; 0 when the message has no
	// schedule entry (nothing pending, or held).
	Next int64 `json:"next,omitempty"`
	// Held is set by Hold: the message has no schedule entry, so it is
	// never leased, until Release.
	Held bool `json:"held,omitempty"`
	// Purge is the time part of the purge key of a final message kept to
	// explain its failures (Options.KeepFailed); 0 for any other.
	Purge int64       `json:"purge,omitempty"`
	Rcpts []Recipient `json:"rcpts"`
}

// storedRcpt is a Recipient as the messages bucket stores it. The public
// Recipient has the JSON names operators see (snake_case, --json); these
// short names are the storage format, which must not change with them. It
// also carries the queue's private per-recipient bookkeeping.
type storedRcpt struct {
	Address     string    `json:"addr"`
	State       State     `json:"state"`
	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"next,omitzero"`
	LastAttempt time.Time `json:"last,omitzero"`
	// The last reply, typed: its code, enhanced code and text.
	Code      int            `json:"code,omitempty"`
	Enhanced  reply.Enhanced `json:"enh,omitzero"`
	Text      string         `json:"text,omitempty"`
	RemoteMTA string         `json:"remote,omitempty"`

	// Leased: handed to a Deliverer by the last lease and no result
	// recorded since. Reports wait while a sibling is leased, so that
	// recipients failing in the same lease share one DSN.
	Leased bool `json:"leased,omitempty"`
	// Reported: the final state has been dealt with by the DSN logic
	// (reported, or not to be reported).
	Reported bool `json:"reported,omitempty"`
	// Warned: a delay DSN was sent for this recipient.
	Warned bool `json:"warned,omitempty"`
	// RemoteDSN: the server that accepted it took over DSN duty.
	RemoteDSN bool `json:"remote_dsn,omitempty"`

	// Written by postern before replies were typed, read but never
	// written: the reply as one line, and the enhanced code the queue
	// had decided itself (expiry, administrator bounce). Such a reply is
	// kept as text with no code: it is not parsed back.
	LegacyReply  string `json:"reply,omitempty"`
	LegacyStatus string `json:"status,omitempty"`
}

func toStored(r Recipient) storedRcpt {
	return storedRcpt{Address: r.Address, State: r.State, Attempts: r.Attempts, NextAttempt: r.NextAttempt,
		LastAttempt: r.LastAttempt, Code: r.LastReply.Code, Enhanced: r.LastReply.Enhanced, Text: r.LastReply.Text,
		RemoteMTA: r.RemoteMTA, Leased: r.leased, Reported: r.reported, Warned: r.warned, RemoteDSN: r.remoteDSN}
}

func fromStored(s storedRcpt) Recipient {
	r := Recipient{Address: s.Address, State: s.State, Attempts: s.Attempts, NextAttempt: s.NextAttempt,
		LastAttempt: s.LastAttempt, LastReply: reply.Reply{Code: s.Code, Enhanced: s.Enhanced, Text: s.Text},
		RemoteMTA: s.RemoteMTA, leased: s.Leased, reported: s.Reported, warned: s.Warned, remoteDSN: s.RemoteDSN}
	if s.LegacyReply != "" && r.LastReply.IsZero() {
		r.LastReply.Text = s.LegacyReply
		r.LastReply.Enhanced, _ = reply.ParseEnhanced(s.LegacyStatus) // the queue's own, written by itself
	}
	return r
}

// recordAlias has record's fields without its methods, so the wire struct
// below can embed it and shadow Rcpts (encoding/json: the shallower field
// wins).
type recordAlias record

type recordWire struct {
	*recordAlias
	Rcpts []storedRcpt `json:"rcpts"`
}

func marshalRecord(rec *record) ([]byte, error) {
	w := recordWire{recordAlias: (*recordAlias)(rec), Rcpts: make([]storedRcpt, len(rec.Rcpts))}
	for i, r := range rec.Rcpts {
		w.Rcpts[i] = toStored(r)
	}
	data, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("queue: encode record: %w", err)
	}
	return data, nil
}

func decodeRecord(data []byte) (*record, error) {
	rec := new(record)
	w := recordWire{recordAlias: (*recordAlias)(rec)}
	// json.Unmarshal copies every string out of data, so nothing refers to
	// bbolt's memory map after the transaction ends.
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, err
	}
	if len(w.Rcpts) == 0 {
		return nil, fmt.Errorf("record has no recipients")
	}
	rec.Rcpts = make([]Recipient, len(w.Rcpts))
	for i, s := range w.Rcpts {
		rec.Rcpts[i] = fromStored(s)
	}
	return rec, nil
}

// clone is a deep copy, so a snapshot can be changed without touching the
// original.
func (r *record) clone() *record {
	c := *r
	c.Rcpts = slices.Clone(r.Rcpts)
	c.Env.DSN = slices.Clone(r.Env.DSN)
	return &c
}

func (r *record) message(id uint64) *Message {
	m := &Message{
		ID:       formatID(id),
		Envelope: r.Env,
		Created:  r.Created,
		Size:     r.Size,
		Held:     r.Held,
		State:    r.state(),
		Rcpts:    make([]Recipient, len(r.Rcpts)),
	}
	m.Envelope.Rcpts = make([]string, len(r.Rcpts))
	for i, rc := range r.Rcpts {
		m.Envelope.Rcpts[i] = rc.Address
		m.Rcpts[i] = rc.public()
	}
	return m
}

// state is the message-level state: held, then deferred, then queued, then
// failed (final, kept for KeepFailed). "" means final without failure: such
// a record is deleted, never stored.
func (r *record) state() State {
	var queued, deferred, failed bool
	for _, rc := range r.Rcpts {
		switch rc.State {
		case StateQueued:
			queued = true
		case StateDeferred:
			deferred = true
		case StateFailed:
			failed = true
		}
	}
	switch {
	case r.Held && (queued || deferred):
		return StateHeld
	case deferred:
		return StateDeferred
	case queued:
		return StateQueued
	case failed:
		return StateFailed
	}
	return ""
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
// Queue.batch, which may call it more than once: it only touches tx, and the id
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

// saved is what save did beyond writing the record.
type saved struct {
	final bool   // no recipient is pending any more
	spool string // spool file to remove after the commit, "" if none
}

// save writes rec back and keeps the indexes in step with it:
//   - pending and not held: the schedule entry sits at the earliest
//     NextAttempt;
//   - held: no schedule entry;
//   - final with a failed recipient: the body goes, the record stays with
//     a purge entry at now+keep, so operators can see what failed;
//   - final without failure: the message goes entirely.
//
// The caller removes saved.spool after the commit, never before: a crash
// in between leaves an orphan file that Open removes, not a record without
// its body.
func save(tx *bolt.Tx, id uint64, rec *record, now time.Time, keep time.Duration) (saved, error) {
	var out saved
	k := idKey(id)
	sched := tx.Bucket(bSchedule)
	next, pending := rec.nextDue()
	want := int64(0)
	if pending && !rec.Held {
		want = next.UnixNano()
	}
	if rec.Next != 0 && rec.Next != want {
		if err := sched.Delete(schedKey(rec.Next, id)); err != nil {
			return out, err
		}
	}
	if want != 0 && want != rec.Next {
		if err := sched.Put(schedKey(want, id), []byte{}); err != nil {
			return out, err
		}
	}
	rec.Next = want
	if !pending {
		out.final = true
		if rec.Purge == 0 { // not final before: its body is still here
			if err := tx.Bucket(bBodies).Delete(k); err != nil {
				return out, err
			}
			if rec.Spool != "" {
				if err := tx.Bucket(bSpool).Delete([]byte(rec.Spool)); err != nil {
					return out, err
				}
				out.spool, rec.Spool = rec.Spool, ""
			}
		}
		if rec.state() != StateFailed {
			return out, tx.Bucket(bMessages).Delete(k)
		}
		if rec.Purge == 0 {
			rec.Purge = now.Add(keep).UnixNano()
			if err := tx.Bucket(bPurge).Put(schedKey(rec.Purge, id), []byte{}); err != nil {
				return out, err
			}
		}
	}
	data, err := marshalRecord(rec)
	if err != nil {
		return out, err
	}
	return out, tx.Bucket(bMessages).Put(k, data)
}

// remove deletes a message and every index entry of it; the caller removes
// the returned spool file after the commit.
func remove(tx *bolt.Tx, id uint64, rec *record) (spool string, err error) {
	k := idKey(id)
	for _, b := range [][]byte{bMessages, bBodies} {
		if err := tx.Bucket(b).Delete(k); err != nil {
			return "", err
		}
	}
	if rec.Next != 0 {
		if err := tx.Bucket(bSchedule).Delete(schedKey(rec.Next, id)); err != nil {
			return "", err
		}
	}
	if rec.Purge != 0 {
		if err := tx.Bucket(bPurge).Delete(schedKey(rec.Purge, id)); err != nil {
			return "", err
		}
	}
	if rec.Spool != "" {
		if err := tx.Bucket(bSpool).Delete([]byte(rec.Spool)); err != nil {
			return "", err
		}
	}
	return rec.Spool, nil
}

// The writes below are the only ones that change what the schedule holds:
// each stages the record's new summary for the in-memory index
// (lanes.go), which Queue.update applies once the transaction has
// committed. They run inside write transactions only.

// insertRec is insert, staging the new message's summary sum.
func (q *Queue) insertRec(tx *bolt.Tx, data, inline []byte, spool string, next int64, sum *summary) (uint64, error) {
	id, err := insert(tx, data, inline, spool, next)
	if err == nil {
		q.stage = append(q.stage, staged{id, sum})
	}
	return id, err
}

// saveRec is save, staging rec's summary.
func (q *Queue) saveRec(tx *bolt.Tx, id uint64, rec *record, now time.Time) (saved, error) {
	sv, err := save(tx, id, rec, now, q.keep)
	if err == nil {
		q.stage = append(q.stage, staged{id, summarize(rec)})
	}
	return sv, err
}

// removeRec is remove, taking the message out of the index.
func (q *Queue) removeRec(tx *bolt.Tx, id uint64, rec *record) (string, error) {
	spool, err := remove(tx, id, rec)
	if err == nil {
		q.unschedule(id)
	}
	return spool, err
}

// unschedule takes message id out of the index (a record gone or
// unreadable).
func (q *Queue) unschedule(id uint64) { q.stage = append(q.stage, staged{id, nil}) }

// update runs fn in a write transaction and, once it has committed,
// applies the index changes it staged. writeMu makes the application
// follow commit order: bbolt serializes the transactions, not what
// happens after them.
func (q *Queue) update(fn func(*bolt.Tx) error) error {
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	err := q.db.Update(func(tx *bolt.Tx) error {
		clear(q.stage)
		q.stage = q.stage[:0]
		return fn(tx)
	})
	if err == nil && len(q.stage) > 0 {
		q.ixMu.Lock()
		for _, s := range q.stage {
			q.ix.set(s.id, s.sum)
			if s.sum == nil {
				delete(q.forced, s.id) // left the schedule: nothing to force
			}
		}
		q.ixMu.Unlock()
	}
	clear(q.stage)
	q.stage = q.stage[:0]
	return err
}

package queue

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Operations for administrators. Each is one committed transaction (Bounce
// adds its DSN to that same transaction); none touches the network. A
// message with an attempt in flight can be changed: the attempt finishes,
// and recording its results respects what the operator did (see record).

// lookup parses a printable ID.
func lookup(id string) (uint64, error) {
	n, err := parseID(id)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return n, nil
}

// Hold takes a message out of the schedule: it is not leased until
// Release. An attempt already in flight finishes and is recorded; the
// message stays held. Holding a held message does nothing.
func (q *Queue) Hold(id string) error {
	n, err := lookup(id)
	if err != nil {
		return err
	}
	_, err = q.modify(n, false, q.clock(), func(rec *record) error {
		if _, pending := rec.nextDue(); !pending {
			return ErrFinal
		}
		if rec.Held {
			return errNoChange
		}
		rec.Held = true
		return nil
	})
	if err == nil {
		q.log.Info("held", slog.String("id", id))
	}
	return err
}

// Release puts a held message back in the schedule with its pending
// recipients due now. A message that is not held gives ErrNotHeld.
func (q *Queue) Release(id string) error {
	n, err := lookup(id)
	if err != nil {
		return err
	}
	now := q.clock()
	flying := q.isInflight(n)
	out, err := q.modify(n, false, now, func(rec *record) error {
		if !rec.Held {
			return fmt.Errorf("%w: %s", ErrNotHeld, id)
		}
		rec.Held = false
		dueNow(rec, now, flying)
		return nil
	})
	if err == nil && out != nil {
		q.force(n)
		q.log.Info("released", slog.String("id", id))
		q.notify()
	}
	return err
}

// Retry makes the pending recipients of a message due now and wakes the
// dispatcher. A held message is left alone (ErrHeld: Release it); a
// recipient whose attempt is in flight keeps the schedule its result will
// set.
func (q *Queue) Retry(id string) error {
	n, err := lookup(id)
	if err != nil {
		return err
	}
	now := q.clock()
	flying := q.isInflight(n)
	_, err = q.modify(n, false, now, func(rec *record) error {
		if _, pending := rec.nextDue(); !pending {
			return ErrFinal
		}
		if rec.Held {
			return ErrHeld
		}
		if !dueNow(rec, now, flying) {
			return errNoChange
		}
		return nil
	})
	if err == nil {
		q.force(n)
		q.log.Info("retry requested", slog.String("id", id))
		q.notify()
	}
	return err
}

// force lets the next attempt of each message through a suspension of its
// destination (Dest.Retry): an operator asked for it now.
func (q *Queue) force(ids ...uint64) {
	q.ixMu.Lock()
	defer q.ixMu.Unlock()
	for _, id := range ids {
		q.forced[id] = true
	}
}

// dueNow moves every pending recipient due later to now, except those in
// flight, and reports whether it moved any.
func dueNow(rec *record, now time.Time, flying bool) bool {
	moved := false
	for i := range rec.Rcpts {
		r := &rec.Rcpts[i]
		if r.State.pending() && !(flying && r.leased) && r.NextAttempt.After(now) {
			r.NextAttempt = now
			moved = true
		}
	}
	return moved
}

// retryChunk bounds the records rewritten per transaction by RetryAll, so
// that a large queue does not make one huge transaction.
const retryChunk = 1000

// RetryAll makes every message that is not held and has pending recipients
// due now, and returns how many messages that is (those already due
// included). Messages with an attempt in flight are left to it.
func (q *Queue) RetryAll() (int, error) {
	now := q.clock()
	// Collect first (every scheduled message is neither held nor final),
	// then rewrite in chunks; an entry that moved meanwhile is skipped.
	var keys [][]byte
	var ids []uint64
	total := 0
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return 0, ErrClosed
	}
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bSchedule).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if q.isInflight(schedID(k)) {
				continue
			}
			total++
			ids = append(ids, schedID(k))
			if schedTime(k) > now.UnixNano() {
				keys = append(keys, bytes.Clone(k))
			}
		}
		return nil
	})
	q.dbMu.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("queue: retry all: %w", err)
	}
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), retryChunk)]
		keys = keys[len(chunk):]
		q.dbMu.RLock()
		if q.closed {
			q.dbMu.RUnlock()
			return 0, ErrClosed
		}
		err := q.update(func(tx *bolt.Tx) error {
			sched, msgs := tx.Bucket(bSchedule), tx.Bucket(bMessages)
			for _, k := range chunk {
				if sched.Get(k) == nil {
					continue
				}
				id := schedID(k)
				data := msgs.Get(idKey(id))
				if data == nil {
					continue
				}
				rec, err := decodeRecord(data)
				if err != nil {
					continue // lease deals with it
				}
				if !dueNow(rec, now, false) {
					continue
				}
				if _, err := q.saveRec(tx, id, rec, now); err != nil {
					return err
				}
			}
			return nil
		})
		q.dbMu.RUnlock()
		if err != nil {
			q.checkDB(err)
			return 0, fmt.Errorf("queue: retry all: %w", err)
		}
	}
	q.force(ids...)
	q.log.Info("retry all requested", slog.Int("messages", total))
	q.notify()
	return total, nil
}

// Delete removes a message, its body and its record, failed or not,
// without any DSN. An attempt in flight finishes and its results are
// dropped.
func (q *Queue) Delete(id string) error {
	n, err := lookup(id)
	if err != nil {
		return err
	}
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return ErrClosed
	}
	var (
		state State
		spool string
	)
	err = q.update(func(tx *bolt.Tx) error {
		data := tx.Bucket(bMessages).Get(idKey(n))
		if data == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		rec, err := decodeRecord(data)
		if err != nil {
			// Unreadable: remove what the key names, so an operator
			// can get rid of it.
			rec = &record{}
		}
		state = rec.state()
		spool, err = q.removeRec(tx, n, rec)
		return err
	})
	q.dbMu.RUnlock()
	if err != nil {
		q.checkDB(err)
		return err
	}
	q.count(map[State]int{state: -1})
	q.removeSpool(spool, id)
	q.log.Info("deleted", slog.String("id", id))
	return nil
}

// Bounce fails every pending recipient of a message now, with the
// diagnostic "5.0.0 message bounced by the administrator", and queues the
// DSN the sender asked for, as a failure from a remote would. A held
// message can be bounced. Results of an attempt in flight are dropped for
// the recipients bounced.
func (q *Queue) Bounce(id string) error {
	n, err := lookup(id)
	if err != nil {
		return err
	}
	now := q.clock()
	count := 0
	out, err := q.modify(n, false, now, func(rec *record) error {
		count = 0
		for i := range rec.Rcpts {
			r := &rec.Rcpts[i]
			if r.State.pending() {
				r.State, r.LastReply, r.RemoteMTA = StateFailed, adminBounce, ""
				r.leased = false
				count++
			}
		}
		if count == 0 {
			return ErrFinal
		}
		rec.Held = false
		return nil
	})
	if err != nil {
		return err
	}
	q.log.Info("bounced by the administrator", slog.String("id", id), slog.Int("recipients", count))
	q.observe(0, 0, count)
	q.final(n, out.after)
	return nil
}

// purgeChunk bounds the records purged per transaction.
const purgeChunk = 1000

// purge deletes failed records whose KeepFailed has passed. The dispatcher
// calls it on every round; with nothing to purge it costs one read
// transaction that looks at one key.
func (q *Queue) purge(now time.Time) {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return
	}
	due, keysDue, tracesToo := false, false, false
	q.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bPurge).Cursor().First()
		due = k != nil && schedTime(k) <= now.UnixNano()
		k, _ = tx.Bucket(bIdempotencyExp).Cursor().First()
		keysDue = k != nil && schedTime(k) <= now.UnixNano()
		tracesToo = tracesDue(tx, now)
		return nil
	})
	if keysDue || tracesToo {
		if err := q.db.Update(func(tx *bolt.Tx) error {
			if err := purgeTraces(tx, now); err != nil {
				return err
			}
			return purgeIdempotency(tx, now)
		}); err != nil {
			q.log.Error("purge idempotency keys", slog.Any("error", err))
			go q.checkDB(err)
			return
		}
	}
	if !due {
		return
	}
	purged := 0
	err := q.update(func(tx *bolt.Tx) error {
		purged = 0
		idx, msgs := tx.Bucket(bPurge), tx.Bucket(bMessages)
		var keys [][]byte
		c := idx.Cursor()
		for k, _ := c.First(); k != nil && schedTime(k) <= now.UnixNano() && len(keys) < purgeChunk; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := idx.Delete(k); err != nil {
				return err
			}
			id := schedID(k)
			data := msgs.Get(idKey(id))
			if data == nil {
				continue
			}
			// Only a record that still points at this entry: one an
			// operator changed would have moved it.
			if rec, err := decodeRecord(data); err != nil || rec.Purge != schedTime(k) {
				continue
			}
			if err := msgs.Delete(idKey(id)); err != nil {
				return err
			}
			purged++
		}
		return nil
	})
	if err != nil {
		q.log.Error("purge failed records", slog.Any("error", err))
		go q.checkDB(err) // needs dbMu exclusively; we hold it shared
		return
	}
	if purged > 0 {
		q.count(map[State]int{StateFailed: -purged})
		q.log.Info("purged failed records", slog.Int("messages", purged))
	}
}

// checkDB reopens the bbolt file after an error that leaves the handle
// unusable. bbolt v1.5.0 rolls a failed commit back by itself (Tx.Commit
// calls tx.rollback, which reloads the freelist from disk), so a write
// error such as ENOSPC leaves the handle working; but if growing the memory
// map fails, DB.mmap unmaps the file and every later transaction returns
// ErrInvalidMapping until the file is opened again. A handle closed under
// the queue (ErrDatabaseNotOpen) is treated the same. The caller must not
// hold dbMu.
func (q *Queue) checkDB(err error) {
	if !errors.Is(err, bolt.ErrInvalidMapping) && !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return
	}
	q.dbMu.Lock()
	defer q.dbMu.Unlock()
	if q.closed {
		return
	}
	// Another caller may have reopened it already.
	probe := q.db.View(func(*bolt.Tx) error { return nil })
	if probe == nil {
		return
	}
	q.log.Error("queue file unusable, reopening", slog.String("path", q.path), slog.Any("error", err))
	q.db.Close() // releases the file lock; its error says nothing new
	db, oerr := openDB(q.path)
	if oerr != nil {
		// Keep the dead handle: every call fails cleanly with its
		// error, and the next failure tries again.
		q.log.Error("reopen queue file", slog.Any("error", oerr))
		return
	}
	q.db = db
}

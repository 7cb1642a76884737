package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/dsn"
	"postern/queue/reply"
)

// This file turns state changes into delivery status notifications and
// commits the two together (see "Bounces" in doc.go).

var (
	// errNoChange, from a change function, leaves the message as it was.
	errNoChange = errors.New("queue: nothing to change")
	// errStale means the message changed between composing its DSN and
	// the commit, so the DSN composed may be the wrong one: compose again.
	errStale = errors.New("queue: message changed while its DSN was composed")
)

// maxStale bounds how often modify composes again. Only a concurrent
// change to the same message (a sibling delivery, an operator) makes a
// try stale; several in a row mean something is wrong.
const maxStale = 5

// The enhanced status codes the queue decides itself (RFC 3463).
var (
	statusExpired = reply.Enhanced{Class: 5, Subject: 4, Detail: 7} // X.4.7 delivery time expired
	statusAdmin   = reply.Enhanced{Class: 5, Subject: 0, Detail: 0} // X.0.0 other undefined status
)

// adminBounce is the LastReply, and the DSN's status and diagnostic, of a
// recipient failed by Bounce: the queue's words, with no reply code.
var adminBounce = reply.Reply{Enhanced: statusAdmin, Text: "message bounced by the administrator"}

// notify is a recipient's NOTIFY parameter (RFC 3461 §4.1), decoded.
type notify struct{ given, success, failure, delay bool }

func (r *record) notify(i int) notify {
	var n notify
	n.given, n.success, n.failure, n.delay = r.Env.Notify(i)
	return n
}

// Notify reads recipient i's NOTIFY parameter (RFC 3461 §4.1): whether
// one was given, and what it asks to be told of. NEVER is given and asks
// for nothing.
func (e *Envelope) Notify(i int) (given, success, failure, delay bool) {
	if i >= len(e.DSN) {
		return
	}
	for _, v := range e.DSN[i].Notify {
		given = true
		switch strings.ToUpper(v) {
		case "SUCCESS":
			success = true
		case "FAILURE":
			failure = true
		case "DELAY":
			delay = true
		}
	}
	return
}

// Absent NOTIFY means "FAILURE" and, at the MTA's choice, "DELAY"
// (RFC 3461 §4.1); postern reports both.
func (n notify) wantFailure() bool { return !n.given || n.failure }
func (n notify) wantDelay() bool   { return !n.given || n.delay }
func (n notify) wantSuccess() bool { return n.success }

// planItem is one recipient to report on in a DSN.
type planItem struct {
	idx    int
	action dsn.Action
}

// plan decides what a message's DSN, if any, reports after a change, and
// marks those recipients in rec as reported (or warned). It depends only
// on rec, now and the options, so running it again on the same record
// gives the same plan: modify relies on that.
//
// While a recipient of the message is leased (its attempt has not been
// recorded yet), plan waits, so that recipients failing in the same lease
// at different domains share one DSN: the last result recorded reports
// them all. A recipient whose lease was lost in a crash holds reports back
// until it is leased and recorded again (one backoff at most).
func (q *Queue) plan(rec *record, now time.Time) []planItem {
	for _, r := range rec.Rcpts {
		if r.leased && r.State.pending() {
			return nil
		}
	}
	// Never report on a message with the null reverse-path (RFC 5321
	// §4.5.5, RFC 3461 §6.2): that is how bounce loops are avoided.
	null := rec.Env.From == ""
	warnDue := q.warnAge > 0 && now.Sub(rec.Created) >= q.warnAge
	var items []planItem
	for i := range rec.Rcpts {
		r := &rec.Rcpts[i]
		n := rec.notify(i)
		switch {
		case r.State == StateFailed && !r.reported:
			r.reported = true
			if !null && n.wantFailure() {
				items = append(items, planItem{i, dsn.Failed})
			}
		case r.State == StateDelivered && !r.reported:
			r.reported = true
			// A server that took over DSN duty reports success itself
			// (RFC 3461 §6.2.2.1); otherwise "relayed" tells the
			// sender no further report will come (§6.2.2.2).
			if !null && n.wantSuccess() && !r.remoteDSN {
				items = append(items, planItem{i, dsn.Relayed})
			}
		case r.State == StateDeferred && !r.warned && warnDue && !null && n.wantDelay():
			r.warned = true
			items = append(items, planItem{i, dsn.Delayed})
		}
	}
	return items
}

// pendingDSN is a composed DSN waiting for its commit.
type pendingDSN struct {
	data   []byte // the record
	inline []byte // the body, or nil if spooled
	spool  string // spool file name, "" if inline
	next   int64
	sum    *summary // for the in-memory schedule
}

// discard removes the spool file of a DSN that was not committed.
func (q *Queue) discard(d *pendingDSN) {
	if d != nil && d.spool != "" {
		os.Remove(filepath.Join(q.spoolDir, d.spool))
	}
}

// composeDSN writes the DSN for items of rec (message id) and stores it as
// a new message would be stored, short of the commit: in memory, or in a
// synced spool file when it is large (RET=FULL of a large message). It
// reads the original outside any transaction: inline is the body copied out
// of bbolt, or nil when it is in rec.Spool.
func (q *Queue) composeDSN(id uint64, rec *record, items []planItem, inline []byte, now time.Time) (*pendingDSN, error) {
	rep := &dsn.Report{
		ReportingMTA: q.hostname,
		Sender:       rec.Env.From,
		Date:         now,
		MessageID:    fmt.Sprintf("%s.%d.dsn@%s", formatID(id), now.UnixNano(), q.hostname),
		EnvelopeID:   rec.Env.EnvID,
		ArrivalDate:  rec.Created,
	}
	// RFC 8689 §5: the bounce of a REQUIRETLS message must not carry
	// what the sender asked to protect over a path that may not protect
	// it. Its DSN returns the header section only, whatever RET said,
	// and goes out with REQUIRETLS itself (below).
	if strings.EqualFold(rec.Env.Ret, "FULL") && !rec.Env.RequireTLS {
		rep.Return = dsn.Full
	}
	for _, it := range items {
		r := rec.Rcpts[it.idx]
		dr := dsn.Recipient{
			FinalRecipient: r.Address,
			Action:         it.action,
			RemoteMTA:      r.RemoteMTA,
			Reply:          r.LastReply,
		}
		if it.idx < len(rec.Env.DSN) {
			dr.OriginalRecipient = rec.Env.DSN[it.idx].ORcpt
		}
		if r.Attempts > 0 {
			dr.LastAttempt = r.LastAttempt
		}
		if it.action == dsn.Delayed {
			dr.WillRetryUntil = rec.Created.Add(q.retry.Lifetime)
		}
		rep.Recipients = append(rep.Recipients, dr)
	}
	// The original as it is delivered: a spooled one with its prefix
	// (the Received field and DKIM signatures), as an inline one has.
	f, err := q.body(rec, inline).Open()
	// A missing file is not taken for a deleted message: if the message
	// was deleted meanwhile, modify finds that out when it commits; if
	// its file is gone for another reason, a DSN without the original
	// still beats retrying the results forever.
	if err != nil {
		q.log.Warn("DSN without the original: cannot open it", slog.String("id", formatID(id)), slog.Any("error", err))
	} else {
		defer f.Close()
		rep.Original = f
	}
	body, spool, prefix, size, err := q.storeDSN(rep)
	if err != nil && rep.Original != nil {
		// A DSN that cannot say everything still beats none, and
		// a failure here would otherwise drop the results and
		// repeat the attempt: try once more without the original
		// (which may also make it small enough for memory).
		q.log.Warn("DSN without the original", slog.String("id", formatID(id)), slog.Any("error", err))
		rep.Original = nil
		body, spool, prefix, size, err = q.storeDSN(rep)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: compose DSN: %w", err)
	}
	drec := &record{
		Env:     Envelope{RequireTLS: rec.Env.RequireTLS},
		Created: now,
		Size:    size,
		Spool:   spool,
		Prefix:  prefix,
		Next:    now.UnixNano(),
		Rcpts:   []Recipient{{Address: rec.Env.From, State: StateQueued, NextAttempt: now}},
	}
	data, err := marshalRecord(drec)
	if err != nil {
		d := &pendingDSN{spool: spool}
		q.discard(d)
		return nil, err
	}
	return &pendingDSN{data: data, inline: body, spool: spool, next: drec.Next, sum: summarize(drec)}, nil
}

// Signer signs a message the queue composes itself: a DSN. In postern it
// is DKIM (cmd/postern wires the keys of the hostname's domain in), so that
// a bounce from MAILER-DAEMON@Hostname passes DMARC like the mail of the
// domain it comes from.
//
// Sign reads the whole message (CRLF line ends, as it will be delivered)
// and returns the header fields to put before it, each ending in CRLF, or
// nil to send it unsigned. It may stop reading early when it signs
// nothing. It is called outside any transaction, once per DSN composed
// (again if the DSN is composed again), from delivery workers at once: it
// must be safe for concurrent use. An error sends the DSN unsigned, with a
// warning in the log: a notice the sender cannot authenticate still beats
// none, and failing would hold up the results it reports.
type Signer interface {
	Sign(msg io.Reader) ([]byte, error)
}

// storeDSN composes rep straight into store, which keeps a small DSN in
// memory and spools a large one, and through the signer, if any, at the
// same time: the DSN is read once, never whole into memory when large.
// inline includes the signature; a spooled DSN returns it as prefix, for
// the record (as EnqueuePrefixed keeps one). The goroutines are waited
// for, so none outlives the file it reads.
func (q *Queue) storeDSN(rep *dsn.Report) (inline []byte, spool string, prefix []byte, size int64, err error) {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(dsn.Compose(pw, rep))
	}()
	var body io.Reader = pr
	var sig *signing
	if q.signer != nil {
		sig = startSigning(q.signer)
		body = io.TeeReader(pr, sig.w)
	}
	inline, spool, size, err = q.store(body)
	pr.Close() // unblocks Compose if store stopped early
	<-done
	if sig == nil {
		return inline, spool, nil, size, err
	}
	prefix, serr := sig.finish(err)
	if err != nil {
		return nil, "", nil, 0, err
	}
	if serr != nil {
		q.log.Warn("DSN sent unsigned: signing failed", slog.Any("error", serr))
		prefix = nil
	}
	size += int64(len(prefix))
	if spool == "" && len(prefix) > 0 {
		inline = append(prefix[:len(prefix):len(prefix)], inline...)
		prefix = nil
	}
	return inline, spool, prefix, size, nil
}

// signing is a Signer reading, in a goroutine of its own, what is written
// to w.
type signing struct {
	w    *io.PipeWriter
	done chan struct{}
	sig  []byte
	err  error
}

func startSigning(s Signer) *signing {
	r, w := io.Pipe()
	g := &signing{w: w, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		g.sig, g.err = s.Sign(r)
		// A signer that stopped early must not block the writer: read
		// the rest.
		io.Copy(io.Discard, r)
		r.Close()
	}()
	return g
}

// finish ends the input (with readErr, if reading the message failed) and
// returns the signature.
func (g *signing) finish(readErr error) ([]byte, error) {
	g.w.CloseWithError(readErr) // nil: EOF
	<-g.done
	return g.sig, g.err
}

// changed is what one committed modify did.
type changed struct {
	before, after *record // after holds the record even if it was deleted
	saved         saved
	dsn           uint64 // id of the DSN queued, 0 if none
	reported      []planItem
	events        int // event deliveries recorded
}

// modify is the one read-modify-write path for a message whose change may
// call for a DSN. change edits the record; it may run several times on
// fresh copies, so it must have no side effects; errNoChange from it leaves
// the message alone (modify then returns nil, nil).
//
// The order is what makes the DSN exactly-once (see doc.go, "Bounces"):
//
//  1. change and plan run on a snapshot in a read transaction, and the
//     DSN, if one is due, is composed and stored (in memory or a synced
//     spool file) outside any transaction;
//  2. one write transaction runs change and plan again on the current
//     record; if the plan differs from the one composed (a concurrent
//     change), nothing is written and modify starts over; otherwise the
//     record, with its recipients marked as reported, and the DSN are
//     committed together.
//
// Step 2 is tried once first on its own, predicting no DSN: when none is
// due, which is the common case, that is the whole of modify, one decoding
// of the record in one transaction; when one is, nothing is written and
// the two steps follow.
//
// batch shares the commit with other writers, as a lazy writer
// (Queue.batchLazy): record, for the results of attempts, is its one user.
func (q *Queue) modify(id uint64, batch bool, now time.Time, change func(*record) error) (*changed, error) {
	// Optimistic first: most changes (a delivery without NOTIFY=SUCCESS,
	// a deferral) call for no DSN, and step 2 finds that out by itself,
	// without the read transaction and the second decoding of step 1.
	out, err := q.commitChange(id, batch, now, change, nil, nil)
	if !errors.Is(err, errStale) {
		return out, err
	}
	for range maxStale {
		out, err := q.modifyOnce(id, batch, now, change)
		if !errors.Is(err, errStale) {
			return out, err
		}
	}
	return nil, fmt.Errorf("queue: message %s: %w", formatID(id), errStale)
}

// getRecord reads and decodes message id in tx.
func getRecord(tx *bolt.Tx, id uint64) (*record, error) {
	data := tx.Bucket(bMessages).Get(idKey(id))
	if data == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, formatID(id))
	}
	rec, err := decodeRecord(data)
	if err != nil {
		return nil, fmt.Errorf("queue: message %s: %w", formatID(id), err)
	}
	return rec, nil
}

// modifyOnce is steps 1 and 2 of modify.
func (q *Queue) modifyOnce(id uint64, batch bool, now time.Time, change func(*record) error) (*changed, error) {
	// 1. Predict.
	var (
		snap   *record
		items  []planItem
		inline []byte
	)
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return nil, ErrClosed
	}
	err := q.db.View(func(tx *bolt.Tx) error {
		rec, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if err := change(rec); err != nil {
			return err
		}
		snap, items = rec, q.plan(rec, now)
		if len(items) > 0 && rec.Spool == "" {
			inline = bytes.Clone(tx.Bucket(bBodies).Get(idKey(id)))
		}
		return nil
	})
	q.dbMu.RUnlock()
	if errors.Is(err, errNoChange) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var d *pendingDSN
	if len(items) > 0 {
		if d, err = q.composeDSN(id, snap, items, inline, now); err != nil {
			return nil, err
		}
	}
	// 2. Commit.
	return q.commitChange(id, batch, now, change, items, d)
}

// commitChange is step 2 of modify: change and plan on the current record,
// and the commit of the record and of d, the DSN composed for items, if
// the plan is still items; errStale if it is not.
//
// What stops it before anything is written (the message is gone, change
// refuses, the plan changed) does not fail a shared transaction: the
// function returns errUnchanged with nothing written, so the other writers in the
// batch commit as they are instead of being rolled back and run again one
// by one (see batch), and the reason is returned here afterwards.
func (q *Queue) commitChange(id uint64, batch bool, now time.Time, change func(*record) error, items []planItem, d *pendingDSN) (*changed, error) {
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		q.discard(d)
		return nil, ErrClosed
	}
	var (
		out  *changed
		soft error // the reason nothing was written
	)
	stop := func(err error) error {
		soft = err
		if batch {
			return errUnchanged
		}
		return err // a transaction of its own: roll back, no fsync
	}
	commit := func(tx *bolt.Tx) error {
		out, soft = nil, nil // may run more than once
		rec, err := getRecord(tx, id)
		if err != nil {
			return stop(err)
		}
		before := rec.clone()
		if err := change(rec); err != nil {
			return stop(err)
		}
		if got := q.plan(rec, now); !slices.Equal(got, items) {
			return stop(errStale)
		}
		sv, err := q.saveRec(tx, id, rec, now)
		if err != nil {
			return err
		}
		if err := q.suppressFailures(tx, id, before, rec, now); err != nil {
			return err
		}
		if err := q.keepTrace(tx, id, rec, sv, now); err != nil {
			return err
		}
		o := &changed{before: before, after: rec, saved: sv, reported: items}
		if len(q.subs) > 0 {
			if o.events, err = q.emit(tx, changeEvents(id, before, rec, items, now)); err != nil {
				return err
			}
		}
		if d != nil {
			if o.dsn, err = q.insertRec(tx, d.data, d.inline, d.spool, d.next, d.sum); err != nil {
				return err
			}
		}
		out = o
		return nil
	}
	var err error
	if batch {
		// Only the results of attempts come this way: see batchLazy.
		err = q.batchLazy(commit)
	} else {
		err = q.update(commit)
	}
	q.dbMu.RUnlock()
	switch {
	case err == nil && soft == nil:
		q.committed(id, out)
		return out, nil
	case soft != nil:
		err = soft
	default:
		q.checkDB(err)
	}
	q.discard(d)
	if errors.Is(err, errNoChange) {
		return nil, nil
	}
	return nil, err
}

// committed does what follows a commit by modify: counters, the spool file
// of a message that became final, the DSN's log line and wake-up.
func (q *Queue) committed(id uint64, out *changed) {
	// Built step by step: a literal with two equal keys keeps the last.
	delta := map[State]int{}
	delta[out.before.state()]--
	delta[out.after.state()]++
	if out.dsn != 0 {
		delta[StateQueued]++
	}
	q.count(delta)
	q.eventsRecorded(out.events)
	q.removeSpool(out.saved.spool, formatID(id))
	if out.dsn != 0 {
		var actions []string
		for _, it := range out.reported {
			actions = append(actions, out.after.Rcpts[it.idx].Address+"="+string(it.action))
		}
		q.log.Info("dsn queued", slog.String("id", formatID(id)), slog.String("dsn_id", formatID(out.dsn)),
			slog.String("to", out.after.Env.From), slog.Any("recipients", actions))
		q.obs.Bounced()
		q.notify()
	}
}

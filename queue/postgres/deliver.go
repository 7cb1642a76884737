package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue"
	"postern/queue/dsn"
	"postern/queue/reply"
)

// Start begins delivery: the dispatcher that leases due messages, the
// listener that hears other nodes' new work, the notifier that tells
// them of ours, and the purge of expired records.
func (q *Queue) Start() {
	if q.opts.Deliverer == nil {
		panic("postgres queue: Start without a Deliverer")
	}
	if !q.started.CompareAndSwap(false, true) {
		return
	}
	q.wg.Add(4)
	go q.dispatch()
	go q.listen()
	go q.notifier()
	go q.purger()
}

// leased is one message this node holds.
type leased struct {
	row   *row
	token int64
	due   []int  // indexes of the recipients to attempt
	data  []byte // the body, when the hand-off has it already
}

// dispatch leases due messages while workers are free, and sleeps until
// the next due time, a kick (local work, a NOTIFY from another node, a
// worker done) or the stop.
func (q *Queue) dispatch() {
	defer q.wg.Done()
	for {
		select {
		case <-q.stopping:
			return
		default:
		}
		wait := 30 * time.Second
		free := int64(q.opts.Workers) - q.busy.Load()
		if free > 0 {
			jobs, next, err := q.leaseDue(int(min(free, 128)))
			if err != nil {
				q.log.Warn("lease", slog.Any("error", err))
				wait = time.Second
			} else {
				for _, j := range jobs {
					q.busy.Add(1)
					q.wg.Add(1)
					go q.work(j)
				}
				if len(jobs) == int(min(free, 128)) {
					continue // there may be more
				}
				if !next.IsZero() {
					wait = min(wait, max(time.Until(next), time.Millisecond))
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-q.stopping:
			t.Stop()
			return
		case <-q.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// leaseDue takes up to limit due messages: FOR UPDATE SKIP LOCKED over
// the due index, so that nodes leasing at once take different messages
// without waiting for each other. Each message's due time moves to the
// end of the lease, its due recipients count an attempt and get the time
// of the retry that follows a temporary failure, all in the lease's
// transaction: a node that dies now leaves messages that come due again
// when the lease ends. It also returns when the next message not taken
// comes due.
func (q *Queue) leaseDue(limit int) (jobs []leased, next time.Time, err error) {
	ctx, cancel := context.WithTimeout(q.runCtx, 30*time.Second)
	defer cancel()
	now := q.clock()
	err = pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		jobs = jobs[:0]
		rows, err := tx.Query(ctx, `SELECT `+rowCols+` FROM postern_messages
			WHERE due IS NOT NULL AND due <= $1 AND NOT held ORDER BY due LIMIT $2 FOR UPDATE SKIP LOCKED`, now, limit)
		if err != nil {
			return err
		}
		var all []*row
		for rows.Next() {
			m, err := scanRow(rows)
			if err != nil {
				rows.Close()
				return err
			}
			all = append(all, m)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		batch := &pgx.Batch{}
		for _, m := range all {
			j := leased{row: m, token: rand.Int64()}
			for i := range m.rcpts {
				r := &m.rcpts[i]
				if !pending(r.State) || r.NextAttempt.After(now) {
					continue
				}
				r.Attempts++
				r.LastAttempt = now
				r.NextAttempt = now.Add(q.retry.Backoff(r.Attempts, rand.Float64()))
				j.due = append(j.due, i)
			}
			if len(j.due) == 0 {
				// Taken over from a dead node whose attempts have not
				// reached their backoff yet: due again then.
				d, ok := nextDue(m.rcpts)
				var due any
				if ok && !m.held {
					due = d
				}
				batch.Queue(`UPDATE postern_messages SET due = $2, lease_owner = NULL, lease_token = NULL WHERE id = $1`, m.id, due)
				continue
			}
			rc, err := json.Marshal(m.rcpts)
			if err != nil {
				return err
			}
			m.token = &j.token
			batch.Queue(`UPDATE postern_messages SET rcpts = $2, state = $3, due = $4, lease_owner = $5, lease_token = $6 WHERE id = $1`,
				m.id, rc, messageState(m.rcpts, m.held), now.Add(q.lease), q.node, j.token)
			jobs = append(jobs, j)
		}
		if batch.Len() > 0 {
			if err := tx.SendBatch(ctx, batch).Close(); err != nil {
				return err
			}
		}
		if len(all) < limit {
			var n *time.Time
			if err := tx.QueryRow(ctx, `SELECT min(due) FROM postern_messages WHERE due IS NOT NULL AND due > $1`, now).Scan(&n); err != nil {
				return err
			}
			if n != nil {
				next = *n
			}
		}
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return jobs, next, nil
}

// body is a message's body, read from the database once, at the first
// Open.
type body struct {
	q    *Queue
	id   int64
	size int64
	once sync.Once
	data []byte
	err  error
}

func (b *body) Size() int64 { return b.size }

func (b *body) Open() (io.ReadCloser, error) {
	b.once.Do(func() {
		err := b.q.pool.QueryRow(b.q.runCtx, `SELECT body FROM postern_messages WHERE id = $1`, b.id).Scan(&b.data)
		if err != nil {
			b.err = fmt.Errorf("queue: read body of %s: %w", formatID(b.id), err)
		} else if b.data == nil {
			b.err = fmt.Errorf("queue: message %s has no body", formatID(b.id))
		}
	})
	if b.err != nil {
		return nil, b.err
	}
	return io.NopCloser(bytes.NewReader(b.data)), nil
}

// work delivers one leased message: its due recipients grouped by
// domain, each group an attempt of its own (at once), while the lease is
// renewed; then it records every result in one transaction.
func (q *Queue) work(j leased) {
	defer q.wg.Done()
	// The dispatcher needs to look again only when this frees the
	// node's last worker (it may have stopped leasing for want of one),
	// or when the message stays queued with a new due time. Not after a
	// message delivered in full: at one session, that look was a lease
	// query and a transaction per message for nothing.
	wake := true
	defer func() {
		if q.busy.Add(-1) == int64(q.opts.Workers)-1 || wake {
			q.kick()
		}
	}()
	m := j.row
	stopRenew := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		q.renew(j, stopRenew)
	}()
	b := &body{q: q, id: m.id, size: m.size}
	if j.data != nil {
		b.once.Do(func() { b.data = j.data })
	}
	groups := map[string][]int{}
	var order []string
	for _, i := range j.due {
		d := domainOf(m.rcpts[i].Address)
		if groups[d] == nil {
			order = append(order, d)
		}
		groups[d] = append(groups[d], i)
	}
	results := make([]queue.Result, len(m.rcpts))
	skipped := map[int]queue.Admission{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, d := range order {
		idx := groups[d]
		adm := q.admit(m, d, idx)
		if !adm.Admitted() {
			for _, i := range idx {
				skipped[i] = adm
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer adm.Release()
			res := q.attempt(m, d, idx, b)
			mu.Lock()
			for n, i := range idx {
				results[i] = res[n]
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(stopRenew)
	<-renewed
	wake = !q.record(j, results, skipped)
}

// admitWait is how long a worker waits for its destination to have room
// (a connection of it coming free, its next rate slot) before it gives
// the message back with a short delay. Waiting, the message keeps its
// lease and the worker its slot: beyond a moment, that would hold up
// mail to other destinations.
const admitWait = 2 * time.Second

// admit asks the Gate for room at the destination, waiting up to
// admitWait; a suspended destination answers at once.
func (q *Queue) admit(m *row, domain string, idx []int) queue.Admission {
	if q.gate == nil {
		return queue.Admission{Release: func() {}}
	}
	d := queue.Dest{Domain: domain, Sender: domainOf(m.env.From), Attempt: m.rcpts[idx[0]].Attempts}
	deadline := time.Now().Add(admitWait)
	for {
		adm := q.gate.Admit(d, time.Now())
		left := time.Until(deadline)
		if adm.Admitted() || !adm.Suspended.IsZero() || left <= 0 {
			return adm
		}
		if !adm.Until.IsZero() {
			left = min(left, max(time.Until(adm.Until), time.Millisecond))
		}
		t := time.NewTimer(left)
		select {
		case <-adm.Wait: // nil: blocks, and the timer decides
		case <-t.C:
		case <-q.stopping:
			t.Stop()
			return adm
		}
		t.Stop()
	}
}

// attempt is one Deliver call; a panic or a short result list becomes
// temporary failures, never lost recipients.
func (q *Queue) attempt(m *row, domain string, idx []int, b *body) (results []queue.Result) {
	d := &queue.Delivery{ID: formatID(m.id), From: m.env.From, Domain: domain, Attempt: m.rcpts[idx[0]].Attempts,
		Created: m.created, Body: b, Ret: m.env.Ret, EnvID: m.env.EnvID,
		RequireTLS: m.env.RequireTLS, TLSOptional: m.env.TLSOptional}
	for _, i := range idx {
		d.Rcpts = append(d.Rcpts, m.rcpts[i].Address)
		if m.env.DSN != nil {
			var p queue.RcptDSN
			if i < len(m.env.DSN) {
				p = m.env.DSN[i]
			}
			d.DSN = append(d.DSN, p)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			q.log.Error("deliverer panicked", slog.String("id", d.ID), slog.Any("panic", r))
			results = nil
		}
		for len(results) < len(idx) {
			results = append(results, queue.Result{Outcome: queue.Temporary,
				Reply: reply.Reply{Enhanced: reply.Enhanced{Class: 4, Subject: 3}, Text: "internal error: no result from deliverer"}})
		}
		results = results[:len(idx)]
	}()
	if traced(&m.env) && q.opts.Bounces.ReturnPath != nil {
		d.ReturnPath = q.opts.Bounces.ReturnPath(d.ID, idx)
	}
	start := time.Now()
	results = q.opts.Deliverer.Deliver(q.runCtx, d)
	q.obs.AttemptDuration(time.Since(start))
	return results
}

// renew extends the lease every third of it until stop. A renewal that
// finds the lease gone (an operator deleted the message, or this node
// was too slow and another took it over) stops renewing: the results
// are then dropped at record.
func (q *Queue) renew(j leased, stop <-chan struct{}) {
	t := time.NewTicker(q.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(q.runCtx, q.lease/3)
		tag, err := q.pool.Exec(ctx, `UPDATE postern_messages SET due = $3 WHERE id = $1 AND lease_token = $2`,
			j.row.id, j.token, q.clock().Add(q.lease))
		cancel()
		if err != nil {
			q.log.Warn("lease renewal", slog.String("id", formatID(j.row.id)), slog.Any("error", err))
			continue
		}
		if tag.RowsAffected() == 0 {
			q.log.Warn("lease lost", slog.String("id", formatID(j.row.id)))
			return
		}
	}
}

// Status codes the queue gives itself (RFC 3463).
var (
	statusExpired = reply.Enhanced{Class: 5, Subject: 4, Detail: 7} // X.4.7 delivery time expired
	adminBounce   = reply.Reply{Enhanced: reply.Enhanced{Class: 5}, Text: "message bounced by the administrator"}
)

// apply turns one result into the recipient's new state, as bbolt's
// queue does: anything but Delivered and Permanent is temporary, and the
// first temporary failure after the retry lifetime is final.
func (q *Queue) apply(r *rcpt, res queue.Result, now, created time.Time) {
	r.LastReply, r.RemoteMTA = res.Reply, res.RemoteMTA
	switch {
	case res.Outcome == queue.Delivered:
		r.State = queue.StateDelivered
		r.RemoteDSN = res.RemoteDSN
	case res.Outcome == queue.Permanent:
		r.State = queue.StateFailed
	case now.Sub(created) > q.retry.Lifetime:
		r.State = queue.StateFailed
		r.LastReply = reply.Reply{Enhanced: statusExpired,
			Text: fmt.Sprintf("retry lifetime %v expired; last reply: %s", q.retry.Lifetime, res.Reply)}
	default:
		r.State = queue.StateDeferred
	}
}

// record commits the results of a leased message, if this node still
// holds its lease, with the DSN and suppressions they call for. A lost
// lease drops the results: the recipients are tried again (a delivered
// one may arrive twice; none is lost).
//
// It reports whether nothing the record wrote is due later: the message
// is final and no DSN was queued.
func (q *Queue) record(j leased, results []queue.Result, skipped map[int]queue.Admission) (done bool) {
	id := formatID(j.row.id)
	var counts [3]int
	var final, dsn bool
	for try := 0; ; try++ {
		var err error
		counts, final, dsn, err = q.recordOnce(j, results, skipped)
		if err == nil {
			break
		}
		if errors.Is(err, errLeaseLost) {
			q.log.Warn("results dropped: lease lost (deleted, or taken over by another node)", slog.String("id", id))
			return false
		}
		if try == 4 || q.runCtx.Err() != nil {
			// The lease stands and expires: the recipients are tried
			// again then.
			q.log.Error("record results", slog.String("id", id), slog.Any("error", err))
			return false
		}
		time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
	}
	if counts[0] > 0 {
		q.obs.Delivered(counts[0])
	}
	if counts[1] > 0 {
		q.obs.Deferred(counts[1])
	}
	if counts[2] > 0 {
		q.obs.Failed(counts[2])
	}
	if final {
		q.log.Info("final", slog.String("id", id))
	}
	// A DSN queued with the results is due now: the dispatcher must look
	// (this node's NOTIFY does not wake this node).
	return final && !dsn
}

var errLeaseLost = errors.New("lease lost")

// dsn says a DSN was queued with the results.
func (q *Queue) recordOnce(j leased, results []queue.Result, skipped map[int]queue.Admission) (counts [3]int, final, dsn bool, err error) {
	ctx, cancel := context.WithTimeout(q.runCtx, 30*time.Second)
	defer cancel()
	now := q.clock()
	var m *row
	err = pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		counts = [3]int{}
		var err error
		m, err = scanRow(tx.QueryRow(ctx, `SELECT `+rowCols+` FROM postern_messages WHERE id = $1 AND lease_token = $2 FOR UPDATE`,
			j.row.id, j.token))
		if errors.Is(err, pgx.ErrNoRows) {
			return errLeaseLost
		}
		if err != nil {
			return err
		}
		m.before = append([]rcpt(nil), m.rcpts...)
		m.attempted = map[int]bool{}
		for _, i := range j.due {
			r := &m.rcpts[i]
			if !pending(r.State) {
				continue // bounced by an operator meanwhile
			}
			if adm, ok := skipped[i]; ok {
				// Not attempted: the destination had no room. The
				// attempt is not counted.
				r.Attempts--
				until := adm.Until
				if until.IsZero() || until.Before(now) {
					until = now.Add(time.Second)
				}
				r.NextAttempt = until
				if !adm.Suspended.IsZero() {
					r.LastReply = adm.Suspended
				}
				continue
			}
			q.apply(r, results[i], now, m.created)
			m.attempted[i] = true
			line := []any{slog.String("id", formatID(m.id)), slog.String("rcpt", r.Address), slog.Int("attempt", r.Attempts),
				slog.String("remote", r.RemoteMTA), slog.Any("reply", r.LastReply)}
			switch r.State {
			case queue.StateDelivered:
				counts[0]++
				q.log.Info("delivered", line...)
			case queue.StateDeferred:
				counts[1]++
				q.log.Info("deferred", append(line, slog.Time("next_attempt", r.NextAttempt))...)
			case queue.StateFailed:
				counts[2]++
				q.log.Info("failed", line...)
			}
		}
		final, err = q.save(ctx, tx, m, now, true)
		dsn = m.dsn
		return err
	})
	if err == nil {
		q.eventsRecorded(m.events)
	}
	return counts, final, dsn, err
}

// save writes m back after a change, with the DSN and suppressions the
// change calls for, and clears the lease when unlease is set: deleted
// when every recipient was delivered, kept without its body until its
// purge when one failed, else due at its next attempt.
func (q *Queue) save(ctx context.Context, tx pgx.Tx, m *row, now time.Time, unlease bool) (final bool, err error) {
	if err := q.report(ctx, tx, m, now); err != nil {
		return false, err
	}
	if len(q.opts.Subscribers) > 0 {
		if m.events, err = q.emit(ctx, tx, changeEvents(m, now)); err != nil {
			return false, err
		}
	}
	if q.opts.Suppression.Enabled && m.env.User != "" {
		for _, r := range m.rcpts {
			if r.State == queue.StateFailed && r.Attempts > 0 && queue.AddressGone(r.LastReply) {
				s := queue.Suppression{User: m.env.User, Address: r.Address, Reason: queue.SuppressBounce,
					Reply: r.LastReply, QueueID: formatID(m.id), Created: now}
				if e := q.opts.Suppression.ExpireAfter; e > 0 {
					s.Expires = now.Add(e)
				}
				if err := putSuppression(ctx, tx, s, false); err != nil {
					return false, err
				}
			}
		}
	}
	rc, err := json.Marshal(m.rcpts)
	if err != nil {
		return false, err
	}
	st := messageState(m.rcpts, m.held)
	next, ok := nextDue(m.rcpts)
	lease := ``
	if unlease {
		lease = `, lease_owner = NULL, lease_token = NULL`
	}
	if !ok {
		if err := q.keepTrace(ctx, tx, m, now); err != nil {
			return false, err
		}
	}
	switch {
	case st == queue.StateDelivered:
		_, err = tx.Exec(ctx, `DELETE FROM postern_messages WHERE id = $1`, m.id)
		return true, err
	case !ok:
		_, err = tx.Exec(ctx, `UPDATE postern_messages SET rcpts = $2, state = $3, held = false, body = NULL, due = NULL, purge_at = $4`+lease+` WHERE id = $1`,
			m.id, rc, st, now.Add(q.opts.KeepFailed))
		return true, err
	}
	if !unlease && m.token != nil {
		// A node holds it now: the end of its lease stays the due time
		// (the message comes due then if that node dies), and its
		// record sets the next one. Leasing skips held messages.
		_, err = tx.Exec(ctx, `UPDATE postern_messages SET rcpts = $2, state = $3, held = $4 WHERE id = $1`, m.id, rc, st, m.held)
		return false, err
	}
	var due any
	if !m.held {
		due = next
	}
	_, err = tx.Exec(ctx, `UPDATE postern_messages SET rcpts = $2, state = $3, held = $4, due = $5`+lease+` WHERE id = $1`,
		m.id, rc, st, m.held, due)
	return false, err
}

// report queues, in tx, the DSN the recipients' new states call for
// (RFC 3464): failures, "relayed" successes asked for with
// NOTIFY=SUCCESS, and one delay warning. Never for the null
// reverse-path (RFC 5321 §4.5.5).
func (q *Queue) report(ctx context.Context, tx pgx.Tx, m *row, now time.Time) error {
	null := m.env.From == ""
	warnDue := q.opts.DelayWarning > 0 && now.Sub(m.created) >= q.opts.DelayWarning
	var items []dsn.Recipient
	for i := range m.rcpts {
		r := &m.rcpts[i]
		n := notifyOf(m.env, i)
		var action dsn.Action
		switch {
		case r.State == queue.StateFailed && !r.Reported:
			r.Reported = true
			if !null && n.failure {
				action = dsn.Failed
			}
		case r.State == queue.StateDelivered && !r.Reported:
			r.Reported = true
			if !null && n.success && !r.RemoteDSN {
				action = dsn.Relayed
			}
		case r.State == queue.StateDeferred && !r.Warned && warnDue && !null && n.delay:
			r.Warned = true
			action = dsn.Delayed
			m.delayed = append(m.delayed, i)
		}
		if action == "" {
			continue
		}
		dr := dsn.Recipient{FinalRecipient: r.Address, Action: action, RemoteMTA: r.RemoteMTA, Reply: r.LastReply}
		if i < len(m.env.DSN) {
			dr.OriginalRecipient = m.env.DSN[i].ORcpt
		}
		if r.Attempts > 0 {
			dr.LastAttempt = r.LastAttempt
		}
		if action == dsn.Delayed {
			dr.WillRetryUntil = m.created.Add(q.retry.Lifetime)
		}
		items = append(items, dr)
	}
	if len(items) == 0 {
		return nil
	}
	rep := &dsn.Report{ReportingMTA: q.opts.Hostname, Sender: m.env.From, Date: now,
		MessageID:  fmt.Sprintf("%s.%d.dsn@%s", formatID(m.id), now.UnixNano(), q.opts.Hostname),
		EnvelopeID: m.env.EnvID, ArrivalDate: m.created, Recipients: items}
	if strings.EqualFold(m.env.Ret, "FULL") && !m.env.RequireTLS {
		rep.Return = dsn.Full
	}
	var orig []byte
	if err := tx.QueryRow(ctx, `SELECT body FROM postern_messages WHERE id = $1`, m.id).Scan(&orig); err == nil && orig != nil {
		rep.Original = bytes.NewReader(orig)
	}
	var buf bytes.Buffer
	if err := dsn.Compose(&buf, rep); err != nil {
		return fmt.Errorf("compose DSN: %w", err)
	}
	data := buf.Bytes()
	if q.opts.Signer != nil {
		sig, err := q.opts.Signer.Sign(bytes.NewReader(data))
		if err != nil {
			q.log.Warn("DSN unsigned", slog.String("id", formatID(m.id)), slog.Any("error", err))
		} else if len(sig) > 0 {
			data = append(sig, data...)
		}
	}
	env := &queue.Envelope{Rcpts: []string{m.env.From}, RequireTLS: m.env.RequireTLS}
	rs := []rcpt{{Address: m.env.From, State: queue.StateQueued, NextAttempt: now}}
	if _, err := q.insertRcpts(ctx, tx, env, data, now, rs, "", nil); err != nil {
		return err
	}
	q.obs.Bounced()
	q.announce.Store(true)
	m.dsn = true
	return nil
}

type notify struct{ success, failure, delay bool }

// notifyOf reads NOTIFY (RFC 3461 §4.1): absent means FAILURE and, at
// the MTA's choice, DELAY; postern reports both.
func notifyOf(env queue.Envelope, i int) notify {
	given, s, f, d := env.Notify(i)
	if !given {
		return notify{failure: true, delay: true}
	}
	return notify{s, f, d}
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// listen wakes the dispatcher when another node announces new work
// (LISTEN/NOTIFY), on a connection of its own, reconnecting after a
// failure.
func (q *Queue) listen() {
	defer q.wg.Done()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := q.listenOnce()
		select {
		case <-q.stopping:
			return
		default:
		}
		q.log.Warn("LISTEN connection lost, polling meanwhile", slog.Any("error", err))
		q.kick()
		select {
		case <-q.stopping:
			return
		case <-time.After(wait):
		}
	}
}

func (q *Queue) listenOnce() error {
	ctx, cancel := context.WithCancel(q.runCtx)
	defer cancel()
	go func() {
		select {
		case <-q.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	pc, err := q.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection has session state (LISTEN): it is not given back.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	q.kick() // whatever was announced before LISTEN
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Payload != q.node {
			q.kick()
		}
	}
}

// notifier tells the other nodes that new work is due (NOTIFY), at most
// every 20 ms: NOTIFY takes a lock every committing transaction then
// waits for, so it stays out of Enqueue's transaction.
func (q *Queue) notifier() {
	defer q.wg.Done()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-q.stopping:
			return
		case <-t.C:
		}
		if !q.announce.Swap(false) {
			continue
		}
		ctx, cancel := context.WithTimeout(q.runCtx, 5*time.Second)
		_, err := q.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, q.node)
		cancel()
		if err != nil {
			q.log.Debug("NOTIFY", slog.Any("error", err))
		}
	}
}

// purger deletes failed records past their keep time and expired
// idempotency keys, once a minute; every node does it, harmlessly.
func (q *Queue) purger() {
	defer q.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-q.stopping:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(q.runCtx, 30*time.Second)
		now := q.clock()
		_, err := q.pool.Exec(ctx, `DELETE FROM postern_messages WHERE purge_at IS NOT NULL AND purge_at <= $1`, now)
		if err == nil {
			_, err = q.pool.Exec(ctx, `DELETE FROM postern_idempotency WHERE created <= $1`, now.Add(-queue.IdempotencyWindow))
		}
		if err == nil {
			_, err = q.pool.Exec(ctx, `DELETE FROM postern_traces WHERE expires <= $1`, now)
		}
		cancel()
		if err != nil {
			q.log.Warn("purge", slog.Any("error", err))
		}
	}
}

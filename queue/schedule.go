package queue

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/reply"
)

const (
	// jitterFrac spreads retries by ±10% so that messages deferred
	// together (a remote outage) do not all come back in the same second.
	jitterFrac = 0.10
	// minBackoff is the floor of any wait, whatever Retry says: a
	// misconfiguration must not turn into a hot loop against a remote.
	minBackoff = time.Second
	// maxIdle bounds the dispatcher's sleep, so a wall-clock step (the
	// schedule is in wall-clock time, timers are monotonic) is noticed
	// within a minute.
	maxIdle = time.Minute
	// errorWait is the pause after a failed lease (disk full, say) before
	// trying again, unless an Enqueue or a finished attempt wakes it.
	errorWait = 5 * time.Second
)

// backoff is the wait after attempt number attempt (1 for the first):
// Initial doubled per earlier attempt, capped at Max, then scaled by a
// jitter factor in [1-jitterFrac, 1+jitterFrac) chosen by u in [0,1), and
// never below minBackoff. The jitter applies after the cap so that capped
// retries are spread too.
func (r Retry) backoff(attempt int, u float64) time.Duration {
	d := r.Initial
	for i := 1; i < attempt && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	d = time.Duration(float64(d) * (1 - jitterFrac + 2*jitterFrac*u))
	return max(d, minBackoff)
}

// job is one delivery: recipients of one message at one domain, leased.
type job struct {
	id  uint64
	idx []int // indexes into the record's Rcpts, parallel to d.Rcpts
	d   *Delivery
}

// dispatch is the scheduler loop: lease what is due while workers are free,
// then sleep until the next due time, an Enqueue, a finished attempt, or
// Close.
func (q *Queue) dispatch() {
	defer q.wg.Done()
	t := time.NewTimer(maxIdle)
	defer t.Stop()
	for {
		// select picks at random among ready cases: check stopping
		// first so no lease starts once Close has begun.
		select {
		case <-q.stopping:
			return
		default:
		}
		// Go 1.23+ timers: Reset discards a stale expiry, no drain needed.
		t.Reset(q.dispatchOnce())
		select {
		case <-q.stopping:
			return
		case <-q.kick:
		case <-t.C:
		}
	}
}

// dispatchOnce leases due work for the free workers, starts it, and says
// how long to sleep.
func (q *Queue) dispatchOnce() time.Duration {
	q.mu.Lock()
	free := q.workers - q.busy
	q.mu.Unlock()
	if free <= 0 {
		return maxIdle // a finishing attempt calls notify
	}
	now := q.clock()
	q.purge(now)
	jobs, next, err := q.lease(now, free)
	if err != nil {
		q.log.Error("lease", slog.Any("error", err))
		q.checkDB(err)
		return errorWait
	}
	for _, j := range jobs {
		q.wg.Add(1) // the dispatcher's own count keeps wg above zero here
		go q.run(j)
	}
	if next.IsZero() {
		return maxIdle
	}
	return min(max(next.Sub(now), 0), maxIdle)
}

// lease hands out due recipients of at most limit messages. In one committed
// transaction (shared with other writers, see batch) it bumps each due
// recipient's Attempts and sets its
// NextAttempt to now plus the backoff, before anyone touches the network
// (house style, habit 2; mox queue.go does the same): if the process dies
// during the attempt, the recipient is retried after that backoff, with the
// attempt counted. The leased messages are marked in flight once the
// transaction has committed.
//
// It walks the schedule from its first key and stops at the first key in
// the future, skipping only messages already in flight (at most Workers of
// them), so its cost does not depend on how many messages wait.
//
// next is the earliest due time among messages not in flight, zero if none.
func (q *Queue) lease(now time.Time, limit int) (jobs []*job, next time.Time, err error) {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return nil, time.Time{}, ErrClosed
	}
	// Most wake-ups (one follows every attempt) find nothing due: answer
	// those from a read transaction, so that an empty lease costs no
	// commit and no fsync (bbolt syncs even a commit that changed nothing).
	anyDue := false
	err = q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bSchedule).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if q.isInflight(schedID(k)) {
				continue // at most Workers of these
			}
			if schedTime(k) <= now.UnixNano() {
				anyDue = true
			} else {
				next = time.Unix(0, schedTime(k))
			}
			return nil
		}
		return nil
	})
	if err != nil || !anyDue {
		if err != nil {
			err = fmt.Errorf("queue: lease: %w", err)
		}
		return nil, next, err
	}

	leased := make(map[uint64]bool)
	// Through the group-commit loop: the lease shares its commit (and
	// fsync) with the enqueues and results waiting at the same moment
	// instead of queueing behind them for a transaction of its own. The
	// function may run twice (see batch): it starts from scratch, and
	// its only effects outside tx are log lines and jitter draws.
	err = q.batch(func(tx *bolt.Tx) error {
		jobs, next = nil, time.Time{}
		clear(leased)
		sched := tx.Bucket(bSchedule)
		msgs := tx.Bucket(bMessages)

		// Collect first, modify after: bbolt cursors are not valid
		// across changes to their bucket.
		var keys [][]byte
		c := sched.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
			if schedTime(k) > now.UnixNano() {
				break
			}
			if !q.isInflight(schedID(k)) {
				keys = append(keys, bytes.Clone(k))
			}
		}

		for _, k := range keys {
			id := schedID(k)
			data := msgs.Get(idKey(id))
			var rec *record
			if data != nil {
				var derr error
				if rec, derr = decodeRecord(data); derr != nil {
					data = nil
					q.log.Error("unreadable message left out of the schedule",
						slog.String("id", formatID(id)), slog.Any("error", derr))
				}
			}
			if data == nil {
				// A dangling or unreadable entry would otherwise be
				// due forever. The message, if any, stays for
				// inspection with List.
				if err := sched.Delete(k); err != nil {
					return err
				}
				continue
			}
			var due []int
			for i := range rec.Rcpts {
				r := &rec.Rcpts[i]
				// No attempt of this message is in flight (checked
				// above), so leased is exactly "handed out now": this
				// also clears a flag left by a crash.
				r.leased = false
				if r.State.pending() && !r.NextAttempt.After(now) {
					r.Attempts++
					r.LastAttempt = now
					r.NextAttempt = now.Add(q.retry.backoff(r.Attempts, q.jitter()))
					r.leased = true
					due = append(due, i)
				}
			}
			if _, err := save(tx, id, rec, now, q.keep); err != nil {
				return err
			}
			if len(due) == 0 {
				continue // the entry was early; save moved it
			}
			// Copied out: bbolt's bytes are valid only inside the
			// transaction. One copy per lease, shared by its
			// deliveries.
			var inline []byte
			if rec.Spool == "" {
				inline = bytes.Clone(tx.Bucket(bBodies).Get(idKey(id)))
			}
			body := q.body(rec, inline)
			jobs = append(jobs, group(id, rec, due, body)...)
			leased[id] = true
		}

		c = sched.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if id := schedID(k); !leased[id] && !q.isInflight(id) {
				next = time.Unix(0, schedTime(k))
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("queue: lease: %w", err)
	}
	q.mu.Lock()
	for _, j := range jobs {
		q.inflight[j.id]++
		q.busy++
	}
	q.mu.Unlock()
	return jobs, next, nil
}

func (q *Queue) isInflight(id uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight[id] > 0
}

// group makes one job per recipient domain, compared case-insensitively
// (RFC 5321 §2.4: domain names are case-insensitive; local parts are not
// touched), in the order the domains first appear.
func group(id uint64, rec *record, due []int, body Body) []*job {
	var jobs []*job
	byDomain := make(map[string]*job)
	for _, i := range due {
		r := rec.Rcpts[i]
		dom := domainOf(r.Address)
		j := byDomain[dom]
		if j == nil {
			j = &job{id: id, d: &Delivery{
				ID:      formatID(id),
				From:    rec.Env.From,
				Domain:  dom,
				Created: rec.Created,
				Body:    body,
				Ret:     rec.Env.Ret,
				EnvID:   rec.Env.EnvID,

				RequireTLS:  rec.Env.RequireTLS,
				TLSOptional: rec.Env.TLSOptional,
			}}
			byDomain[dom] = j
			jobs = append(jobs, j)
		}
		j.idx = append(j.idx, i)
		j.d.Rcpts = append(j.d.Rcpts, r.Address)
		if rec.Env.DSN != nil {
			var p RcptDSN
			if i < len(rec.Env.DSN) {
				p = rec.Env.DSN[i]
			}
			j.d.DSN = append(j.d.DSN, p)
		}
		j.d.Attempt = max(j.d.Attempt, r.Attempts)
	}
	return jobs
}

// domainOf is the lower-cased part after the last "@", or "" for an
// address without one (such as a bare "postmaster").
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(addr[i+1:])
}

// run makes one attempt and records its results. The message stays in
// flight until the results are committed, so it cannot be leased in
// between.
func (q *Queue) run(j *job) {
	defer q.wg.Done()
	defer q.release(j)
	// Stopping wins over a free slot (select would choose at random).
	// A job never attempted keeps its lease and is retried after its
	// backoff; Attempts counts it, a small price for never losing or
	// hot-looping a message.
	select {
	case <-q.stopping:
		q.hook(j.id)
		return
	default:
	}
	select {
	case q.sem <- struct{}{}:
	case <-q.stopping:
		q.hook(j.id)
		return
	}
	start := time.Now()
	results := q.attempt(j)
	q.obs.AttemptDuration(time.Since(start))
	<-q.sem
	q.record(j, results)
}

func (q *Queue) release(j *job) {
	q.mu.Lock()
	if q.inflight[j.id]--; q.inflight[j.id] <= 0 {
		delete(q.inflight, j.id)
	}
	q.busy--
	q.mu.Unlock()
	q.notify()
}

func (q *Queue) hook(id uint64) {
	if q.afterResults != nil {
		q.afterResults(id)
	}
}

// attempt calls the Deliverer and returns exactly one result per
// recipient, whatever the Deliverer did: a panic or a short result list
// becomes temporary failures, never lost recipients.
func (q *Queue) attempt(j *job) (results []Result) {
	defer func() {
		if r := recover(); r != nil {
			q.log.Error("deliverer panicked", slog.String("id", j.d.ID), slog.Any("panic", r))
			results = nil
			for range j.d.Rcpts {
				results = append(results, Result{Outcome: Temporary, Reply: internalError(fmt.Sprintf("deliverer panicked: %v", r))})
			}
		}
	}()
	results = q.deliver.Deliver(q.runCtx, j.d)
	if len(results) != len(j.d.Rcpts) {
		q.log.Error("deliverer broke its contract", slog.String("id", j.d.ID),
			slog.Int("results", len(results)), slog.Int("rcpts", len(j.d.Rcpts)))
		fixed := make([]Result, len(j.d.Rcpts))
		for i := range fixed {
			if i < len(results) {
				fixed[i] = results[i]
			} else {
				fixed[i] = Result{Outcome: Temporary, Reply: internalError("no result from deliverer")}
			}
		}
		results = fixed
	}
	return results
}

// internalError is the reply of a result the deliverer failed to give:
// X.3.0 "Other or undefined mail system status" (RFC 3463 §3.4), no code.
func internalError(what string) reply.Reply {
	return reply.Reply{Enhanced: reply.Enhanced{Class: 4, Subject: 3, Detail: 0}, Text: "internal error: " + what}
}

// apply turns one result into the recipient's new state. Anything but
// Delivered and Permanent counts as Temporary: when in doubt, retry. A
// Temporary result keeps the NextAttempt set by the lease; if the attempt
// took longer than its backoff, that time has passed and the next attempt
// follows at once, with the next, longer backoff already counted.
//
// Lifetime is checked only here, on a result: a message is given up at the
// first temporary failure after it, so it may live up to Lifetime plus one
// backoff.
func (q *Queue) apply(r *Recipient, res Result, now, created time.Time) {
	r.LastReply, r.RemoteMTA = res.Reply, res.RemoteMTA
	switch {
	case res.Outcome == Delivered:
		r.State = StateDelivered
		r.remoteDSN = res.RemoteDSN
	case res.Outcome == Permanent:
		r.State = StateFailed
	case now.Sub(created) > q.retry.Lifetime:
		r.State = StateFailed
		// The queue's words now, with the remote's last reply quoted
		// for the people reading the bounce.
		r.LastReply = reply.Reply{Enhanced: statusExpired,
			Text: fmt.Sprintf("retry lifetime %v expired; last reply: %s", q.retry.Lifetime, res.Reply)}
	default:
		r.State = StateDeferred
	}
}

// record commits the results of one attempt, sharing the commit with other
// workers through q.batch, together with the DSN the results call for, if
// any (see modify). If Close gave up waiting, the results are dropped and
// the lease stands. Results are dropped too for a message an operator
// deleted meanwhile, and for recipients an operator bounced meanwhile; a
// message held meanwhile records them and stays held.
func (q *Queue) record(j *job, results []Result) {
	defer q.hook(j.id)
	id := j.d.ID
	// At debug level: the lines below (delivered, deferred, failed) say
	// the same once the results are recorded, and the deliverer logs each
	// session; this one also shows results that are then dropped.
	for i, res := range results {
		q.log.Debug("attempt", slog.String("id", id), slog.String("rcpt", j.d.Rcpts[i]),
			slog.Int("attempt", j.d.Attempt), slog.String("outcome", res.Outcome.String()),
			slog.Any("reply", res.Reply), slog.String("remote", res.RemoteMTA))
	}
	now := q.clock()
	out, err := q.modify(j.id, true, now, func(rec *record) error {
		changed := false
		for n, i := range j.idx {
			r := &rec.Rcpts[i]
			if !r.State.pending() {
				continue // bounced by an operator during the attempt
			}
			r.leased = false
			q.apply(r, results[n], now, rec.Created)
			changed = true
		}
		if !changed {
			return errNoChange
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrClosed):
		q.log.Warn("attempt cut off by shutdown, lease kept", slog.String("id", id))
		return
	case errors.Is(err, ErrNotFound):
		q.log.Info("results dropped: message deleted meanwhile", slog.String("id", id))
		return
	case err != nil:
		// The lease stands: these recipients are tried again after
		// their backoff, so a delivered one may be delivered twice,
		// but none is lost.
		q.log.Error("record results", slog.String("id", id), slog.Any("error", err))
		return
	case out == nil:
		q.log.Info("results dropped: recipients bounced meanwhile", slog.String("id", id))
		return
	}
	var delivered, deferred, failed int
	for _, i := range j.idx {
		if !out.before.Rcpts[i].State.pending() {
			continue
		}
		r := out.after.Rcpts[i]
		switch r.State {
		case StateDelivered:
			delivered++
			q.log.Info("delivered", slog.String("id", id), slog.String("rcpt", r.Address),
				slog.Int("attempt", r.Attempts), slog.String("remote", r.RemoteMTA),
				slog.Any("reply", r.LastReply))
		case StateDeferred:
			deferred++
			q.log.Info("deferred", slog.String("id", id), slog.String("rcpt", r.Address),
				slog.Int("attempt", r.Attempts), slog.Time("next_attempt", r.NextAttempt),
				slog.String("remote", r.RemoteMTA), slog.Any("reply", r.LastReply))
		case StateFailed:
			failed++
			q.log.Info("failed", slog.String("id", id), slog.String("rcpt", r.Address),
				slog.Int("attempt", r.Attempts), slog.String("remote", r.RemoteMTA), slog.Any("reply", r.LastReply))
		}
	}
	q.observe(delivered, deferred, failed)
	if out.saved.final {
		q.final(j.id, out.after)
	}
}

func (q *Queue) observe(delivered, deferred, failed int) {
	if delivered > 0 {
		q.obs.Delivered(delivered)
	}
	if deferred > 0 {
		q.obs.Deferred(deferred)
	}
	if failed > 0 {
		q.obs.Failed(failed)
	}
}

// final logs that a message has no pending recipient left and calls
// OnFinal.
func (q *Queue) final(id uint64, rec *record) {
	if rec.state() == StateFailed {
		q.log.Info("final, record kept", slog.String("id", formatID(id)),
			slog.Time("purge_at", time.Unix(0, rec.Purge).UTC()))
	} else {
		q.log.Info("removed", slog.String("id", formatID(id)))
	}
	if q.onFinal != nil {
		q.onFinal(rec.message(id))
	}
}

package queue

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// traced: the message gets VERP return paths (trace.go).
	traced bool
	// permit is the Gate's Release for this attempt; nil once called.
	permit func()
}

// free gives the job's capacity back to the Gate and wakes the dispatcher,
// whose parked work may now fit. Only the job's own goroutine calls it.
func (q *Queue) free(j *job) {
	if j.permit != nil {
		p := j.permit
		j.permit = nil
		p()
		q.notify()
	}
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

const (
	// maxDeferrals bounds the recipients' messages one lease defers for
	// a suspended destination, so that one transaction stays small; the
	// next round goes on at once.
	maxDeferrals = 1000
	// minPark is the shortest a Gate's refusal parks a lane, so that a
	// Gate answering "until now" cannot make the dispatcher spin.
	minPark = time.Millisecond
)

// pick is a delivery the Gate admitted: the due recipients of message id
// at domain, and the Gate's Release.
type pick struct {
	id      uint64
	domain  string
	release func()
}

// deferral is due work at a suspended destination: its recipients wait
// until then, with why as their last reply.
type deferral struct {
	id     uint64
	domain string
	until  time.Time
	why    reply.Reply
}

// choose walks the in-memory schedule (lanes.go) in due order and asks
// the Gate about each due part, for at most limit admissions and
// maxDeferrals deferrals. A lane refused for capacity is parked; parts
// of messages in flight are set flying. Everything it does not hand out
// stays in the index.
func (q *Queue) choose(now time.Time, limit int) (picks []pick, defers []deferral) {
	q.ixMu.Lock()
	defer q.ixMu.Unlock()
	x := q.ix
	x.signals()
	nowN := now.UnixNano()
	fallback := now.Add(maxIdle).UnixNano()
	var aside []*part // looked at this round; back into their lanes at the end
	for limit > 0 && len(defers) < maxDeferrals && len(x.ready) > 0 {
		l := x.ready[0]
		if l.readyAt() > nowN {
			break
		}
		p := l.items[0]
		l.remove(0)
		if q.isInflight(p.msg.id) {
			l.flying++ // until its attempt ends: land
			x.fix(l)
			continue
		}
		aside = append(aside, p)
		x.fix(l)
		a := q.gate.Admit(Dest{Domain: l.key.domain, Sender: l.key.sender, Attempt: int(p.attempts) + 1,
			Retry: q.forced[p.msg.id]}, now)
		switch {
		case a.Admitted():
			picks = append(picks, pick{id: p.msg.id, domain: l.key.domain, release: a.Release})
			delete(q.forced, p.msg.id)
			limit--
		case !a.Suspended.IsZero():
			defers = append(defers, deferral{id: p.msg.id, domain: l.key.domain, until: a.Until, why: a.Suspended})
		default:
			until := fallback
			if !a.Until.IsZero() {
				until = min(max(a.Until.UnixNano(), nowN+int64(minPark)), fallback)
			}
			x.park(l, until, a.Wait)
		}
	}
	for _, p := range aside {
		x.push(p)
	}
	return picks, defers
}

// settlement is recipients a lease deferred for a suspended destination
// whose deferral calls for what a result does (settle).
type settlement struct {
	id  uint64
	idx []int
	why []reply.Reply // parallel to idx
}

// suspendUntil is when recipients of rec deferred at now for a
// suspension that lasts until until come due again: until, or earlier
// when the end of the message's retry lifetime, or its delay warning
// (when one may still be due), comes first, so that neither waits for the
// suspension to end.
func (q *Queue) suspendUntil(rec *record, until, now time.Time) time.Time {
	times := []time.Time{rec.Created.Add(q.retry.Lifetime + time.Nanosecond)}
	if q.warnAge > 0 && rec.Env.From != "" && slices.ContainsFunc(rec.Rcpts, func(r Recipient) bool { return r.State.pending() && !r.warned }) {
		times = append(times, rec.Created.Add(q.warnAge))
	}
	for _, t := range times {
		if t.After(now) && t.Before(until) {
			until = t
		}
	}
	return until
}

// settle records for recipients that a lease deferred, no attempt made,
// what the result of an attempt would: a lifetime expired (failed, with
// the queue's words and the suspension quoted) and the DSN now due (a
// failure, a delay warning), committed together as record does.
func (q *Queue) settle(s settlement) {
	defer q.wg.Done()
	now := q.clock()
	id := formatID(s.id)
	out, err := q.modify(s.id, true, now, func(rec *record) error {
		changed := false
		for n, i := range s.idx {
			r := &rec.Rcpts[i]
			if !r.State.pending() || !r.leased {
				continue // an operator or a later lease got there first
			}
			r.leased = false
			next := r.NextAttempt
			q.apply(r, Result{Outcome: Temporary, Reply: s.why[n]}, now, rec.Created)
			r.NextAttempt = next
			changed = true
		}
		if !changed {
			return errNoChange
		}
		return nil
	})
	if err != nil || out == nil {
		if err != nil {
			q.log.Error("record a suspension", slog.String("id", id), slog.Any("error", err))
		}
		return
	}
	failed := 0
	for _, i := range s.idx {
		if r := out.after.Rcpts[i]; r.State == StateFailed && out.before.Rcpts[i].State.pending() {
			failed++
			q.log.Info("failed", slog.String("id", id), slog.String("rcpt", r.Address),
				slog.Int("attempt", r.Attempts), slog.Any("reply", r.LastReply))
		}
	}
	q.observe(0, 0, failed)
	if out.saved.final {
		q.final(s.id, out.after)
	}
}

// nextDue is the earliest time the index has something to look at, zero
// if nothing (parked lanes wait for their signal or a change).
func (q *Queue) nextDue() time.Time {
	q.ixMu.Lock()
	defer q.ixMu.Unlock()
	if n := q.ix.next(); n != never {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// lease hands out the due recipients the Gate admits, at most limit
// deliveries (one per message and domain). In one committed transaction
// (shared with other writers, see batch) it bumps each leased recipient's
// Attempts and sets its NextAttempt to now plus the backoff, before
// anyone touches the network (house style, habit 2; mox queue.go does the
// same): if the process dies during the attempt, the recipient is retried
// after that backoff, with the attempt counted. The leased messages are
// marked in flight once the transaction has committed.
//
// The same transaction defers the due recipients of suspended
// destinations to the end of the suspension, with the Gate's reply and
// without counting an attempt: nothing is dialed for them.
//
// Candidates come from the in-memory schedule (lanes.go), so the cost
// depends on the work handed out and the lanes refused, not on how many
// messages wait.
//
// next is the earliest time anything not in flight is due, zero if none.
func (q *Queue) lease(now time.Time, limit int) (jobs []*job, next time.Time, err error) {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return nil, time.Time{}, ErrClosed
	}
	picks, defers := q.choose(now, limit)
	if len(picks)+len(defers) > 0 {
		if jobs, err = q.leaseTx(now, picks, defers); err != nil {
			return nil, time.Time{}, err
		}
	}
	return jobs, q.nextDue(), nil
}

// leaseTx commits what choose decided. A pick whose record has nothing
// due at its domain any more (the index was a moment behind) gives its
// permit back.
func (q *Queue) leaseTx(now time.Time, picks []pick, defers []deferral) (jobs []*job, err error) {
	type work struct {
		picks  map[string]func()
		defers map[string]deferral
	}
	byID := make(map[uint64]*work)
	var ids []uint64
	get := func(id uint64) *work {
		w := byID[id]
		if w == nil {
			w = &work{picks: map[string]func(){}, defers: map[string]deferral{}}
			byID[id] = w
			ids = append(ids, id)
		}
		return w
	}
	for _, p := range picks {
		get(p.id).picks[p.domain] = p.release
	}
	for _, d := range defers {
		get(d.id).defers[d.domain] = d
	}
	slices.Sort(ids)

	type suspendedRcpt struct {
		id   uint64
		rcpt string
		d    deferral
	}
	var (
		suspended []suspendedRcpt
		settles   []settlement
		delta     map[State]int
	)
	// Through the group-commit loop: the lease shares its commit (and
	// fsync) with the enqueues and results waiting at the same moment
	// instead of queueing behind them for a transaction of its own. The
	// function may run twice (see batch): it starts from scratch, and
	// its only effects outside tx are log lines, jitter draws and the
	// index changes it stages.
	err = q.batch(func(tx *bolt.Tx) error {
		jobs, suspended, settles, delta = nil, nil, nil, map[State]int{}
		msgs := tx.Bucket(bMessages)
		for _, id := range ids {
			w := byID[id]
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
				q.unschedule(id)
				continue
			}
			before := rec.state()
			var due, deferred []int
			for i := range rec.Rcpts {
				r := &rec.Rcpts[i]
				// No attempt of this message is in flight (choose
				// checked), so leased is exactly "handed out now":
				// this also clears a flag left by a crash.
				r.leased = false
				if !r.State.pending() || r.NextAttempt.After(now) {
					continue
				}
				dom := domainOf(r.Address)
				if _, ok := w.picks[dom]; ok {
					r.Attempts++
					r.LastAttempt = now
					r.NextAttempt = now.Add(q.retry.backoff(r.Attempts, q.jitter()))
					r.leased = true
					due = append(due, i)
				} else if d, ok := w.defers[dom]; ok {
					// Postfix's "delivery temporarily suspended":
					// the destination's reason, no attempt counted.
					d.until = q.suspendUntil(rec, d.until, now)
					r.State, r.NextAttempt, r.LastReply, r.RemoteMTA = StateDeferred, d.until, d.why, ""
					suspended = append(suspended, suspendedRcpt{id, r.Address, d})
					deferred = append(deferred, i)
				}
			}
			// What a result would decide, a deferral decides too: an
			// expired lifetime, a delay warning. Those recipients stay
			// marked leased until settle records it, with the DSN.
			if len(deferred) > 0 && (now.Sub(rec.Created) > q.retry.Lifetime || len(q.plan(rec.clone(), now)) > 0) {
				for _, i := range deferred {
					rec.Rcpts[i].leased = true
				}
				st := settlement{id: id, idx: deferred}
				for _, i := range deferred {
					st.why = append(st.why, rec.Rcpts[i].LastReply)
				}
				settles = append(settles, st)
			}
			if _, err := q.saveRec(tx, id, rec, now); err != nil {
				return err
			}
			delta[before]--
			delta[rec.state()]++
			if len(due) == 0 {
				continue // nothing due at the picked domains any more
			}
			// Copied out: bbolt's bytes are valid only inside the
			// transaction. One copy per lease, shared by its
			// deliveries.
			var inline []byte
			if rec.Spool == "" {
				inline = bytes.Clone(tx.Bucket(bBodies).Get(idKey(id)))
			}
			for _, j := range group(id, rec, due, q.body(rec, inline)) {
				j.permit = w.picks[j.d.Domain]
				jobs = append(jobs, j)
			}
		}
		return nil
	})
	used := make(map[uint64]map[string]bool)
	if err == nil {
		for _, j := range jobs {
			if used[j.id] == nil {
				used[j.id] = map[string]bool{}
			}
			used[j.id][j.d.Domain] = true
		}
	} else {
		jobs = nil
	}
	for _, p := range picks {
		if !used[p.id][p.domain] {
			p.release()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("queue: lease: %w", err)
	}
	q.count(delta)
	for _, s := range suspended {
		q.log.Info("delivery suspended", slog.String("id", formatID(s.id)), slog.String("rcpt", s.rcpt),
			slog.Time("next_attempt", s.d.until), slog.Any("reply", s.d.why))
	}
	for _, s := range settles {
		q.wg.Add(1) // the caller (dispatcher, or a test) keeps wg above zero
		go q.settle(s)
	}
	q.mu.Lock()
	for _, j := range jobs {
		q.inflight[j.id]++
		q.busy++
	}
	q.mu.Unlock()
	return jobs, nil
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
			j = &job{id: id, traced: rec.traced(), d: &Delivery{
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
		q.free(j)
		q.hook(j.id)
		return
	default:
	}
	select {
	case q.sem <- struct{}{}:
	case <-q.stopping:
		q.free(j)
		q.hook(j.id)
		return
	}
	start := time.Now()
	results := q.attempt(j)
	q.obs.AttemptDuration(time.Since(start))
	// The destination's capacity goes back at once, not after the
	// results' commit: another attempt there may start meanwhile.
	q.free(j)
	<-q.sem
	q.record(j, results)
}

// release ends a job's time in flight. When it was the message's last,
// its parts that came due meanwhile go back into the schedule's lanes.
func (q *Queue) release(j *job) {
	q.free(j) // normally done already
	q.mu.Lock()
	landed := false
	if q.inflight[j.id]--; q.inflight[j.id] <= 0 {
		delete(q.inflight, j.id)
		landed = true
	}
	q.busy--
	q.mu.Unlock()
	if landed {
		q.ixMu.Lock()
		q.ix.land(j.id)
		q.ixMu.Unlock()
	}
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
	if j.traced && q.bounces.ReturnPath != nil {
		j.d.ReturnPath = q.bounces.ReturnPath(j.d.ID, j.idx)
	}
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

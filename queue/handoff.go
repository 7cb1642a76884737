package queue

import "time"

// Direct hand-off. A message accepted while a delivery worker is free would
// otherwise take three commits before its first attempt ends: the enqueue,
// the lease the dispatcher commits once it wakes up, and the results. The
// lease's commit carries nothing the enqueue's could not: so when a worker
// is free, Enqueue writes the record already leased (Attempts 1,
// NextAttempt at the first backoff, exactly what lease would write a moment
// later) in its own transaction, and hands the message to a worker as soon
// as that transaction is on disk. Crash behaviour is the lease's: a message
// whose attempt was cut off by a crash is retried after the backoff, with
// the attempt counted. Postfix's queue manager likewise moves a new message
// straight into its in-memory active queue.
//
// Only when no worker is free (or the queue is not started, or closing),
// or the Gate admits none of its domains, does the message wait for the
// dispatcher, due at once, as before. A message with recipients at several
// domains is handed off for those the Gate admits; the others wait for the
// dispatcher, which leases them once the hand-off's attempts have ended.

// reserve takes a delivery slot (a ticket) for a message about to be
// enqueued, if one is free. The ticket counts in busy and in wg until
// handOff or unreserve. Under mu, with accepting checked: Close clears
// accepting under mu before it waits on wg, so a wg.Add done here happens
// before that Wait.
func (q *Queue) reserve() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.accepting || q.busy >= q.workers {
		return false
	}
	q.busy++
	q.wg.Add(1)
	return true
}

// unreserve gives back a ticket whose message was not committed.
func (q *Queue) unreserve() {
	q.mu.Lock()
	q.busy--
	q.mu.Unlock()
	q.wg.Done()
	q.notify()
}

// admitNew asks the Gate about each recipient domain of a new record and
// returns the admitted ones with their Release.
func (q *Queue) admitNew(rec *record, now time.Time) map[string]func() {
	sender := domainOf(rec.Env.From)
	asked := make(map[string]bool)
	permits := make(map[string]func())
	for _, r := range rec.Rcpts {
		dom := domainOf(r.Address)
		if asked[dom] {
			continue
		}
		asked[dom] = true
		if a := q.gate.Admit(Dest{Domain: dom, Sender: sender, Attempt: 1}, now); a.Admitted() {
			permits[dom] = a.Release
		}
	}
	return permits
}

// leaseNew fills in a new record's recipients at the admitted domains as
// lease would at their first attempt, and its schedule time to match.
func (q *Queue) leaseNew(rec *record, now time.Time, admitted map[string]func()) {
	for i := range rec.Rcpts {
		r := &rec.Rcpts[i]
		if _, ok := admitted[domainOf(r.Address)]; !ok {
			continue
		}
		r.Attempts = 1
		r.LastAttempt = now
		r.NextAttempt = now.Add(q.retry.backoff(1, q.jitter()))
		r.leased = true
	}
	next, _ := rec.nextDue()
	rec.Next = next.UnixNano()
}

// markInflight marks id in flight (once per job to come) before the
// transaction inserting it commits: it runs inside that transaction's
// function, in the commit loop, so a lease committed after it, or later in
// the same batch, never hands the message out a second time. It returns
// the undo, for a transaction that does not commit.
func (q *Queue) markInflight(id uint64, jobs int) func() {
	q.mu.Lock()
	q.inflight[id] += jobs
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		if q.inflight[id] -= jobs; q.inflight[id] <= 0 {
			delete(q.inflight, id)
		}
		q.mu.Unlock()
	}
}

// handOff starts the first attempt of committed message id, whose record
// leaseNew prepared and markInflight marked for jobs: one per recipient
// domain, made by group as lease makes them, before the id was known.
func (q *Queue) handOff(id uint64, jobs []*job) {
	for _, j := range jobs {
		j.id, j.d.ID = id, formatID(id)
	}
	q.mu.Lock()
	q.busy += len(jobs) - 1 // the ticket is one of them
	q.mu.Unlock()
	// The ticket's count keeps wg above zero across this Add.
	q.wg.Add(len(jobs))
	for _, j := range jobs {
		go q.run(j)
	}
	q.wg.Done()
}

// leasedRcpts lists the recipients of rec that leaseNew leased.
func leasedRcpts(rec *record) []int {
	var idx []int
	for i, r := range rec.Rcpts {
		if r.leased {
			idx = append(idx, i)
		}
	}
	return idx
}

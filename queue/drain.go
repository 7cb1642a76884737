package queue

import "time"

// Activity is what the queue's delivery is doing at one moment: how many
// attempts are in flight, and when the earliest recipient not in flight
// comes due. A drain (postern drain) reads it to tell "still delivering
// what is due" from "only deferred work is left".
type Activity struct {
	// InFlight counts the delivery attempts running, and the slots taken
	// by messages being handed straight to a worker.
	InFlight int
	// NextDue is the earliest NextAttempt of the pending recipients not
	// in flight (held messages aside), zero when there is none. It is the
	// recipients' own time: due work whose destination's Gate holds it
	// back for capacity or rate is due, not deferred. A suspended
	// destination's recipients are deferred by the lease that meets them
	// (to the suspension's end), and so count at that time.
	NextDue time.Time
}

// Activity reads the queue's activity now. The two values are read one
// after the other, not in one step: between the end of an attempt and the
// return of its message's due parts to the schedule, or between a lease's
// commit and its attempts' start, both can read as idle for an instant. A
// caller that waits for idleness should see it twice, some time apart.
func (q *Queue) Activity() Activity {
	q.mu.Lock()
	busy := q.busy
	q.mu.Unlock()
	a := Activity{InFlight: busy}
	q.ixMu.Lock()
	next := int64(never)
	for _, l := range q.ix.lanes {
		if len(l.items) > 0 {
			next = min(next, l.items[0].next) // items is a min-heap by next
		}
	}
	q.ixMu.Unlock()
	if next != never {
		a.NextDue = time.Unix(0, next)
	}
	return a
}

// Idle reports whether a has nothing in flight and nothing due at now or
// before: whatever is pending is deferred until later.
func (a Activity) Idle(now time.Time) bool {
	return a.InFlight == 0 && (a.NextDue.IsZero() || a.NextDue.After(now))
}

package queue

import (
	"math"
	"strings"
)

// The in-memory schedule. The schedule bucket orders messages by their
// earliest due recipient, which is all a scheduler needs as long as every
// due message can be attempted: then leasing walks the due keys and stops
// at the first one in the future. With a Gate, some due work cannot start
// (its destination is busy, slowed or suspended), and a walk of the bucket
// would step over every such message on every round: 300 messages for a
// tarpit, 100,000 for a provider that rate-limits, before reaching the
// one message that could go.
//
// So the queue keeps in memory, for every message that has a schedule
// entry (pending recipients, not held), the recipient domains it is
// pending at, each with the earliest NextAttempt and the highest Attempts
// of its recipients there. These parts are grouped into lanes, one per
// recipient domain and sender domain (what a route depends on; see
// Gate), each ordered by due time, and the lanes are ordered by their
// first due part. A lease asks the Gate about the first due part of the
// earliest lane: when it is refused for want of capacity, the whole lane
// is parked until the Gate's time or signal, and the rest of it is not
// looked at. A round's cost is the work it hands out, plus one question
// per lane that is refused, whatever the number of messages waiting.
//
// The index is built at Open from the records (the scan that counts
// Depth) and kept in step with every commit: the write transactions
// stage the summaries of the records they save (stage, below), and the
// summaries are applied once the transaction has committed, in commit
// order (Queue.update). Between a commit and its application the index is
// stale for a moment; a lease reads the records again in its own
// transaction, so a stale entry costs a look, never a wrong lease.
//
// A message that is in flight is not leased again: its due parts are
// taken out of their lanes ("flying") when a lease meets them, and put
// back when its last attempt ends, so that neither a spinning dispatcher
// nor a blocked lane results from an attempt that outlasts its backoff.

// laneKey is what a route may depend on besides the attempt number.
type laneKey struct{ domain, sender string }

// lane is the due-ordered pending work of one laneKey.
type lane struct {
	key   laneKey
	items []*part // a min-heap by (next, id)
	pos   int     // in index.ready
	// parked: not looked at before this time (unix ns); 0 when not
	// parked. A change to the lane's items, or the end of an attempt of
	// one of its messages, unparks it.
	parked int64
	// wait, when not nil, is the Gate's signal that unparks the lane.
	wait <-chan struct{}
	// flying counts its parts taken out while their message is in
	// flight: the lane stays in the index until they land.
	flying int
}

// part is the pending work of one message at one recipient domain.
type part struct {
	msg      *ixMsg
	lane     *lane
	next     int64 // unix ns: the earliest NextAttempt of its recipients
	attempts int32 // the highest Attempts among them
	pos      int32 // in lane.items; -1 while flying (out of the lane)
}

type ixMsg struct {
	id    uint64
	parts []part
}

// summary is what the index keeps of a record: nil when it has no
// schedule entry (nothing pending, or held).
type summary struct {
	sender string
	parts  []partSummary
}

type partSummary struct {
	domain   string
	next     int64
	attempts int
}

// summarize reads the index's summary of rec.
func summarize(rec *record) *summary {
	if rec.Held {
		return nil
	}
	var s *summary
	for _, r := range rec.Rcpts {
		if !r.State.pending() {
			continue
		}
		if s == nil {
			s = &summary{sender: domainOf(rec.Env.From)}
		}
		dom, next := domainOf(r.Address), r.NextAttempt.UnixNano()
		found := false
		for i := range s.parts {
			p := &s.parts[i]
			if p.domain == dom {
				p.next, p.attempts, found = min(p.next, next), max(p.attempts, r.Attempts), true
				break
			}
		}
		if !found {
			s.parts = append(s.parts, partSummary{domain: dom, next: next, attempts: r.Attempts})
		}
	}
	return s
}

// staged is one index change of a write transaction: the new summary of
// message id, nil when it left the schedule.
type staged struct {
	id  uint64
	sum *summary
}

// never is a parking time that only a change or a signal ends.
const never = math.MaxInt64

// index is the in-memory schedule; Queue.ixMu guards it.
type index struct {
	msgs  map[uint64]*ixMsg
	lanes map[laneKey]*lane
	ready laneHeap // every lane with items, by readyAt
	waits map[<-chan struct{}][]*lane
}

func newIndex() *index {
	return &index{msgs: make(map[uint64]*ixMsg), lanes: make(map[laneKey]*lane), waits: make(map[<-chan struct{}][]*lane)}
}

// readyAt is when the lane next has something to look at.
func (l *lane) readyAt() int64 {
	if len(l.items) == 0 {
		return never
	}
	return max(l.items[0].next, l.parked)
}

// set makes the index hold sum for message id (nil: drop it). A part
// that enters a lane, or comes due earlier than before, unparks the lane:
// it may be what the lane was waiting for (a released message, an
// operator's retry, a new message). A part that moves later (a lease, a
// deferral) or leaves does not: that frees no capacity (land does).
func (x *index) set(id uint64, sum *summary) {
	var was map[*lane]int64
	if old := x.msgs[id]; old != nil {
		was = make(map[*lane]int64, len(old.parts))
		for i := range old.parts {
			p := &old.parts[i]
			was[p.lane] = p.next
			x.drop(p)
		}
		delete(x.msgs, id)
	}
	if sum == nil || len(sum.parts) == 0 {
		return
	}
	m := &ixMsg{id: id, parts: make([]part, len(sum.parts))}
	for i, ps := range sum.parts {
		k := laneKey{domain: ps.domain, sender: sum.sender}
		l := x.lanes[k]
		if l == nil {
			// Copied, so that the key does not keep a decoded record's
			// memory alive: lanes outlive the records they came from.
			l = &lane{key: laneKey{strings.Clone(k.domain), strings.Clone(k.sender)}, pos: -1}
			x.lanes[l.key] = l
		}
		m.parts[i] = part{msg: m, lane: l, next: ps.next, attempts: int32(min(ps.attempts, math.MaxInt32))}
		x.push(&m.parts[i])
		if before, ok := was[l]; !ok || ps.next < before {
			x.unpark(l)
		}
	}
	x.msgs[id] = m
}

// drop takes p out of its lane, and the lane out of the index when
// nothing of it is left, in the lane or flying.
func (x *index) drop(p *part) {
	l := p.lane
	if p.pos >= 0 {
		l.remove(int(p.pos))
	} else {
		l.flying--
	}
	x.fix(l)
	if len(l.items) == 0 && l.flying == 0 {
		delete(x.lanes, l.key)
	}
}

// push puts p into its lane and the lane into the ready heap.
func (x *index) push(p *part) {
	l := p.lane
	l.push(p)
	x.fix(l)
}

// fix restores l's place in the ready heap after its readyAt changed.
func (x *index) fix(l *lane) {
	switch {
	case len(l.items) == 0 && l.pos >= 0:
		x.ready.remove(l.pos)
	case len(l.items) > 0 && l.pos < 0:
		x.ready.push(l)
	case l.pos >= 0:
		x.ready.fix(l.pos)
	}
}

// unpark lets l be looked at again at once.
func (x *index) unpark(l *lane) {
	if l.parked != 0 || l.wait != nil {
		l.parked, l.wait = 0, nil
		x.fix(l)
	}
}

// park keeps l from being looked at before until (unix ns; never: until a
// change), or until wait is closed.
func (x *index) park(l *lane, until int64, wait <-chan struct{}) {
	l.parked, l.wait = until, wait
	if wait != nil {
		x.waits[wait] = append(x.waits[wait], l)
	}
	x.fix(l)
}

// signals unparks the lanes whose Gate signal has come.
func (x *index) signals() {
	for ch, ls := range x.waits {
		select {
		case <-ch:
		default:
			continue
		}
		delete(x.waits, ch)
		for _, l := range ls {
			if l.wait == ch {
				x.unpark(l)
			}
		}
	}
}

// fly takes the due part p, whose message is in flight, out of its lane
// until land.
func (x *index) fly(p *part) {
	p.lane.remove(int(p.pos))
	p.lane.flying++
	x.fix(p.lane)
}

// land puts the flying parts of message id back and unparks its lanes:
// its last attempt has ended, so its lanes may have capacity again, and
// anything of it still due may be leased.
func (x *index) land(id uint64) {
	m := x.msgs[id]
	if m == nil {
		return
	}
	for i := range m.parts {
		p := &m.parts[i]
		if p.pos < 0 {
			p.lane.flying--
			x.push(p)
		}
		x.unpark(p.lane)
	}
}

// next is the earliest time a lane has something to look at; never when
// none has.
func (x *index) next() int64 {
	if len(x.ready) == 0 {
		return never
	}
	return x.ready[0].readyAt()
}

// partLess orders parts by due time, then by id (acceptance order).
func partLess(a, b *part) bool {
	return a.next < b.next || a.next == b.next && a.msg.id < b.msg.id
}

// The lane's heap of parts, written out rather than through
// container/heap: it is the hot path of every lease, and boxing each
// element in an interface would allocate.

func (l *lane) push(p *part) {
	p.pos = int32(len(l.items))
	l.items = append(l.items, p)
	l.up(len(l.items) - 1)
}

func (l *lane) remove(i int) {
	n := len(l.items) - 1
	if i != n {
		l.swap(i, n)
	}
	l.items[n].pos = -1
	l.items[n] = nil
	l.items = l.items[:n]
	if i != n {
		if !l.down(i) {
			l.up(i)
		}
	}
	if cap(l.items) > 64 && len(l.items) < cap(l.items)/4 {
		l.items = append([]*part(nil), l.items...) // let a drained lane's array go
	}
}

func (l *lane) swap(i, j int) {
	l.items[i], l.items[j] = l.items[j], l.items[i]
	l.items[i].pos, l.items[j].pos = int32(i), int32(j)
}

func (l *lane) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !partLess(l.items[i], l.items[p]) {
			return
		}
		l.swap(i, p)
		i = p
	}
}

func (l *lane) down(i int) bool {
	start := i
	n := len(l.items)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && partLess(l.items[r], l.items[c]) {
			c = r
		}
		if !partLess(l.items[c], l.items[i]) {
			break
		}
		l.swap(i, c)
		i = c
	}
	return i > start
}

// laneHeap orders lanes by readyAt.
type laneHeap []*lane

func (h *laneHeap) push(l *lane) {
	l.pos = len(*h)
	*h = append(*h, l)
	h.up(l.pos)
}

func (h *laneHeap) remove(i int) {
	s := *h
	n := len(s) - 1
	if i != n {
		h.swap(i, n)
	}
	s[n].pos = -1
	s[n] = nil
	*h = s[:n]
	if i != n {
		h.fix(i)
	}
}

func (h *laneHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h laneHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}

func (h laneHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[i].readyAt() >= h[p].readyAt() {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h laneHeap) down(i int) bool {
	start := i
	n := len(h)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h[r].readyAt() < h[c].readyAt() {
			c = r
		}
		if h[c].readyAt() >= h[i].readyAt() {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > start
}

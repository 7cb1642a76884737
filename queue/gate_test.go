package queue

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeGate admits attempts per domain up to a limit at once, refuses with
// what a test scripts, and counts the questions it is asked.
type fakeGate struct {
	mu     sync.Mutex
	limit  map[string]int           // attempts at once per domain; absent: no limit
	refuse map[string]Admission     // a scripted refusal, by domain
	active map[string]int           // attempts admitted and not released
	peak   map[string]int           // the most active at once
	freed  map[string]chan struct{} // closed when a slot of the domain frees
	asked  map[string]int           // Admit calls per domain
	dests  []Dest                   // every Dest admitted, in order
}

func newFakeGate() *fakeGate {
	return &fakeGate{limit: map[string]int{}, refuse: map[string]Admission{}, active: map[string]int{},
		peak: map[string]int{}, freed: map[string]chan struct{}{}, asked: map[string]int{}}
}

func (g *fakeGate) Admit(d Dest, now time.Time) Admission {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked[d.Domain]++
	if a, ok := g.refuse[d.Domain]; ok && !(d.Retry && !a.Suspended.IsZero()) {
		return a // an operator's retry passes a suspension, as the Gate contract says
	}
	if lim, ok := g.limit[d.Domain]; ok && g.active[d.Domain] >= lim {
		ch := g.freed[d.Domain]
		if ch == nil {
			ch = make(chan struct{})
			g.freed[d.Domain] = ch
		}
		return Admission{Wait: ch}
	}
	g.active[d.Domain]++
	g.peak[d.Domain] = max(g.peak[d.Domain], g.active[d.Domain])
	g.dests = append(g.dests, d)
	var once sync.Once
	return Admission{Release: func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.active[d.Domain]--
			if ch := g.freed[d.Domain]; ch != nil {
				close(ch)
				delete(g.freed, d.Domain)
			}
		})
	}}
}

// set changes the gate under its lock.
func (g *fakeGate) set(f func(g *fakeGate)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

func (g *fakeGate) questions(domain string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.asked[domain]
}

// withGate makes the harness open its queue with g.
func (h *harness) withGate(g *fakeGate, workers int) {
	h.opts = func(o *Options) {
		o.Gate = g
		if workers > 0 {
			o.Workers = workers
		}
	}
}

// callsTo counts the deliveries made to domain so far.
func (f *fakeDeliverer) callsTo(domain string) int {
	n := 0
	for _, c := range f.Calls() {
		if c.Domain == domain {
			n++
		}
	}
	return n
}

// TestGateIsolatesABusyDestination: a destination allowed one attempt at
// a time, whose attempt hangs, gets no second worker while it hangs; a
// message to another domain goes through meanwhile, and the busy
// destination's other messages follow one at a time once the first
// attempt ends. The Gate is asked about the busy lane once per change,
// not once per message per round.
func TestGateIsolatesABusyDestination(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	g.limit["slow.test"] = 1
	h.withGate(g, 4)
	hang := make(chan struct{})
	h.fake.blockDomain = map[string]chan struct{}{"slow.test": hang}
	q := h.open()
	var slow []string
	for i := range 5 {
		slow = append(slow, h.enqueue("a@x.test", "m\r\n", fmt.Sprintf("r%d@slow.test", i)))
	}
	fast := h.enqueue("a@x.test", "m\r\n", "b@fast.test")
	q.Start()

	// fast's attempt is recorded while slow's first one hangs.
	for id := range h.done {
		if formatID(id) == fast {
			break
		}
	}
	if got := <-h.finals; got.ID != fast {
		t.Fatalf("first final %s, want %s", got.ID, fast)
	}
	if n := h.fake.callsTo("slow.test"); n != 1 {
		t.Errorf("%d attempts at slow.test while its first one hangs, want 1", n)
	}
	if n := g.questions("slow.test"); n > 2 {
		t.Errorf("the Gate was asked %d times about slow.test before its attempt ended, want at most 2 (one admitted, one refused that parks the lane)", n)
	}

	close(hang)
	for range 5 {
		<-h.finals
	}
	if n, peak := h.fake.callsTo("slow.test"), g.peak["slow.test"]; n != 5 || peak != 1 {
		t.Errorf("slow.test: %d attempts, %d at once at most; want 5, 1", n, peak)
	}
	for _, id := range slow {
		if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s not delivered: %v", id, err)
		}
	}
}

// TestGateSuspendedDefers: the due recipients of a suspended destination
// are deferred to the end of the suspension in the lease transaction,
// with the Gate's reply, without an attempt and without counting one;
// when the suspension ends they are delivered.
func TestGateSuspendedDefers(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	until := t0.Add(10 * time.Minute)
	why := rp(0, "4.4.1", "delivery temporarily suspended: connect to mx.dead.test: connection refused")
	g.refuse["dead.test"] = Admission{Until: until, Suspended: why}
	h.withGate(g, 0)
	q := h.open()
	var ids []string
	for range 3 {
		ids = append(ids, h.enqueue("a@x.test", "m\r\n", "b@dead.test", "c@dead.test"))
	}
	q.Start()
	eventually(t, "the suspended destination's recipients deferred", func() bool {
		return q.Depth()[StateDeferred] == 3
	})
	for _, id := range ids {
		for _, r := range h.get(id).Rcpts {
			if r.State != StateDeferred || r.Attempts != 0 || !r.NextAttempt.Equal(until) || r.LastReply != why || r.RemoteMTA != "" {
				t.Errorf("%s %s: %+v; want deferred to %v with %q, no attempt", id, r.Address, r, until, why)
			}
		}
	}
	if n := len(h.fake.Calls()); n != 0 {
		t.Errorf("%d attempts at a suspended destination", n)
	}
	if n := h.logs.FilterMessage("delivery suspended").Len(); n != 6 {
		t.Errorf("%d \"delivery suspended\" lines, want 6 (one per recipient)", n)
	}

	g.set(func(g *fakeGate) { delete(g.refuse, "dead.test") })
	h.advance(10 * time.Minute)
	for range 3 {
		if m := <-h.finals; m.Rcpts[0].Attempts != 1 {
			t.Errorf("%s delivered at attempt %d, want 1: a deferral is not an attempt", m.ID, m.Rcpts[0].Attempts)
		}
	}
}

// TestGateParksUntil: a refusal with a time (a rate limit's next slot)
// parks the lane: the Gate is not asked about it again before then,
// however many rounds other work makes, and the message goes at that
// time.
func TestGateParksUntil(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	g.refuse["rate.test"] = Admission{Until: t0.Add(30 * time.Second)}
	h.withGate(g, 0)
	q := h.open()
	id := h.enqueue("a@x.test", "m\r\n", "b@rate.test")
	q.Start()
	eventually(t, "the Gate asked about rate.test", func() bool { return g.questions("rate.test") > 0 })
	for i := range 3 { // rounds of the dispatcher, each after an attempt elsewhere
		h.enqueue("a@x.test", "m\r\n", fmt.Sprintf("b%d@other.test", i))
		<-h.finals
	}
	if n := g.questions("rate.test"); n != 1 {
		t.Errorf("asked %d times about a lane parked until its time, want 1", n)
	}
	if n := h.fake.callsTo("rate.test"); n != 0 {
		t.Fatalf("%d attempts at rate.test before its time", n)
	}
	g.set(func(g *fakeGate) { delete(g.refuse, "rate.test") })
	h.advance(30 * time.Second)
	if m := <-h.finals; m.ID != id {
		t.Errorf("delivered %s, want %s", m.ID, id)
	}
}

// TestLeaseCostWithGatedHead: a lease with a thousand due messages at a
// refused destination ahead of one that may go asks the Gate about the
// refused lane once, not once per message, and later leases do not ask
// again while it is parked.
func TestLeaseCostWithGatedHead(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	g.limit["gated.test"] = 0
	h.withGate(g, 0)
	q := h.open()
	fillTo(t, q, 1000, t0.Add(-time.Minute), "b@gated.test")
	fillTo(t, q, 1, t0, "b@ok.test")
	for i := range 3 {
		jobs, next, err := q.lease(t0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 1, false: 0}[i == 0]; len(jobs) != want {
			t.Fatalf("lease %d: %d jobs, want %d", i, len(jobs), want)
		}
		for _, j := range jobs {
			if j.d.Domain != "ok.test" {
				t.Errorf("leased %s", j.d.Domain)
			}
			q.release(j)
		}
		// The parked lane comes back within maxIdle at the latest.
		if want := t0.Add(maxIdle); !next.Equal(want) {
			t.Errorf("lease %d: next %v, want %v", i, next, want)
		}
	}
	if n := g.questions("gated.test"); n != 1 {
		t.Errorf("asked %d times about the gated lane, want 1", n)
	}
}

// TestHandOffAsksTheGate: a new message is handed to a worker only for
// the domains the Gate admits; the rest waits, unleased, and goes through
// the dispatcher once the Gate admits it.
func TestHandOffAsksTheGate(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	g.limit["one.test"] = 0
	h.withGate(g, 0)
	q := h.open()
	h.fake.block = make(chan struct{})
	q.Start()
	id := h.enqueue("a@x.test", "m\r\n", "b@one.test", "c@two.test")
	if d := <-h.fake.called; d.Domain != "two.test" {
		t.Fatalf("handed off %s, want two.test", d.Domain)
	}
	rs := h.get(id).Rcpts
	if rs[0].Attempts != 0 || !rs[0].NextAttempt.Equal(t0) || rs[1].Attempts != 1 {
		t.Errorf("after the hand-off: %+v; want one.test unleased and due, two.test leased", rs)
	}
	g.set(func(g *fakeGate) {
		delete(g.limit, "one.test")
		if ch := g.freed["one.test"]; ch != nil {
			close(ch)
			delete(g.freed, "one.test")
		}
	})
	close(h.fake.block)
	h.wait(2)
	<-h.finals
	var got []string
	for _, d := range g.dests {
		got = append(got, d.Domain)
	}
	if !slices.Equal(got, []string{"two.test", "one.test"}) {
		t.Errorf("admitted %v, want two.test (hand-off) then one.test (dispatcher)", got)
	}
	if d := g.dests[1]; d.Sender != "x.test" || d.Attempt != 1 {
		t.Errorf("Dest %+v, want sender x.test, attempt 1", d)
	}
}

// TestIndexFollowsCommits: the in-memory schedule holds exactly the
// messages with a schedule entry after enqueues, deliveries, holds,
// deletes and a reopen.
func TestIndexFollowsCommits(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "4.3.0", "later"))
	q := h.open()
	a := h.enqueue("s@y.test", "m\r\n", "b@x.test", "c@z.test")
	b := h.enqueue("s@y.test", "m\r\n", "d@x.test")
	c := h.enqueue("", "m\r\n", "e@x.test")
	if err := q.Hold(c); err != nil {
		t.Fatal(err)
	}
	q.Start()
	h.wait(3) // a at x and at z, b
	<-h.finals
	indexed := func() map[string]string {
		q.ixMu.Lock()
		defer q.ixMu.Unlock()
		out := map[string]string{}
		for id, m := range q.ix.msgs {
			var parts []string
			for _, p := range m.parts {
				parts = append(parts, fmt.Sprintf("%s|%s@%s#%d", p.lane.key.domain, p.lane.key.sender,
					time.Unix(0, p.next).UTC().Format("15:04:05"), p.attempts))
			}
			out[formatID(id)] = fmt.Sprint(parts)
		}
		return out
	}
	want := map[string]string{a: "[x.test|y.test@10:01:00#1]"}
	if got := indexed(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("index %v, want %v (b delivered, c held)", got, want)
	}
	if err := q.Release(c); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(a); err != nil {
		t.Fatal(err)
	}
	h.wait(1) // c, released
	<-h.finals
	if got := indexed(); len(got) != 0 {
		t.Errorf("index %v, want empty", got)
	}
	_ = b

	// Reopen: the index is rebuilt from the records.
	d := h.enqueue("s@y.test", "m\r\n", "f@w.test")
	h.wait(1)
	<-h.finals
	h.fake.on("g@w.test", 1, Temporary, rp(451, "4.3.0", "later"))
	e := h.enqueue("s@y.test", "m\r\n", "g@w.test")
	h.wait(1)
	_ = d
	if err := q.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	q = h.open()
	if got, want := indexed(), map[string]string{e: "[w.test|y.test@10:01:00#1]"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("index after reopen %v, want %v", got, want)
	}
}

// fillTo inserts n one-recipient messages to rcpt due at next, through
// the staged path, as fill does.
func fillTo(tb testing.TB, q *Queue, n int, next time.Time, rcpt string) {
	tb.Helper()
	rec := &record{Env: Envelope{From: "alice@example.org"}, Created: t0, Size: 1, Next: next.UnixNano(),
		Rcpts: []Recipient{{Address: rcpt, State: StateQueued, NextAttempt: next}}}
	fillRecord(tb, q, n, rec)
}

// TestSuspensionWarnsAndExpires: recipients deferred for a suspended
// destination still get their delay warning on time, and still fail when
// their retry lifetime ends, each with its DSN, although no attempt is
// made: the deferral is cut short for each, and the queue's words quote
// the suspension.
func TestSuspensionWarnsAndExpires(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Minute, Max: time.Hour, Lifetime: 2 * time.Hour}
	g := newFakeGate()
	why := rp(0, "4.4.1", "delivery temporarily suspended: mx.dead.test: connection refused")
	g.refuse["dead.test"] = Admission{Until: t0.Add(10 * time.Hour), Suspended: why}
	h.opts = func(o *Options) { o.Gate, o.DelayWarning = g, 30*time.Minute }
	q := h.open()
	id := h.enqueue("a@x.test", "Subject: s\r\n\r\nbody\r\n", "b@dead.test")
	rcpt := func() Recipient { return h.get(id).Rcpts[0] }
	q.Start()

	eventually(t, "the deferral", func() bool { return rcpt().State == StateDeferred })
	if r := rcpt(); !r.NextAttempt.Equal(t0.Add(30*time.Minute)) || r.Attempts != 0 {
		t.Errorf("deferred to %v after %d attempts; want the delay warning's time, %v, and none", r.NextAttempt, r.Attempts, t0.Add(30*time.Minute))
	}
	h.advance(30 * time.Minute)
	warning := <-h.finals // the delay warning, delivered to a@x.test
	if warning.Envelope.From != "" || warning.Rcpts[0].Address != "a@x.test" {
		t.Fatalf("first final %+v, want the delay warning to a@x.test", warning)
	}
	eventually(t, "the second deferral", func() bool { return rcpt().NextAttempt.After(t0.Add(30 * time.Minute)) })
	if r := rcpt(); !r.NextAttempt.Equal(t0.Add(2*time.Hour+time.Nanosecond)) || r.State != StateDeferred || r.LastReply != why {
		t.Errorf("after the warning: %+v; want deferred to the end of the lifetime with %q", r, why)
	}

	h.advance(90*time.Minute + time.Nanosecond)
	m := <-h.finals // the message itself, failed
	if m.ID != id || m.Rcpts[0].State != StateFailed || m.Rcpts[0].Attempts != 0 ||
		m.Rcpts[0].LastReply.Enhanced != statusExpired || !strings.Contains(m.Rcpts[0].LastReply.Text, why.Text) {
		t.Errorf("at the end of the lifetime: %+v; want failed, 5.4.7 quoting %q, no attempt", m.Rcpts[0], why.Text)
	}
	bounce := <-h.finals // the failure DSN
	if bounce.Rcpts[0].Address != "a@x.test" {
		t.Errorf("second DSN went to %s", bounce.Rcpts[0].Address)
	}
	if n := h.fake.callsTo("dead.test"); n != 0 {
		t.Errorf("%d attempts at the suspended destination", n)
	}
}

// TestOperatorRetryPassesSuspension: Retry of a message deferred for a
// suspended destination asks the Gate with Dest.Retry, which lets it
// through; other messages there stay deferred.
func TestOperatorRetryPassesSuspension(t *testing.T) {
	h := newHarness(t)
	g := newFakeGate()
	g.refuse["dead.test"] = Admission{Until: t0.Add(time.Hour), Suspended: rp(0, "4.4.1", "delivery temporarily suspended: dead")}
	h.withGate(g, 0)
	q := h.open()
	retried := h.enqueue("a@x.test", "m\r\n", "b@dead.test")
	other := h.enqueue("a@x.test", "m\r\n", "c@dead.test")
	q.Start()
	eventually(t, "both deferred", func() bool { return q.Depth()[StateDeferred] == 2 })
	if err := q.Retry(retried); err != nil {
		t.Fatal(err)
	}
	if m := <-h.finals; m.ID != retried {
		t.Fatalf("delivered %s, want %s", m.ID, retried)
	}
	if d := g.dests[len(g.dests)-1]; !d.Retry {
		t.Errorf("admitted %+v, want Dest.Retry set", d)
	}
	if r := h.get(other).Rcpts[0]; r.State != StateDeferred || r.Attempts != 0 {
		t.Errorf("the other message: %+v, want still deferred", r)
	}
}

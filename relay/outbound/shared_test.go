package outbound

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"postern/queue/reply"
	"postern/relay/limits"
	"postern/relay/relaytest"
)

var _ SharedShaping = (*limits.Redis)(nil)

// fallbacks counts the store's fallbacks, as the metrics do.
type fallbacks struct{ n atomic.Int64 }

func (f *fallbacks) SharedFallback()  { f.n.Add(1) }
func (f *fallbacks) SharedInUse(bool) {}

// countingStore counts the calls a Shaper makes to its store.
type countingStore struct {
	SharedShaping
	calls atomic.Int64
}

func (c *countingStore) Allow(ctx context.Context, key string, events int, per time.Duration, n int) (bool, time.Duration, error) {
	c.calls.Add(1)
	return c.SharedShaping.Allow(ctx, key, events, per, n)
}

func (c *countingStore) Held(ctx context.Context, key string) (string, time.Duration, error) {
	c.calls.Add(1)
	return c.SharedShaping.Held(ctx, key)
}

func (c *countingStore) AcquireSlot(ctx context.Context, key, holder string, limit int, ttl time.Duration) (bool, error) {
	c.calls.Add(1)
	return c.SharedShaping.AcquireSlot(ctx, key, holder, limit, ttl)
}

// sharedNodes returns n Shapers configured alike, each with its own fake
// clock and its own client of one Redis, as n postern nodes sharing
// limits.redis.
func sharedNodes(t *testing.T, n int, cfg Shaping) (*relaytest.Redis, []*Shaper, []*clock, *fallbacks) {
	srv, shapers, clocks, obs, _ := countedNodes(t, n, cfg)
	return srv, shapers, clocks, obs
}

// countedNodes is sharedNodes, with each node's calls to the store counted.
func countedNodes(t *testing.T, n int, cfg Shaping) (*relaytest.Redis, []*Shaper, []*clock, *fallbacks, []*countingStore) {
	t.Helper()
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	obs := &fallbacks{}
	var shapers []*Shaper
	var clocks []*clock
	var stores []*countingStore
	for range n {
		store := limits.Open(limits.Options{Addr: srv.Addr, Prefix: "test", Observer: obs})
		t.Cleanup(func() { store.Close() })
		counted := &countingStore{SharedShaping: store}
		c := cfg
		c.Shared = counted
		s, clk := newTestShaper(c)
		shapers, clocks, stores = append(shapers, s), append(clocks, clk), append(stores, counted)
	}
	return srv, shapers, clocks, obs, stores
}

// TestSharedRate: two nodes spend one bucket per destination: 4 messages a
// second between them, not 4 each; the refusal says when the next slot
// comes (within the second), and a refused node does not ask the store
// again before that.
func TestSharedRate(t *testing.T) {
	_, nodes, clocks, obs, stores := countedNodes(t, 2, Shaping{Default: Limits{Rate: Rate{Messages: 4, Per: time.Second}}})
	for _, s := range nodes {
		known(s, "r.test", "mx.r.test")
	}
	admitted := 0
	var refusal []time.Duration
	for i := range 8 {
		s, c := nodes[i%2], clocks[i%2]
		a := s.admit("r.test", c.now(), false)
		if a.Admitted() {
			admitted++
			a.Release()
			continue
		}
		if !a.Suspended.IsZero() || a.Until.IsZero() {
			t.Fatalf("refusal %+v, want a refusal until the next slot", a)
		}
		refusal = append(refusal, a.Until.Sub(c.now()))
	}
	if admitted != 4 {
		t.Errorf("%d admitted by two nodes sharing 4/s, want 4", admitted)
	}
	for _, w := range refusal {
		if w <= 0 || w > time.Second {
			t.Errorf("refused until +%v, want within a second", w)
		}
	}
	if n := obs.n.Load(); n != 0 {
		t.Errorf("%d fallbacks with Redis up", n)
	}
	before := stores[0].calls.Load()
	for range 10 {
		if a := nodes[0].admit("r.test", clocks[0].now(), false); a.Admitted() {
			t.Fatal("admitted before the next slot")
		}
	}
	if n := stores[0].calls.Load() - before; n != 0 {
		t.Errorf("%d calls to the store for admissions refused by the last answer, want none", n)
	}
}

// TestSharedConnections: a destination limited to 2 connections has 2
// across the nodes; an attempt's end gives its slot to the other node.
func TestSharedConnections(t *testing.T) {
	_, nodes, clocks, _, stores := countedNodes(t, 2, Shaping{Default: Limits{Connections: 2}})
	a, b := nodes[0], nodes[1]
	known(a, "c.test", "mx.c.test")
	known(b, "c.test", "mx.c.test")
	first := a.admit("c.test", clocks[0].now(), false)
	second := b.admit("c.test", clocks[1].now(), false)
	if !first.Admitted() || !second.Admitted() {
		t.Fatal("the first two attempts refused")
	}
	for i, s := range nodes {
		got := s.admit("c.test", clocks[i].now(), false)
		if got.Admitted() {
			t.Fatalf("node %d admitted a third connection", i)
		}
		if got.Until.IsZero() || got.Until.Sub(clocks[i].now()) > time.Second {
			t.Errorf("node %d refused with %+v, want to be asked again soon", i, got)
		}
	}
	// B does not ask the store again for a moment: another node's slot
	// coming free signals nothing.
	first.Release()
	before := stores[1].calls.Load()
	if got := b.admit("c.test", clocks[1].now(), false); got.Admitted() || stores[1].calls.Load() != before {
		t.Errorf("B right after its refusal: %+v, %d calls to the store; want refused by what it knows", got, stores[1].calls.Load()-before)
	}
	clocks[1].advance(sharedSlotRetry)
	third := b.admit("c.test", clocks[1].now(), false)
	if !third.Admitted() {
		t.Fatal("a slot freed on node A not given to node B")
	}
	second.Release()
	third.Release()
}

// TestSharedHolds: a suspension after a rate-limit reply, and a dead
// time, decided by node A are seen by node B within a second, with the
// same deferral reply and end; a slow-down lowers B's rate too.
func TestSharedHolds(t *testing.T) {
	_, nodes, clocks, _ := sharedNodes(t, 2, Shaping{
		Providers:         []Provider{{Name: "big", MXSuffixes: []string{".big.test"}}},
		RateLimitPatterns: testPatterns,
	})
	a, b := nodes[0], nodes[1]
	for _, s := range nodes {
		known(s, "big.test", "mx.big.test")
		known(s, "dead.test", "mx.dead.test")
	}
	// B has read the store just now: it holds nothing yet.
	if got := b.admit("big.test", clocks[1].now(), false); !got.Admitted() {
		t.Fatalf("before any hold: %+v", got)
	} else {
		got.Release()
	}

	// A is told to slow down 4 times in a row (each doubling the
	// suspension, 2s+4s+8s+16s: beyond a moment, so that the queue
	// defers with the reason).
	dA := a.units["mx.big.test"]
	for range 4 {
		r := rateLimited
		a.report(dA, attemptReport{started: clocks[0].now(), rateLimited: &r, pattern: testPatterns[0], answered: true})
	}
	pA := a.units["big"]
	want := suspendedReply(rateLimited)
	if got := b.admit("big.test", clocks[1].now(), false); !got.Admitted() {
		t.Fatalf("B asked the store again within a second: %+v", got)
	} else {
		got.Release()
	}
	clocks[1].advance(sharedHeldEvery)
	got := b.admit("big.test", clocks[1].now(), false)
	if got.Admitted() || got.Suspended != want {
		t.Fatalf("B after A's suspension: %+v, want deferred with %q", got, want)
	}
	if left, wantLeft := got.Until.Sub(clocks[1].now()), pA.suspended.Sub(clocks[0].now()); left > wantLeft || left < wantLeft-2*time.Second {
		t.Errorf("B suspended for %v, A for %v", left, wantLeft)
	}
	pB := b.units["big"]
	if pB.rate != pA.rate || pB.rate == 0 {
		t.Errorf("B's rate %v, A's %v: want A's lowered rate on B", pB.rate, pA.rate)
	}
	if d := pB.describe(clocks[1].now()); d.State != "suspended" {
		t.Errorf("B describes the provider as %q, want suspended", d.State)
	}
	// An operator's retry on B goes through, as on A.
	if f := b.admit("big.test", clocks[1].now(), true); !f.Admitted() {
		t.Errorf("an operator's retry on B: %+v", f)
	} else {
		f.Release()
	}

	// Dead: two attempts in a row whose hosts do not answer, on A.
	cause := reply.Reply{Enhanced: reply.MustEnhanced("4.4.1"), Text: "mx.dead.test[192.0.2.1]: connection refused"}
	dead := a.units["mx.dead.test"]
	for range DefaultDeadAfter {
		a.report(dead, attemptReport{started: clocks[0].now(), connFails: 1, connCause: cause})
	}
	clocks[1].advance(sharedHeldEvery)
	got = b.admit("dead.test", clocks[1].now(), false)
	if want := suspendedReply(cause); got.Admitted() || got.Suspended != want {
		t.Fatalf("B after A found it dead: %+v, want deferred with %q", got, want)
	}
	if d := b.units["mx.dead.test"].describe(clocks[1].now()); d.State != "dead" {
		t.Errorf("B describes the destination as %q, want dead", d.State)
	}
}

// TestSharedRedisDown: with Redis gone, each node shapes by its own
// limits, without waiting for Redis, and counts the fallbacks; once it is
// back, the nodes share again.
func TestSharedRedisDown(t *testing.T) {
	srv, nodes, clocks, obs := sharedNodes(t, 2, Shaping{Default: Limits{Connections: 1, Rate: Rate{Messages: 2, Per: time.Second}}})
	for _, s := range nodes {
		known(s, "d.test", "mx.d.test")
	}
	srv.Kill()
	start := time.Now()
	for i, s := range nodes {
		first := s.admit("d.test", clocks[i].now(), false)
		if !first.Admitted() {
			t.Fatalf("node %d with Redis down: %+v, want its own limit to admit", i, first)
		}
		if again := s.admit("d.test", clocks[i].now(), false); again.Admitted() || again.Wait == nil {
			t.Errorf("node %d: a second connection with Redis down: %+v, want its own cap of 1", i, again)
		}
		first.Release()
		if again := s.admit("d.test", clocks[i].now(), false); !again.Admitted() {
			t.Errorf("node %d: its second message of 2/s refused", i)
		} else {
			again.Release()
		}
		if again := s.admit("d.test", clocks[i].now(), false); again.Admitted() || again.Until.IsZero() {
			t.Errorf("node %d: a third message of 2/s: %+v, want its own rate to refuse", i, again)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("admissions with Redis down took %v", took)
	}
	if obs.n.Load() == 0 {
		t.Error("no fallback counted")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the store's pause after a failure
	for i := range clocks {
		clocks[i].advance(time.Second)
	}
	first := nodes[0].admit("d.test", clocks[0].now(), false)
	if !first.Admitted() {
		t.Fatalf("after Redis is back: %+v", first)
	}
	if other := nodes[1].admit("d.test", clocks[1].now(), false); other.Admitted() {
		t.Error("after Redis is back, the nodes do not share the connection cap")
	}
	first.Release()
}

// TestSharedRedisHangs: a Redis that accepts connections and never
// answers costs an admission at most the store's timeout (100 ms), once,
// and then nothing while the store pauses; the node's own limits admit.
func TestSharedRedisHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	// Open's own ping times out and pauses the store; the admissions
	// come after the pause, so the first meets the timeout itself.
	store := limits.Open(limits.Options{Addr: ln.Addr().String(), Prefix: "test", Pause: 200 * time.Millisecond})
	t.Cleanup(func() { store.Close() })
	time.Sleep(250 * time.Millisecond)
	s, c := newTestShaper(Shaping{Default: Limits{Connections: 5, Rate: Rate{Messages: 5, Per: time.Second}}, Shared: store})
	known(s, "h.test", "mx.h.test")
	var slowest, total time.Duration
	for i := range 5 {
		c.advance(sharedHeldEvery) // a read of the holds each time
		start := time.Now()
		a := s.admit("h.test", c.now(), false)
		took := time.Since(start)
		slowest, total = max(slowest, took), total+took
		if !a.Admitted() {
			t.Fatalf("admission %d with Redis hanging: %+v, want the node's own limits to admit", i, a)
		}
		defer a.Release()
	}
	// One timeout at most (the store then pauses for a second), with
	// room for a slow machine under -race.
	t.Logf("slowest admission %v, all %v", slowest, total)
	if slowest < limits.DefaultTimeout {
		t.Error("no admission met the timeout: the test did not test it")
	}
	if slowest > 400*time.Millisecond || total > 500*time.Millisecond {
		t.Errorf("admissions with Redis hanging: the slowest took %v, all %v; want about one 100 ms timeout in all", slowest, total)
	}
}

// TestSharedAdmitConcurrent: workers admit at once (the PostgreSQL queue's
// do, unlike bbolt's dispatcher) while the fleet is full and slots come
// and go; run with -race, it catches a unit read outside s.mu.
func TestSharedAdmitConcurrent(t *testing.T) {
	_, nodes, clocks, _ := sharedNodes(t, 2, Shaping{Default: Limits{Connections: 2}})
	for _, s := range nodes {
		known(s, "c.test", "mx.c.test")
	}
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := w % 2
			for range 50 {
				a := nodes[n].admit("c.test", clocks[n].now(), false)
				if a.Admitted() {
					admitted.Add(1)
					a.Release()
				} else if a.Wait != nil {
					select {
					case <-a.Wait:
					case <-time.After(5 * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
	if admitted.Load() == 0 {
		t.Error("nothing admitted")
	}
}

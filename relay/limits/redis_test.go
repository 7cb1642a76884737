package limits_test

import (
	"context"
	"errors"
	"net"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"postern/relay/limits"
	"postern/relay/relaytest"
)

// counts is an Observer that remembers.
type counts struct {
	fallbacks atomic.Int64
	up        atomic.Int32 // 1 up, -1 down, 0 not told yet
}

func (c *counts) SharedFallback() { c.fallbacks.Add(1) }
func (c *counts) SharedInUse(up bool) {
	if up {
		c.up.Store(1)
	} else {
		c.up.Store(-1)
	}
}

// node opens a client of srv as one postern node would.
func node(t *testing.T, addr string, obs limits.Observer) *limits.Redis {
	t.Helper()
	r := limits.Open(limits.Options{Addr: addr, Prefix: "test", Pause: 50 * time.Millisecond, Observer: obs})
	t.Cleanup(func() { r.Close() })
	return r
}

// Two nodes share one allowance: 5 per hour in total, whichever node
// spends it, and the sixth is refused with the wait until one refills.
func TestAllowSharedQuota(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := node(t, srv.Addr, nil), node(t, srv.Addr, nil)
	ctx := context.Background()
	for i, n := range []*limits.Redis{a, b, a, b, a} {
		ok, _, err := n.Allow(ctx, "user-messages:alice", 5, time.Hour, 1)
		if err != nil || !ok {
			t.Fatalf("event %d: ok %v, err %v; want allowed", i+1, ok, err)
		}
	}
	for _, n := range []*limits.Redis{a, b} {
		ok, wait, err := n.Allow(ctx, "user-messages:alice", 5, time.Hour, 1)
		if err != nil || ok {
			t.Fatalf("event 6: ok %v, err %v; want refused", ok, err)
		}
		// One event refills every 12 minutes.
		if wait <= 11*time.Minute || wait > 12*time.Minute {
			t.Errorf("retry after %v, want just under 12m", wait)
		}
	}
	// Another user, and the same name under another scope, are apart.
	for _, k := range []string{"user-messages:bob", "user-recipients:alice"} {
		if ok, _, err := a.Allow(ctx, k, 5, time.Hour, 1); err != nil || !ok {
			t.Errorf("%s: ok %v, err %v; want allowed", k, ok, err)
		}
	}
	// Every key starts with the prefix (redis_rate's own "rate:" is taken
	// off, so an ACL's ~test:* covers them), shows its scope, hides the
	// name, and expires.
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 {
		t.Errorf("keys %q, want 3", keys)
	}
	for _, k := range keys {
		if !regexp.MustCompile(`^test:rate:user-(messages|recipients):[0-9a-f]{32}$`).MatchString(k) {
			t.Errorf("key %q", k)
		}
		if ttl := raw.TTL(ctx, k).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("key %q expires in %v, want within the hour", k, ttl)
		}
	}
}

// Keys a client chooses cannot collide with others: the name is hashed, so
// "alice:x" under one scope is not the scope "alice" and so on.
func TestAllowKeysDoNotCollide(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a := node(t, srv.Addr, nil)
	ctx := context.Background()
	for _, k := range []string{"user-messages:alice", "user-messages:ALICE", "user-messages:alice\r\nFLUSHALL", "user-messages:alice*", "USER-MESSAGES:alice", "alice", ""} {
		if ok, _, err := a.Allow(ctx, k, 1, time.Hour, 1); err != nil || !ok {
			t.Errorf("%q: ok %v, err %v; want its own allowance", k, ok, err)
		}
	}
}

// A Redis that goes away makes calls fail fast (the caller then uses its
// own limiter), counts each fallback, and is used again once it is back.
func TestAllowFallbackAndRecovery(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	var obs counts
	a := node(t, srv.Addr, &obs)
	ctx := context.Background()
	if ok, _, err := a.Allow(ctx, "ip-connections:192.0.2.1", 10, time.Minute, 1); err != nil || !ok {
		t.Fatalf("before the outage: ok %v, err %v", ok, err)
	}
	if obs.up.Load() != 1 {
		t.Fatalf("state %d, want up", obs.up.Load())
	}

	srv.Kill()
	start := time.Now()
	for i := range 20 {
		if _, _, err := a.Allow(ctx, "ip-connections:192.0.2.1", 10, time.Minute, 1); err == nil {
			t.Fatalf("call %d during the outage succeeded", i)
		}
	}
	// 20 calls, each bounded by the 100ms timeout, and most not even
	// trying (the pause after a failure).
	if d := time.Since(start); d > time.Second {
		t.Errorf("20 calls during the outage took %v", d)
	}
	if got := obs.fallbacks.Load(); got != 20 {
		t.Errorf("fallbacks %d, want 20", got)
	}
	if obs.up.Load() != -1 {
		t.Errorf("state %d during the outage, want down", obs.up.Load())
	}
	_, _, err := a.Allow(ctx, "ip-connections:192.0.2.1", 10, time.Minute, 1)
	if !errors.Is(err, limits.ErrUnavailable) {
		t.Logf("during the pause: %v (a call may have tried Redis again)", err)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, _, err := a.Allow(ctx, "ip-connections:192.0.2.1", 10, time.Minute, 1)
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis is back but calls still fail: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if obs.up.Load() != 1 {
		t.Errorf("state %d after recovery, want up", obs.up.Load())
	}
}

// Failures count across nodes and end in one cool-down for all.
func TestFailuresShared(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := node(t, srv.Addr, nil), node(t, srv.Addr, nil)
	ctx := context.Background()
	for i, n := range []*limits.Redis{a, b, a} {
		if err := n.AddFailure(ctx, "client:192.0.2.1", time.Minute, 4, time.Hour); err != nil {
			t.Fatal(err)
		}
		got, cool, err := b.Failures(ctx, "client:192.0.2.1", time.Minute)
		if err != nil || got != i+1 || cool != 0 {
			t.Fatalf("after %d failures: %d, cool-down %v, err %v", i+1, got, cool, err)
		}
	}
	if err := b.AddFailure(ctx, "client:192.0.2.1", time.Minute, 4, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, cool, err := a.Failures(ctx, "client:192.0.2.1", time.Minute)
	if err != nil || got != 0 || cool <= 59*time.Minute {
		t.Fatalf("at the limit: %d failures, cool-down %v, err %v; want a 1h cool-down", got, cool, err)
	}
	// A short window forgets.
	if err := a.AddFailure(ctx, "user:alice", 50*time.Millisecond, 4, time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(80 * time.Millisecond)
	if got, _, err := b.Failures(ctx, "user:alice", 50*time.Millisecond); err != nil || got != 0 {
		t.Errorf("after the window: %d failures, err %v; want 0", got, err)
	}
}

// One node's PublishUsersChanged reaches the others, not itself; and a
// watcher that lost its subscription assumes it missed one.
func TestUsersChanged(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := node(t, srv.Addr, nil), node(t, srv.Addr, nil)
	gotA, gotB := make(chan struct{}, 10), make(chan struct{}, 10)
	a.WatchUsersChanged(func() { gotA <- struct{}{} })
	b.WatchUsersChanged(func() { gotB <- struct{}{} })
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no invalidation", what)
		}
	}
	// The subscriptions are made in the background: publish until b hears.
	deadline := time.Now().Add(5 * time.Second)
	for heard := false; !heard; {
		if err := a.PublishUsersChanged(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-gotB:
			heard = true
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("b never heard a's invalidation")
			}
		}
	}
	select {
	case <-gotA:
		t.Error("a heard its own invalidation")
	case <-time.After(100 * time.Millisecond):
	}

	srv.Kill()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	wait(gotB, "b after the outage")
	wait(gotA, "a after the outage")
}

// A Redis that accepts connections and never answers (a hung server, a
// lost host behind a live proxy) costs a call its timeout, not more, and
// the calls after it nothing until the pause ends.
func TestAllowHungRedis(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var held []net.Conn // kept open, never read
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	var obs counts
	r := limits.Open(limits.Options{Addr: l.Addr().String(), Timeout: 50 * time.Millisecond, Pause: 300 * time.Millisecond, Observer: &obs})
	t.Cleanup(func() { r.Close() })
	if obs.up.Load() != -1 || obs.fallbacks.Load() != 0 {
		t.Fatalf("after Open: state %d, %d fallbacks; want down and none (the ping is no limit check)", obs.up.Load(), obs.fallbacks.Load())
	}
	time.Sleep(350 * time.Millisecond) // past the pause Open's failure began
	call := func() time.Duration {
		start := time.Now()
		if _, _, err := r.Allow(context.Background(), "user-messages:alice", 3, time.Hour, 1); err == nil {
			t.Fatal("a hung Redis answered")
		}
		return time.Since(start)
	}
	if d := call(); d < 40*time.Millisecond || d > 250*time.Millisecond {
		t.Errorf("a call to a hung Redis took %v, want about the 50ms timeout", d)
	}
	var total time.Duration
	for range 10 {
		total += call()
	}
	if total > 40*time.Millisecond {
		t.Errorf("10 calls during the pause took %v, want next to nothing", total)
	}
	if got := obs.fallbacks.Load(); got != 11 {
		t.Errorf("fallbacks %d, want 11", got)
	}
}

package limits_test

import (
	"context"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// TestHold: a hold is seen by every node until its TTL ends; a shorter
// one does not cut a longer one short, a longer one extends it.
func TestHold(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := node(t, srv.Addr, nil), node(t, srv.Addr, nil)
	ctx := context.Background()
	if v, ttl, err := b.Held(ctx, "provider:gmail"); err != nil || v != "" || ttl != 0 {
		t.Fatalf("before any hold: %q %v %v, want nothing", v, ttl, err)
	}
	for _, step := range []struct {
		value   string
		ttl     time.Duration
		want    string
		atLeast time.Duration
	}{
		{"first", time.Minute, "first", 59 * time.Second},
		{"shorter", time.Second, "first", 59 * time.Second},
		{"longer", time.Hour, "longer", 59 * time.Minute},
	} {
		if err := a.Hold(ctx, "provider:gmail", step.value, step.ttl); err != nil {
			t.Fatal(err)
		}
		v, ttl, err := b.Held(ctx, "provider:gmail")
		if err != nil || v != step.want || ttl < step.atLeast || ttl > time.Hour {
			t.Errorf("after holding %q for %v: %q for %v (%v), want %q for at least %v", step.value, step.ttl, v, ttl, err, step.want, step.atLeast)
		}
	}
	if v, _, _ := b.Held(ctx, "provider:other"); v != "" {
		t.Errorf("another key holds %q", v)
	}
}

// TestSlots: a limit of 2 slots across two nodes; a released slot can be
// taken again; a holder that is never released (its node died) frees its
// slot when its TTL ends, unless renewed.
func TestSlots(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := node(t, srv.Addr, nil), node(t, srv.Addr, nil)
	ctx := context.Background()
	const key = "destination:mx.example.test"
	acquire := func(n interface {
		AcquireSlot(context.Context, string, string, int, time.Duration) (bool, error)
	}, holder string, ttl time.Duration) bool {
		ok, err := n.AcquireSlot(ctx, key, holder, 2, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !acquire(a, "a1", time.Minute) || !acquire(b, "b1", 300*time.Millisecond) {
		t.Fatal("the first two slots refused")
	}
	if acquire(a, "a2", time.Minute) || acquire(b, "b2", time.Minute) {
		t.Fatal("a third slot taken")
	}
	if err := a.ReleaseSlot(ctx, key, "a1"); err != nil {
		t.Fatal(err)
	}
	if !acquire(b, "b2", time.Minute) {
		t.Fatal("a released slot not given again")
	}
	// b1 is renewed once, then left to expire.
	if err := b.RenewSlots(ctx, key, []string{"b1"}, 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if acquire(a, "a3", time.Minute) {
		t.Fatal("a renewed slot taken before its new expiry")
	}
	time.Sleep(300 * time.Millisecond)
	if !acquire(a, "a3", time.Minute) {
		t.Fatal("an expired holder's slot not given back")
	}
}

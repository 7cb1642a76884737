package auth_test

import (
	"testing"
	"time"

	"postern/auth"
	"postern/relay/limits"
	"postern/relay/relaytest"
)

var _ auth.SharedFailures = (*limits.Redis)(nil)

// sharedThrottle is one node's Throttle with its own client of the store
// at addr.
func sharedThrottle(t *testing.T, addr string) *auth.Throttle {
	t.Helper()
	r := limits.Open(limits.Options{Addr: addr, Prefix: "auth-test", Pause: 50 * time.Millisecond})
	t.Cleanup(func() { r.Close() })
	return &auth.Throttle{MaxFailures: 2, Window: time.Hour, Cooldown: time.Hour, Shared: r}
}

// Failures are counted across the nodes sharing a store: a guesser that
// spreads over them is slowed and then refused as on one node.
func TestThrottleShared(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	a, b := sharedThrottle(t, srv.Addr), sharedThrottle(t, srv.Addr)

	// Per client network: one failure on each node makes MaxFailures.
	a.Failure("192.0.2.1", "")
	if v := b.Check("192.0.2.1", ""); v.Delay != 0 || v.Refuse {
		t.Fatalf("after 1 failure: %+v, want go ahead", v)
	}
	b.Failure("192.0.2.1", "")
	for name, th := range map[string]*auth.Throttle{"a": a, "b": b} {
		if v := th.Check("192.0.2.1", ""); v.Delay != time.Second || v.By != "client" {
			t.Errorf("node %s after 2 failures: %+v, want a 1s delay by client", name, v)
		}
	}
	a.Failure("192.0.2.1", "")
	b.Failure("192.0.2.1", "")
	for name, th := range map[string]*auth.Throttle{"a": a, "b": b} {
		if v := th.Check("192.0.2.1", ""); !v.Refuse || v.RetryAfter < 59*time.Minute {
			t.Errorf("node %s after 4 failures: %+v, want refused for about 1h", name, v)
		}
	}

	// Per user name, from networks and nodes that differ each time.
	a.Failure("198.51.100.1", "Alice")
	b.Failure("198.51.100.2", "alice")
	if v := a.Check("198.51.100.3", "ALICE"); v.Delay != time.Second || v.By != "user" {
		t.Errorf("alice after 2 failures: %+v, want a 1s delay by user", v)
	}
	// The owner logged in from 203.0.113.9 through b: a spares it too.
	b.Success("203.0.113.9", "alice")
	if v := a.Check("203.0.113.9", "alice"); v.Delay != 0 || v.Refuse {
		t.Errorf("alice from her known network on the other node: %+v, want go ahead", v)
	}

	// The store goes: each node's own counters decide. b has seen two
	// failures of 192.0.2.1 itself (below the cool-down it would have
	// started alone), and none from 192.0.2.50.
	srv.Kill()
	if v := b.Check("192.0.2.1", ""); v.Refuse || v.Delay != time.Second {
		t.Errorf("b during the outage: %+v, want its own count (a 1s delay)", v)
	}
	if v := b.Check("192.0.2.50", ""); v.Refuse || v.Delay != 0 {
		t.Errorf("a new client during the outage: %+v, want go ahead", v)
	}
}

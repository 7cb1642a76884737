package auth

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"postern/relay/limits"
	"postern/relay/relaytest"
)

var _ Peers = (*limits.Redis)(nil)

// A users file change that one server notices empties the cache of
// verified passwords on the other servers sharing the store, and they do
// not echo it back.
func TestCacheInvalidatedByPeers(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	path := filepath.Join(t.TempDir(), "users")
	if err := Add(path, alice, "pw", nil); err != nil {
		t.Fatal(err)
	}
	type server struct {
		*cachedStore
		shared *limits.Redis
		heard  atomic.Int32
	}
	mk := func() *server {
		s := &server{cachedStore: openCachedStore(t, path)}
		s.shared = limits.Open(limits.Options{Addr: srv.Addr, Prefix: "peers-test"})
		t.Cleanup(func() { s.shared.Close() })
		s.Peers = s.shared
		s.shared.WatchUsersChanged(func() { s.heard.Add(1); s.Invalidate() })
		return s
	}
	a, b := mk(), mk()
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	// The subscriptions are made in the background: wait until b hears a.
	eventually("b never heard a", func() bool {
		a.shared.PublishUsersChanged(context.Background())
		time.Sleep(20 * time.Millisecond)
		return b.heard.Load() > 0
	})
	b.heard.Store(0)
	time.Sleep(100 * time.Millisecond)
	a.heard.Store(0)

	b.want(alice, "pw", true, 1)
	b.want(alice, "pw", true, 0) // cached
	if err := SetPassword(path, alice, "new"); err != nil {
		t.Fatal(err)
	}
	// a notices the change at its next attempt and tells b.
	a.want(alice, "new", true, 1)
	eventually("b's cache was not emptied", func() bool { return b.cache.len() == 0 })
	if n := b.heard.Load(); n != 1 {
		t.Errorf("b heard %d notices, want 1", n)
	}
	// b reloaded on the notice: it does not notice the change again, and
	// so tells nobody; a hears nothing back.
	b.want(alice, "new", true, 1)
	time.Sleep(200 * time.Millisecond)
	if n := a.heard.Load(); n != 0 {
		t.Errorf("a heard %d notices back, want 0", n)
	}
}

package auth

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"
)

// cachedStore is a Store on a users file with alice@example.test (password
// "pw"), the verified-credentials cache on for an hour, and a count of its
// full checks.
type cachedStore struct {
	*Store
	t        *testing.T
	path     string
	ft       *fakeTime
	logs     *observer.ObservedLogs
	compares atomic.Int32
}

func newCachedStore(t *testing.T) *cachedStore {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := Add(path, "alice@example.test", "pw", nil); err != nil {
		t.Fatal(err)
	}
	return openCachedStore(t, path)
}

// openCachedStore is newCachedStore on an existing users file.
func openCachedStore(t *testing.T, path string) *cachedStore {
	t.Helper()
	s, ft, logs := newTestStore(t, path)
	s.CacheTTL = time.Hour
	c := &cachedStore{Store: s, t: t, path: path, ft: ft, logs: logs}
	s.compare = func(hash, pw []byte) error {
		c.compares.Add(1)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	return c
}

// auth authenticates and returns whether it succeeded and how many full
// checks it ran.
func (c *cachedStore) auth(name, pw string) (ok bool, fullChecks int) {
	c.t.Helper()
	before := c.compares.Load()
	_, err := c.Authenticate(context.Background(), name, pw)
	if err != nil && !errors.Is(err, ErrInvalidCredentials) {
		c.t.Fatalf("Authenticate(%s): %v", name, err)
	}
	return err == nil, int(c.compares.Load() - before)
}

// want checks one authentication's outcome and its number of full checks.
func (c *cachedStore) want(name, pw string, wantOK bool, wantChecks int) {
	c.t.Helper()
	ok, n := c.auth(name, pw)
	if ok != wantOK || n != wantChecks {
		c.t.Errorf("Authenticate(%s, %q): ok=%v with %d full check(s), want ok=%v with %d", name, pw, ok, n, wantOK, wantChecks)
	}
}

const alice = "alice@example.test"

func TestCacheHit(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1) // the first AUTH after start is a full check
	c.want(alice, "pw", true, 0)
	c.want("ALICE@Example.Test", "pw", true, 0) // names ignore case
	if n := c.logs.FilterMessage("credentials verified").FilterField(zap.String("by", "cache")).Len(); n != 2 {
		t.Errorf("%d cache hits logged, want 2", n)
	}
}

func TestCacheFreshStoreChecksInFull(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw", true, 0)
	// A new process (a new Store) knows nothing of the old one's cache,
	// nor its key.
	d := openCachedStore(t, c.path)
	d.want(alice, "pw", true, 1)
	d.want(alice, "pw", true, 0)
	if c.cache.key == d.cache.key {
		t.Error("two Stores share a cache key")
	}
}

func TestCacheOtherPasswordChecksInFull(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw2", false, 1)
	c.want(alice, "PW", false, 1)
	c.want(alice, "pw ", false, 1)
	// A failure neither evicts the good entry nor adds one of its own.
	c.want(alice, "pw", true, 0)
	c.want(alice, "pw2", false, 1)
}

func TestCacheNeverStoresFailures(t *testing.T) {
	c := newCachedStore(t)
	for range 3 {
		c.want(alice, "wrong", false, 1)
		c.want("nobody@example.test", "pw", false, 1) // the dummy hash
	}
	if n := c.cache.len(); n != 0 {
		t.Errorf("%d cache entries after failures only", n)
	}
}

func TestCacheChangedPassword(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw", true, 0)
	if err := SetPassword(c.path, alice, "new"); err != nil {
		t.Fatal(err)
	}
	c.want(alice, "pw", false, 1)
	c.want(alice, "new", true, 1)
	c.want(alice, "new", true, 0)
}

func TestCacheDeletedUser(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	if err := Delete(c.path, alice); err != nil {
		t.Fatal(err)
	}
	c.want(alice, "pw", false, 1)
	if n := c.cache.len(); n != 0 {
		t.Errorf("%d cache entries after the only user was deleted", n)
	}
	// Added again with the same password: a new hash, a full check.
	if err := Add(c.path, alice, "pw", nil); err != nil {
		t.Fatal(err)
	}
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw", true, 0)
}

func TestCacheReloadEmptiesIt(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw", true, 0)
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	c.want(alice, "pw", true, 1)
	c.want(alice, "pw", true, 0)
}

// TestCacheEntryOfAReplacedHash: a full check that began before a password
// change and succeeded after the reload caches the old hash's password; the
// entry must never serve the new hash.
func TestCacheEntryOfAReplacedHash(t *testing.T) {
	c := newCachedStore(t)
	first := true
	c.compare = func(hash, pw []byte) error {
		c.compares.Add(1)
		if first {
			first = false
			// The password changes while this check runs, and the
			// server sees the change before the check ends.
			if err := SetPassword(c.path, alice, "new"); err != nil {
				t.Fatal(err)
			}
			c.refresh()
		}
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	c.want(alice, "pw", true, 1) // checked against the set it began with
	c.want(alice, "pw", false, 1)
	c.want(alice, "new", true, 1)
}

func TestCacheTTL(t *testing.T) {
	c := newCachedStore(t)
	c.want(alice, "pw", true, 1)
	c.ft.advance(time.Hour - time.Second)
	c.want(alice, "pw", true, 0) // a hit does not renew the entry ...
	c.ft.advance(time.Second)
	c.want(alice, "pw", true, 1) // ... so an hour after the check, it is checked again
	c.ft.advance(59 * time.Minute)
	c.want(alice, "pw", true, 0)
}

func TestCacheDisabled(t *testing.T) {
	c := newCachedStore(t)
	c.CacheTTL = 0
	for range 3 {
		c.want(alice, "pw", true, 1)
	}
	if n := c.cache.len(); n != 0 {
		t.Errorf("%d cache entries with the cache off", n)
	}
}

func TestCacheSizeBound(t *testing.T) {
	c := newCachedStore(t)
	c.CacheSize = 2
	for _, u := range []string{"bob@example.test", "carol@example.test"} {
		if err := Add(c.path, u, "pw", nil); err != nil {
			t.Fatal(err)
		}
	}
	c.want(alice, "pw", true, 1)
	c.want("bob@example.test", "pw", true, 1)
	c.want("carol@example.test", "pw", true, 1) // evicts alice, the oldest
	if n := c.cache.len(); n != 2 {
		t.Errorf("%d cache entries, want the bound, 2", n)
	}
	c.want("carol@example.test", "pw", true, 0)
	c.want("bob@example.test", "pw", true, 0)
	c.want(alice, "pw", true, 1) // evicts bob
	c.want("carol@example.test", "pw", true, 0)
	c.want("bob@example.test", "pw", true, 1)
	if n := c.cache.len(); n != 2 {
		t.Errorf("%d cache entries, want 2", n)
	}
}

// TestCacheHoldsNoPassword: what the cache keeps is a keyed hash, not the
// password nor an unkeyed hash of it.
func TestCacheHoldsNoPassword(t *testing.T) {
	c := newCachedStore(t)
	const pw = "a fairly long passphrase"
	if err := SetPassword(c.path, alice, pw); err != nil {
		t.Fatal(err)
	}
	c.want(alice, pw, true, 1)
	el := c.cache.byUser[nameKey(alice)]
	if el == nil {
		t.Fatal("no cache entry after a success")
	}
	e := el.Value.(*cacheEntry)
	stored := []byte(hashOf(t, c.path, alice))
	if strings.Contains(string(e.mac[:]), pw) || string(e.hash) != string(stored) {
		t.Errorf("entry %+v: want a MAC and the stored hash", e)
	}
	other := newVerifiedCache()
	if other.sum(nameKey(alice), stored, []byte(pw)) == e.mac {
		t.Error("another key gives the same MAC: the MAC is not keyed")
	}
}

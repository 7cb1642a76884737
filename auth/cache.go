package auth

import (
	"bytes"
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"sync"
	"time"
)

// DefaultCacheSize is the default Store.CacheSize.
const DefaultCacheSize = 10000

// verifiedCache remembers, for each user, that a password passed a full
// bcrypt check, so that the same password again costs one HMAC instead of
// a quarter of a second of CPU (issue 12: clients that open a connection
// per message).
//
// What it keeps is HMAC-SHA-256(key, user, stored hash, password) under a
// key drawn at random when the Store is made and never written anywhere:
// not the password, and not a fast unkeyed hash of it, which a memory dump
// would hand to an offline guesser. With the key the dump does hand over
// HMACs that are fast to guess against, but a process whose memory can be
// read also shows the passwords themselves as clients send them; the TTL
// bounds how long a password that is no longer used stays in this form.
//
// An entry is used only while the user's stored hash is the one the
// password was verified against (a new password, a deleted user, an edited
// file: the old entry is dead at once, whatever the order in which a
// reload and a slow check finish), only until it expires (no renewal on
// use: the password is checked in full at least once per TTL), and only for
// that exact password (a different one is always checked in full). Only
// successes are stored.
//
// There is one entry per user, evicted oldest first when the cache is full;
// entries are in insertion order, which with one TTL is also expiry order.
type verifiedCache struct {
	mu     sync.Mutex
	key    [32]byte
	macs   sync.Pool // of hash.Hash under key
	byUser map[string]*list.Element
	order  list.List // of *cacheEntry, oldest first
}

type cacheEntry struct {
	user    string // nameKey
	hash    []byte // the stored hash the password was verified against
	mac     [sha256.Size]byte
	expires time.Time
}

func newVerifiedCache() *verifiedCache {
	c := &verifiedCache{byUser: map[string]*list.Element{}}
	rand.Read(c.key[:]) // never fails (Go 1.24+)
	c.macs.New = func() any { return hmac.New(sha256.New, c.key[:]) }
	return c
}

// sum is the keyed hash of password for user (a nameKey) verified against
// the stored hash. Neither a user name nor a bcrypt hash contains a NUL, so
// the separators keep the fields apart.
func (c *verifiedCache) sum(user string, stored, password []byte) [sha256.Size]byte {
	m := c.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write(stored)
	m.Write([]byte{0})
	m.Write(password)
	var out [sha256.Size]byte
	m.Sum(out[:0])
	c.macs.Put(m)
	return out
}

// hit reports whether user has a live entry for the stored hash whose MAC
// is mac (compared in constant time). An expired entry found on the way is
// dropped.
func (c *verifiedCache) hit(user string, stored []byte, mac [sha256.Size]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byUser[user]
	if el == nil {
		return false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.removeLocked(el)
		return false
	}
	return bytes.Equal(e.hash, stored) && hmac.Equal(e.mac[:], mac[:])
}

// put records a verified password for user, replacing the user's previous
// entry, and keeps the cache within size entries: expired entries go
// first, then the oldest.
func (c *verifiedCache) put(user string, stored []byte, mac [sha256.Size]byte, expires, now time.Time, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byUser[user]; el != nil {
		c.removeLocked(el)
	}
	for el := c.order.Front(); el != nil; el = c.order.Front() {
		if c.order.Len() < size && now.Before(el.Value.(*cacheEntry).expires) {
			break
		}
		c.removeLocked(el)
	}
	e := &cacheEntry{user: user, hash: bytes.Clone(stored), mac: mac, expires: expires}
	c.byUser[user] = c.order.PushBack(e)
}

// retain drops every entry for which keep(user, stored hash) is false.
func (c *verifiedCache) retain(keep func(user string, stored []byte) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*cacheEntry); !keep(e.user, e.hash) {
			c.removeLocked(el)
		}
		el = next
	}
}

func (c *verifiedCache) removeLocked(el *list.Element) {
	delete(c.byUser, el.Value.(*cacheEntry).user)
	c.order.Remove(el)
}

// len returns the number of entries, live or not yet swept.
func (c *verifiedCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mathrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// ErrInvalidCredentials is the one answer to every failed authentication:
// unknown user, wrong password, malformed name or password alike, so that
// the error says no more than the timing does.
var ErrInvalidCredentials = errors.New("invalid credentials")

// DefaultFailureDelay is the default Store.FailureDelay.
const DefaultFailureDelay = time.Second

// failureJitter is the largest random addition to FailureDelay, as a
// fraction of it: enough to blur a remaining timing difference, small
// enough to keep the delay predictable for clients.
const failureJitter = 0.1

// User is an authenticated user. It is immutable: a session keeps the rights
// its user had when it authenticated, and a reload of the users file
// applies from the next authentication on.
type User struct {
	// Name is the user name as written in the users file.
	Name  string
	allow []Pattern
}

// NewUser returns a User with the given allow list, for callers' tests and
// for identities that do not come from a users file.
func NewUser(name string, allow []Pattern) *User {
	return &User{Name: name, allow: append([]Pattern(nil), allow...)}
}

// Allow returns a copy of the user's allow list.
func (u *User) Allow() []Pattern { return append([]Pattern(nil), u.allow...) }

// MaySendAs reports whether the user may submit with addr as the envelope
// sender (MAIL FROM, without angle brackets).
//
// The null sender <> (addr == "") is allowed to every user who may send at
// all, that is whose allow list is not empty. RFC 6409 §3.2 says a null
// return path must not in itself be cause for rejecting a submission,
// because mail clients need it, notably for disposition notifications
// (RFC 8098 requires MDNs to use it). It claims no address that could
// belong to someone else, so it needs no pattern of its own; the cost is
// that such a message's failures go nowhere, which the session's log of who
// submitted it makes up for.
func (u *User) MaySendAs(addr string) bool {
	if addr == "" {
		return len(u.allow) > 0
	}
	for _, p := range u.allow {
		if p.Match(addr) {
			return true
		}
	}
	return false
}

// userSet is one successfully loaded version of the users file.
type userSet struct {
	byKey map[string]*storedUser
	// dummy is a hash of a random password, compared against when the user
	// is unknown, at the highest cost in the set, so that an unknown user
	// costs the same CPU as a known one.
	dummy []byte
	cost  int
}

type storedUser struct {
	hash []byte
	user *User
}

// Store is the live view of a users file, and of the keys file of its
// application passwords, that the server authenticates against. It
// re-reads a file when it changes (checked on every Authenticate:
// authentication is rare and a stat is cheap), so users and keys are
// added, changed and removed without a restart. A file that becomes invalid
// or unreadable leaves the last good set in service, and the reason is
// logged once per change of the file. A missing file is an empty set.
//
// A password that passes a full bcrypt check is remembered for CacheTTL
// (see verifiedCache), and at most MaxChecks full checks run at once (see
// ErrBusy).
//
// A Store is safe for concurrent use. Set its fields before first use.
type Store struct {
	// FailureDelay is how long, from its start, every failed Authenticate
	// takes, plus up to 10% of random jitter. Zero means
	// DefaultFailureDelay.
	FailureDelay time.Duration
	// CacheTTL is how long a password that passed a full check is
	// remembered, as a keyed hash, so that the same password again skips
	// bcrypt. Zero disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the cache (one entry per user, the oldest evicted
	// first). Zero means DefaultCacheSize.
	CacheSize int
	// MaxChecks bounds the full (bcrypt) password checks running at once.
	// Zero means runtime.NumCPU().
	MaxChecks int
	// CheckWait is how long an attempt waits for a check slot before it
	// fails with ErrBusy. Zero means DefaultCheckWait.
	CheckWait time.Duration
	// Observer, when set, is told of waits for a check slot and refusals.
	Observer Observer
	// Peers, when set, is told each time the Store finds that its users
	// file changed, so that the other servers sharing these users drop
	// their caches too (see Invalidate).
	Peers Peers

	log *zap.Logger

	mu      sync.Mutex // serialises reloads
	users   watchedFile
	keys    watchedFile
	cur     atomic.Pointer[userSet]
	curKeys atomic.Pointer[keySet]
	cache   *verifiedCache

	slotsOnce sync.Once
	slots     chan struct{}

	// Seams for tests: the clock, the padding sleep, the hash check and
	// the timer of the wait for a check slot.
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	compare func(hash, password []byte) error
	after   func(d time.Duration) (<-chan time.Time, func() bool)
}

// keySet is one successfully loaded version of the keys file.
type keySet struct {
	byID map[string]*storedKey
}

type storedKey struct {
	user string // nameKey of the user
	hash [sha256.Size]byte
}

// watchedFile is a file the Store serves from and re-reads when it
// changes.
type watchedFile struct {
	path string
	// what names the file and items what it holds, in log messages:
	// "users file", "users".
	what, items string
	log         *zap.Logger
	fp          fingerprint
	// install parses the content of the file (nil: the file does not
	// exist) and puts it in service, or returns why it cannot.
	install func(data []byte) error
	// missing is logged (at warning level) when the file is found not to
	// exist at start or after it existed; "" logs nothing.
	missing string
	// served: a version of the file (or its absence) is in service.
	served bool
}

// NewStore loads the users file at usersPath and the keys file at keysPath
// ("" means DefaultKeysFile(usersPath)). Unlike a later reload, an invalid
// or unreadable file is an error here: the server should not start with
// users it cannot read. A missing users file is an empty set (logged as a
// warning), so that a server with no users yet can start and `postern user
// add` brings the first one to life; a missing keys file is the usual state
// of a server without application passwords. log may be nil.
func NewStore(usersPath, keysPath string, log *zap.Logger) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if keysPath == "" {
		keysPath = DefaultKeysFile(usersPath)
	}
	s := &Store{
		log:     log,
		cache:   newVerifiedCache(),
		now:     time.Now,
		sleep:   sleepCtx,
		compare: bcrypt.CompareHashAndPassword,
		after:   afterTimer,
	}
	s.users = watchedFile{
		path: usersPath, what: "users file", items: "users",
		log:     log.With(zap.String("users_file", usersPath)),
		missing: "users file does not exist; no user can authenticate",
		install: func(data []byte) error {
			uf := &usersFile{byKey: map[string]*record{}}
			if data != nil {
				var err error
				if uf, err = parseUsers(usersPath, data); err != nil {
					return err
				}
			}
			return s.install(uf)
		},
	}
	s.keys = watchedFile{
		path: keysPath, what: "keys file", items: "application passwords",
		log: log.With(zap.String("keys_file", keysPath)),
		install: func(data []byte) error {
			kf := &keysFile{}
			if data != nil {
				var err error
				if kf, err = parseKeys(keysPath, data); err != nil {
					return err
				}
			}
			s.installKeys(kf, data != nil)
			return nil
		},
	}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the users and keys files now, whether or not they
// changed, and returns why they could not be loaded (the previous set of a
// file that failed then stays in service). It also empties the cache of
// verified passwords, so that SIGHUP is a way to make every user's next
// authentication a full check. It is for SIGHUP and for tests;
// Authenticate does not need it.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache.retain(func(string, []byte) bool { return false })
	return errors.Join(s.loadLocked(&s.users), s.loadLocked(&s.keys))
}

// Peers are the other servers that serve the same users; relay/limits
// implements it over Redis.
type Peers interface {
	// PublishUsersChanged tells them the users file changed. It must
	// return within a fraction of a second; an error is only logged.
	PublishUsersChanged(ctx context.Context) error
}

// Invalidate drops every verified password and re-reads the users and keys
// files, whether or not they look changed. It is what a server does when
// another one says its users file changed (Peers): that server may have a
// new password for a user whose old one is cached here, and on a shared
// file system the change may not show in the file's attributes yet. It
// does not tell Peers in turn.
func (s *Store) Invalidate() {
	if err := s.Reload(); err != nil {
		s.log.Error("users reloaded on another server's notice, with errors; keeping the previous sets where they failed", zap.Error(err))
	}
}

// Len returns the number of users in service.
func (s *Store) Len() int { return len(s.cur.Load().byKey) }

// refresh reloads every file whose fingerprint changed, logging failures.
func (s *Store) refresh() {
	if s.refreshFile(&s.users) && s.Peers != nil {
		// Not waited for: the attempt that noticed the change goes on.
		go func() {
			if err := s.Peers.PublishUsersChanged(context.Background()); err != nil {
				s.log.Warn("could not tell the other servers that the users file changed; their cached passwords expire with auth.cache_ttl", zap.Error(err))
			}
		}()
	}
	s.refreshFile(&s.keys)
}

// refreshFile reloads w if its fingerprint changed, logging failures, and
// reports whether it put a new version in service.
func (s *Store) refreshFile(w *watchedFile) bool {
	fi, err := os.Stat(w.path)
	var fp fingerprint
	if err == nil {
		fp = fingerprintOf(fi)
	} else if !errors.Is(err, fs.ErrNotExist) {
		// Cannot even stat (a directory permission, say): keep serving
		// the last good set; complain once, until a stat succeeds again.
		s.mu.Lock()
		defer s.mu.Unlock()
		if w.fp != (fingerprint{}) {
			w.log.Error("cannot stat "+w.what+"; keeping the previous "+w.items, zap.Error(err))
			w.fp = fingerprint{}
		}
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fp == w.fp && w.served {
		return false
	}
	if err := s.loadLocked(w); err != nil {
		w.log.Error(w.what+" not reloaded; keeping the previous "+w.items, zap.Error(err))
		return false
	}
	return true
}

// loadLocked reads, parses and installs w. The fingerprint is taken from
// the open file, so that it describes exactly the bytes read, and it is
// recorded even when the content is invalid, so that a broken file is
// reported once rather than on every authentication. s.mu is held.
func (s *Store) loadLocked(w *watchedFile) error {
	f, err := os.Open(w.path)
	if errors.Is(err, fs.ErrNotExist) {
		// Said at start (no fingerprint yet is the zero one too, but
		// nothing is installed) and when a file that existed goes.
		if w.missing != "" && (w.fp.exists || !w.served) {
			w.log.Warn(w.missing)
		}
		w.fp = fingerprint{}
		return w.installed(nil)
	}
	if err != nil {
		// Remember what the file looked like, so the error is logged once
		// and a fix (chmod, chown: a new ctime) triggers a reload.
		w.fp = fingerprint{}
		if fi, serr := os.Stat(w.path); serr == nil {
			w.fp = fingerprintOf(fi)
		}
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.fp = fingerprintOf(fi)
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	if data == nil {
		data = []byte{} // nil would mean "missing"
	}
	return w.installed(data)
}

// installed installs data and records that w is in service.
func (w *watchedFile) installed(data []byte) error {
	err := w.install(data)
	w.served = w.served || err == nil
	return err
}

// install makes uf the set in service.
func (s *Store) install(uf *usersFile) error {
	set := &userSet{byKey: make(map[string]*storedUser, len(uf.users)), cost: BcryptCost}
	costs := map[int]int{}
	log := s.users.log
	for _, r := range uf.users {
		set.byKey[nameKey(r.name)] = &storedUser{
			hash: []byte(r.hash),
			user: &User{Name: r.name, allow: r.allow},
		}
		costs[r.cost]++
		if len(r.allow) == 0 {
			log.Warn("user has an empty allow list and may send as nobody", zap.String("user", r.name))
		}
	}
	if len(costs) > 0 {
		set.cost = 0
		for c := range costs {
			set.cost = max(set.cost, c)
		}
	}
	if len(costs) > 1 {
		// Mixed costs let timing tell the weaker hashes' users apart from
		// unknown ones, within the jitter. `postern user passwd` rehashes
		// at BcryptCost.
		log.Warn("password hashes use different bcrypt costs", zap.Any("users_per_cost", costs))
	}
	old := s.cur.Load()
	if old != nil && old.cost == set.cost {
		set.dummy = old.dummy
	} else {
		var pw [32]byte
		rand.Read(pw[:]) // never fails (Go 1.24+)
		h, err := bcrypt.GenerateFromPassword(pw[:], set.cost)
		if err != nil {
			return fmt.Errorf("dummy hash: %w", err)
		}
		set.dummy = h
	}
	s.cur.Store(set)
	// A changed or removed user's verified password is dead at once. (The
	// cache checks the stored hash on every hit anyway: a check that was
	// under way during this reload may still add an entry for the old
	// hash, which is then never used.)
	s.cache.retain(func(user string, stored []byte) bool {
		su := set.byKey[user]
		return su != nil && bytes.Equal(su.hash, stored)
	})
	msg := "users file loaded"
	if old != nil {
		msg = "users file reloaded"
	}
	log.Info(msg, zap.Int("users", len(set.byKey)), zap.Int("bcrypt_cost", set.cost))
	return nil
}

// installKeys makes kf the set of keys in service.
func (s *Store) installKeys(kf *keysFile, exists bool) {
	set := &keySet{byID: make(map[string]*storedKey, len(kf.keys))}
	for _, r := range kf.keys {
		set.byID[r.ID] = &storedKey{user: nameKey(r.User), hash: r.hash}
	}
	old := s.curKeys.Swap(set)
	if old == nil && !exists {
		return // the usual state: no application passwords
	}
	s.keys.log.Info("keys file loaded", zap.Int("keys", len(set.byID)))
}

// Authenticate checks name and password against the users file, re-reading
// it first if it changed. The password may also be one of the user's
// application passwords (see AddKey).
//
// Success returns the user at once. What success costs depends on the
// password: an application password costs a SHA-256; a password that
// passed a full check within CacheTTL, one HMAC; any other password a full
// bcrypt check, which waits for one of MaxChecks slots and fails with
// ErrBusy when none frees up within CheckWait.
//
// Every other failure returns ErrInvalidCredentials and takes the same
// time, whatever its cause (STYLE habit 10): a wrong application password
// goes on to the bcrypt check like any password, an unknown user is checked
// against a dummy hash of the same cost, and the attempt is padded to
// FailureDelay (plus jitter) from its start, so that neither the CPU spent
// nor the reply time tells an attacker which names exist. If ctx ends
// during the padding, the error also wraps ctx.Err().
func (s *Store) Authenticate(ctx context.Context, name, password string) (*User, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := s.now()
	s.refresh()
	set := s.cur.Load()

	var (
		su  *storedUser
		key string
	)
	if len(name) <= MaxNameLen {
		key = nameKey(name)
		su = set.byKey[key]
	}
	// A user's own password may look like a key: a key that does not
	// match is checked as a password, which also makes a wrong key cost
	// what a wrong password costs.
	if u, owner, id := s.checkKey(set, password); u != nil && owner == key {
		s.verified(u, "app_password", id)
		return u, nil
	}

	hash := set.dummy
	if su != nil {
		hash = su.hash
	}
	// Passwords bcrypt cannot have hashed are still compared, cut to the
	// length bcrypt reads, so that they cost the same as the others; their
	// result is ignored. Without the length check, the first 72 bytes of a
	// 72-byte password followed by anything would log in.
	pwOK := ValidatePassword(password) == nil
	pw := []byte(password)
	if len(pw) > MaxPasswordLen {
		pw = pw[:MaxPasswordLen]
	}
	// The MAC is computed for every attempt, cached user or not, so that
	// the cache adds the same cost to every failure.
	var mac [sha256.Size]byte
	if s.CacheTTL > 0 {
		mac = s.cache.sum(key, hash, pw)
		if su != nil && pwOK && s.cache.hit(key, hash, mac, start) {
			s.verified(su.user, "cache", "")
			return su.user, nil
		}
	}

	release, err := s.acquireCheck(ctx)
	if err != nil {
		// Nothing was checked: not a failed attempt, and not padded (the
		// wait for a slot already took longer than the padding would).
		return nil, err
	}
	err = s.compare(hash, pw)
	release()
	if su != nil && pwOK && err == nil {
		if s.CacheTTL > 0 {
			size := s.CacheSize
			if size <= 0 {
				size = DefaultCacheSize
			}
			now := s.now()
			s.cache.put(key, hash, mac, now.Add(s.CacheTTL), now, size)
		}
		s.verified(su.user, "bcrypt", "")
		return su.user, nil
	}
	if su != nil && err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		// checkHash validated it at load; say so without quoting it.
		s.users.log.Error("stored password hash unusable", zap.String("user", su.user.Name), zap.Error(err))
	}
	return nil, s.fail(ctx, start)
}

// AuthenticateKey checks an application password given without a user
// name (a bearer key, for the HTTP API to come) and returns its user and
// the key's ID. It re-reads the users and keys files first if they changed.
// A key whose user is no longer in the users file authenticates nobody.
// Every failure returns ErrInvalidCredentials after the same padding as
// Authenticate's failures.
func (s *Store) AuthenticateKey(ctx context.Context, secret string) (*User, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	start := s.now()
	s.refresh()
	if u, _, id := s.checkKey(s.cur.Load(), secret); u != nil {
		s.verified(u, "app_password", id)
		return u, id, nil
	}
	return nil, "", s.fail(ctx, start)
}

// dummyKeyHash stands in for the hash of a key that does not exist, so
// that an unknown ID costs the same comparison as a wrong secret.
var dummyKeyHash [sha256.Size]byte

// checkKey returns the user of set whose application password secret is,
// with the user's nameKey and the key's ID, or a nil user.
func (s *Store) checkKey(set *userSet, secret string) (u *User, owner, id string) {
	id, ok := keyIDOf(secret)
	if !ok {
		return nil, "", ""
	}
	k := s.curKeys.Load().byID[id]
	want := &dummyKeyHash
	if k != nil {
		want = &k.hash
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 || k == nil {
		return nil, "", ""
	}
	su := set.byKey[k.user]
	if su == nil {
		return nil, "", ""
	}
	return su.user, k.user, id
}

// verified logs, at debug level, how a user's credentials were verified:
// "bcrypt" (a full check), "cache" or "app_password" (with the key's ID).
func (s *Store) verified(u *User, by, keyID string) {
	if ce := s.log.Check(zap.DebugLevel, "credentials verified"); ce != nil {
		fields := []zap.Field{zap.String("user", u.Name), zap.String("by", by)}
		if keyID != "" {
			fields = append(fields, zap.String("key_id", keyID))
		}
		ce.Write(fields...)
	}
}

// fail pads a failed attempt that began at start and returns its error.
func (s *Store) fail(ctx context.Context, start time.Time) error {
	if err := s.pad(ctx, start); err != nil {
		return fmt.Errorf("%w (%w)", ErrInvalidCredentials, err)
	}
	return ErrInvalidCredentials
}

// pad sleeps until FailureDelay plus jitter has passed since start.
func (s *Store) pad(ctx context.Context, start time.Time) error {
	total := s.FailureDelay
	if total <= 0 {
		total = DefaultFailureDelay
	}
	total += time.Duration(mathrand.Int64N(int64(float64(total)*failureJitter) + 1))
	d := total - s.now().Sub(start)
	if d <= 0 {
		return nil
	}
	return s.sleep(ctx, d)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

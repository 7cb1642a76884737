package auth

import (
	"context"
	"crypto/rand"
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

// Store is the live view of a users file that the server authenticates
// against. It re-reads the file when the file changes (checked on every
// Authenticate: authentication is rare and a stat is cheap), so users are
// added, changed and removed without a restart. A file that becomes invalid
// or unreadable leaves the last good set in service, and the reason is
// logged once per change of the file. A missing file is an empty set.
//
// A Store is safe for concurrent use. Set its fields before first use.
type Store struct {
	// FailureDelay is how long, from its start, every failed Authenticate
	// takes, plus up to 10% of random jitter. Zero means
	// DefaultFailureDelay.
	FailureDelay time.Duration

	path string
	log  *zap.Logger

	mu  sync.Mutex // serialises reloads
	fp  fingerprint
	cur atomic.Pointer[userSet]

	// Seams for tests: the clock, the padding sleep and the hash check.
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	compare func(hash, password []byte) error
}

// NewStore loads the users file at path. Unlike a later reload, an invalid
// or unreadable file is an error here: the server should not start with
// users it cannot read. A missing file is an empty set (logged as a
// warning), so that a server with no users yet can start and `postern user
// add` brings the first one to life. log may be nil.
func NewStore(path string, log *zap.Logger) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		path:    path,
		log:     log.With(zap.String("users_file", path)),
		now:     time.Now,
		sleep:   sleepCtx,
		compare: bcrypt.CompareHashAndPassword,
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the users file now, whether or not it changed, and
// returns why it could not be loaded (the previous set then stays in
// service). It is for SIGHUP and for tests; Authenticate does not need it.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadLocked()
}

// Len returns the number of users in service.
func (s *Store) Len() int { return len(s.cur.Load().byKey) }

func (s *Store) load() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadLocked()
}

// refresh reloads the file if its fingerprint changed, logging failures.
func (s *Store) refresh() {
	fi, err := os.Stat(s.path)
	var fp fingerprint
	if err == nil {
		fp = fingerprintOf(fi)
	} else if !errors.Is(err, fs.ErrNotExist) {
		// Cannot even stat (a directory permission, say): keep serving
		// the last good set; complain once, until a stat succeeds again.
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.fp != (fingerprint{}) {
			s.log.Error("cannot stat users file; keeping the previous users", zap.Error(err))
			s.fp = fingerprint{}
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fp == s.fp && s.cur.Load() != nil {
		return
	}
	if err := s.loadLocked(); err != nil {
		s.log.Error("users file not reloaded; keeping the previous users", zap.Error(err))
	}
}

// loadLocked reads, parses and installs the users file. The fingerprint is
// taken from the open file, so that it describes exactly the bytes read, and
// it is recorded even when the content is invalid, so that a broken file is
// reported once rather than on every authentication.
func (s *Store) loadLocked() error {
	f, err := os.Open(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		if s.fp.exists || s.cur.Load() == nil {
			s.log.Warn("users file does not exist; no user can authenticate")
		}
		s.fp = fingerprint{}
		return s.install(&usersFile{byKey: map[string]*record{}})
	}
	if err != nil {
		// Remember what the file looked like, so the error is logged once
		// and a fix (chmod, chown: a new ctime) triggers a reload.
		s.fp = fingerprint{}
		if fi, serr := os.Stat(s.path); serr == nil {
			s.fp = fingerprintOf(fi)
		}
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	s.fp = fingerprintOf(fi)
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	uf, err := parseUsers(s.path, data)
	if err != nil {
		return err
	}
	return s.install(uf)
}

// install makes uf the set in service.
func (s *Store) install(uf *usersFile) error {
	set := &userSet{byKey: make(map[string]*storedUser, len(uf.users)), cost: BcryptCost}
	costs := map[int]int{}
	for _, r := range uf.users {
		set.byKey[nameKey(r.name)] = &storedUser{
			hash: []byte(r.hash),
			user: &User{Name: r.name, allow: r.allow},
		}
		costs[r.cost]++
		if len(r.allow) == 0 {
			s.log.Warn("user has an empty allow list and may send as nobody", zap.String("user", r.name))
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
		s.log.Warn("password hashes use different bcrypt costs", zap.Any("users_per_cost", costs))
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
	msg := "users file loaded"
	if old != nil {
		msg = "users file reloaded"
	}
	s.log.Info(msg, zap.Int("users", len(set.byKey)), zap.Int("bcrypt_cost", set.cost))
	return nil
}

// Authenticate checks name and password against the users file, re-reading
// it first if it changed.
//
// Success returns the user at once. Every failure returns
// ErrInvalidCredentials and takes the same time, whatever its cause (STYLE
// habit 10): an unknown user is checked against a dummy hash of the same
// cost, and the attempt is padded to FailureDelay (plus jitter) from its
// start, so that neither the CPU spent nor the reply time tells an attacker
// which names exist. If ctx ends during the padding, the error also wraps
// ctx.Err().
func (s *Store) Authenticate(ctx context.Context, name, password string) (*User, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := s.now()
	s.refresh()
	set := s.cur.Load()

	var su *storedUser
	if len(name) <= MaxNameLen {
		su = set.byKey[nameKey(name)]
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
	err := s.compare(hash, pw)
	if su != nil && pwOK && err == nil {
		return su.user, nil
	}
	if su != nil && err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		// checkHash validated it at load; say so without quoting it.
		s.log.Error("stored password hash unusable", zap.String("user", su.user.Name), zap.Error(err))
	}
	if perr := s.pad(ctx, start); perr != nil {
		return nil, fmt.Errorf("%w (%w)", ErrInvalidCredentials, perr)
	}
	return nil, ErrInvalidCredentials
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

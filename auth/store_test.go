package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"
)

// fakeTime is a clock that moves only when told, and a sleep that records
// what it was asked instead of sleeping.
type fakeTime struct {
	mu     sync.Mutex
	t      time.Time
	sleeps []time.Duration
	// sleepErr, if set, is returned by sleep (as a cancelled ctx would).
	sleepErr error
}

func (f *fakeTime) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeTime) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

func (f *fakeTime) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sleeps = append(f.sleeps, d)
	f.t = f.t.Add(d)
	return f.sleepErr
}

func (f *fakeTime) takeSleeps() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sleeps
	f.sleeps = nil
	return s
}

// newTestStore opens a Store on path with the fake clock, and a log
// observer.
func newTestStore(t *testing.T, path string) (*Store, *fakeTime, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	s, err := NewStore(path, "", zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTime{t: time.Unix(1_700_000_000, 0)}
	s.now, s.sleep = ft.now, ft.sleep
	return s, ft, logs
}

func TestAuthenticate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	long := strings.Repeat("p", MaxPasswordLen)
	for _, u := range []struct{ name, pw string }{
		{"alice@example.test", "alice-pw"},
		{"long@example.test", long},
	} {
		if err := Add(path, u.name, u.pw, nil); err != nil {
			t.Fatal(err)
		}
	}
	s, _, _ := newTestStore(t, path)
	ctx := context.Background()

	u, err := s.Authenticate(ctx, "alice@example.test", "alice-pw")
	if err != nil || u.Name != "alice@example.test" || !u.MaySendAs("alice@example.test") {
		t.Fatalf("Authenticate(alice) = %+v, %v", u, err)
	}
	if u, err := s.Authenticate(ctx, "ALICE@Example.Test", "alice-pw"); err != nil || u.Name != "alice@example.test" {
		t.Errorf("Authenticate(ALICE) = %+v, %v; names ignore case", u, err)
	}
	if _, err := s.Authenticate(ctx, "long@example.test", long); err != nil {
		t.Errorf("72-byte password: %v", err)
	}

	fail := []struct{ name, pw string }{
		{"alice@example.test", "wrong"},
		{"alice@example.test", "Alice-pw"},
		{"alice@example.test", ""},
		{"alice@example.test", "alice-pw\x00"},
		{"nobody@example.test", "alice-pw"},
		{"", "alice-pw"},
		{strings.Repeat("a", 1000), "x"},
		// bcrypt reads 72 bytes: the 73rd must not be ignored.
		{"long@example.test", long + "x"},
	}
	for _, c := range fail {
		if u, err := s.Authenticate(ctx, c.name, c.pw); !errors.Is(err, ErrInvalidCredentials) || u != nil {
			t.Errorf("Authenticate(%.20q, %.20q) = %v, %v; want ErrInvalidCredentials", c.name, c.pw, u, err)
		}
	}
}

// TestFailureTiming checks the constant-time contract without a wall
// clock: every failure, unknown user or not, runs exactly one hash
// comparison and is padded to FailureDelay(+jitter) from its start; a
// success is not padded. With the cache on, the failures come after the
// user's password is cached, and still cost one full check each.
func TestFailureTiming(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Hour} {
		t.Run("cache_ttl="+ttl.String(), func(t *testing.T) { testFailureTiming(t, ttl) })
	}
}

func testFailureTiming(t *testing.T, cacheTTL time.Duration) {
	path := filepath.Join(t.TempDir(), "users")
	if err := Add(path, "alice@example.test", "pw", nil); err != nil {
		t.Fatal(err)
	}
	s, ft, _ := newTestStore(t, path)
	s.FailureDelay = 500 * time.Millisecond
	s.CacheTTL = cacheTTL
	var compared [][]byte
	s.compare = func(hash, pw []byte) error {
		compared = append(compared, hash)
		ft.advance(120 * time.Millisecond) // the hash takes time
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	aliceHash := []byte(hashOf(t, path, "alice@example.test"))
	dummy := s.cur.Load().dummy
	ctx := context.Background()

	type timingCase struct {
		desc     string
		name, pw string
		ok       bool
		hash     []byte // compared against; nil: no comparison
	}
	cases := []timingCase{
		{"success", "alice@example.test", "pw", true, aliceHash},
		{"wrong password", "alice@example.test", "nope", false, aliceHash},
		{"unknown user", "bob@example.test", "pw", false, dummy},
		{"empty password", "alice@example.test", "", false, aliceHash},
		{"overlong name", strings.Repeat("x", 300), "pw", false, dummy},
		{"a key's form, no such key", "alice@example.test", "pk_aaaaaaaaaaaaa_" + strings.Repeat("a", 32), false, aliceHash},
	}
	if cacheTTL > 0 {
		cases = append(cases, timingCase{"success from the cache", "alice@example.test", "pw", true, nil})
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			compared = nil
			_, err := s.Authenticate(ctx, c.name, c.pw)
			if (err == nil) != c.ok {
				t.Fatalf("err = %v", err)
			}
			if c.hash == nil && len(compared) != 0 {
				t.Errorf("compared against %q, want no full check", compared)
			}
			if c.hash != nil && (len(compared) != 1 || string(compared[0]) != string(c.hash)) {
				t.Errorf("compared against %q, want exactly %q", compared, c.hash)
			}
			sleeps := ft.takeSleeps()
			if c.ok {
				if len(sleeps) != 0 {
					t.Errorf("success slept %v", sleeps)
				}
				return
			}
			// 120ms spent hashing; the rest of 500ms, plus up to 10%.
			if len(sleeps) != 1 || sleeps[0] < 380*time.Millisecond || sleeps[0] > 430*time.Millisecond {
				t.Errorf("padding sleeps = %v, want one in [380ms, 430ms]", sleeps)
			}
		})
	}

	// An attempt that already took longer than FailureDelay is not padded
	// further.
	s.compare = func(hash, pw []byte) error {
		ft.advance(2 * time.Second)
		return bcrypt.ErrMismatchedHashAndPassword
	}
	if _, err := s.Authenticate(ctx, "bob@example.test", "x"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	if sl := ft.takeSleeps(); len(sl) != 0 {
		t.Errorf("slow failure padded by %v", sl)
	}
}

func TestDefaultFailureDelay(t *testing.T) {
	s, ft, _ := newTestStore(t, filepath.Join(t.TempDir(), "users"))
	s.Authenticate(context.Background(), "x@example.test", "x")
	sl := ft.takeSleeps()
	if len(sl) != 1 || sl[0] < DefaultFailureDelay || sl[0] > DefaultFailureDelay*11/10 {
		t.Errorf("sleeps = %v, want one in [1s, 1.1s]", sl)
	}
}

func TestAuthenticateContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	s, ft, _ := newTestStore(t, path)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	s.compare = func(h, p []byte) error { called = true; return nil }
	if _, err := s.Authenticate(ctx, "alice@example.test", "pw"); !errors.Is(err, context.Canceled) {
		t.Errorf("done ctx: err = %v, want context.Canceled", err)
	}
	if called {
		t.Error("done ctx still hashed")
	}

	// Cancelled during padding: the error says both things.
	s.compare = bcrypt.CompareHashAndPassword
	ft.sleepErr = context.DeadlineExceeded
	_, err := s.Authenticate(context.Background(), "alice@example.test", "bad")
	if !errors.Is(err, ErrInvalidCredentials) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrInvalidCredentials and DeadlineExceeded", err)
	}

	// The real sleep returns early when ctx ends.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := sleepCtx(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("sleepCtx = %v", err)
	}
	if err := sleepCtx(context.Background(), time.Microsecond); err != nil {
		t.Errorf("sleepCtx = %v", err)
	}
}

func TestLiveReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	ctx := context.Background()
	s, _, logs := newTestStore(t, path) // missing file: no users
	ok := func(name, pw string) bool {
		t.Helper()
		_, err := s.Authenticate(ctx, name, pw)
		if err != nil && !errors.Is(err, ErrInvalidCredentials) {
			t.Fatal(err)
		}
		return err == nil
	}
	if ok("alice@example.test", "pw1") || s.Len() != 0 {
		t.Fatal("user in an empty store")
	}

	// Added.
	if err := Add(path, "alice@example.test", "pw1", nil); err != nil {
		t.Fatal(err)
	}
	if !ok("alice@example.test", "pw1") {
		t.Fatal("added user not seen")
	}
	// Changed.
	if err := SetPassword(path, "alice@example.test", "pw2"); err != nil {
		t.Fatal(err)
	}
	if ok("alice@example.test", "pw1") || !ok("alice@example.test", "pw2") {
		t.Fatal("new password not seen")
	}
	// Edited in place (same inode), as an editor without atomic save does.
	h := mustHash(t, "pw3")
	if err := os.WriteFile(path, []byte("alice@example.test:"+h+":*\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !ok("alice@example.test", "pw3") {
		t.Fatal("in-place edit not seen")
	}

	// Broken: the last good set stays, the log says why once, without
	// the hash.
	broken := "alice@example.test:" + h + ":*\nthis line is wrong\nbob@example.test:" + h[:30] + "\n"
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if !ok("alice@example.test", "pw3") || !ok("alice@example.test", "pw3") {
		t.Fatal("broken file took the good set out of service")
	}
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 1 {
		t.Fatalf("want 1 error log for a broken file, got %d: %v", len(errs), errs)
	}
	msg := errs[0].ContextMap()["error"].(string)
	if !strings.Contains(msg, path+":2:") || !strings.Contains(msg, path+":3:") {
		t.Errorf("log does not name the bad lines: %q", msg)
	}
	if strings.Contains(msg, h[7:30]) {
		t.Errorf("log quotes a hash: %q", msg)
	}
	if err := s.Reload(); err == nil {
		t.Error("Reload of a broken file returned nil")
	}

	// Fixed: reloaded. Removed: gone.
	if err := os.WriteFile(path, []byte("bob@example.test:"+h+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok("alice@example.test", "pw3") || !ok("bob@example.test", "pw3") {
		t.Fatal("fixed file not loaded")
	}
	if err := Delete(path, "bob@example.test"); err != nil {
		t.Fatal(err)
	}
	if ok("bob@example.test", "pw3") {
		t.Fatal("deleted user still authenticates")
	}
	// The file removed altogether: no users.
	Add(path, "carol@example.test", "pw", nil)
	os.Remove(path)
	if ok("carol@example.test", "pw") || s.Len() != 0 {
		t.Fatal("removed file still serves users")
	}
}

// TestUnreadableFileKeepsUsers: a users file that cannot be read keeps
// the users already loaded, with one error in the log. The file is made
// unreadable by putting a directory in its place: permissions would not
// do, since the tests run as root (CI), who reads a file of any mode.
func TestUnreadableFileKeepsUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	s, _, logs := newTestStore(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Authenticate(context.Background(), "alice@example.test", "pw"); err != nil {
			t.Fatal(err)
		}
	}
	if n := logs.FilterLevelExact(zap.ErrorLevel).Len(); n != 1 {
		t.Errorf("%d error logs, want 1", n)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Add(path, "alice@example.test", "new", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(context.Background(), "alice@example.test", "new"); err != nil {
		t.Error("fixed file not reloaded")
	}
}

func TestNewStoreRejectsInvalidFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("nonsense\n"), 0o600)
	_, err := NewStore(path, "", nil)
	var perr *ParseError
	if !errors.As(err, &perr) || perr.Problems[0].Line != 1 {
		t.Errorf("NewStore = %v, want *ParseError for line 1", err)
	}
}

func TestDummyHashFollowsCost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	h5, _ := bcrypt.GenerateFromPassword([]byte("x"), 5)
	h4 := mustHash(t, "x")
	os.WriteFile(path, []byte("a@example.test:"+string(h4)+"\nb@example.test:"+string(h5)+"\n"), 0o600)
	s, _, logs := newTestStore(t, path)
	if c, _ := bcrypt.Cost(s.cur.Load().dummy); c != 5 {
		t.Errorf("dummy cost = %d, want the highest cost in the file, 5", c)
	}
	if logs.FilterMessageSnippet("different bcrypt costs").Len() != 1 {
		t.Error("mixed costs not logged")
	}
}

func TestConcurrentAuthenticate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	s, _, _ := newTestStore(t, path)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 5 {
				if i == 0 {
					SetPassword(path, "alice@example.test", "pw")
				}
				pw := "pw"
				if j%2 == 1 {
					pw = "bad"
				}
				_, err := s.Authenticate(context.Background(), "alice@example.test", pw)
				if (err == nil) != (pw == "pw") {
					t.Errorf("pw %q: %v", pw, err)
				}
			}
		})
	}
	wg.Wait()
}

// TestReadErrorKeepsUsers replaces the file with something that opens but
// cannot be read (a directory), which works even as root.
func TestReadErrorKeepsUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	s, _, logs := newTestStore(t, path)
	os.Remove(path)
	os.Mkdir(path, 0o700)
	for range 3 {
		if _, err := s.Authenticate(context.Background(), "alice@example.test", "pw"); err != nil {
			t.Fatal(err)
		}
	}
	if n := logs.FilterLevelExact(zap.ErrorLevel).Len(); n != 1 {
		t.Errorf("%d error logs, want 1", n)
	}
	os.Remove(path)
	Add(path, "bob@example.test", "pw", nil)
	if _, err := s.Authenticate(context.Background(), "bob@example.test", "pw"); err != nil {
		t.Error("fixed file not reloaded")
	}
}

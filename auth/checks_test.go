package auth

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// heldChecks makes a Store's full checks wait, each until the test
// releases one, and replaces the timer of the wait for a slot with one the
// test fires. Nothing here sleeps: goroutines are ordered by what the Store
// reports through the channels.
type heldChecks struct {
	entered chan []byte   // the hash of each full check begun
	release chan struct{} // one value lets one check finish
	expire  chan time.Time
	waits   chan time.Duration // what each wait for a slot asked the timer for
	obs     *countingObserver
}

func holdChecks(s *Store, slots int) *heldChecks {
	h := &heldChecks{
		entered: make(chan []byte, 16),
		release: make(chan struct{}),
		expire:  make(chan time.Time),
		waits:   make(chan time.Duration, 16),
		obs:     &countingObserver{waited: make(chan struct{}, 16)},
	}
	s.MaxChecks = slots
	s.Observer = h.obs
	s.compare = func(hash, pw []byte) error {
		h.entered <- hash
		<-h.release
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	s.after = func(d time.Duration) (<-chan time.Time, func() bool) {
		h.waits <- d
		return h.expire, func() bool { return true }
	}
	return h
}

// countingObserver counts what the Store reports, and signals each wait.
type countingObserver struct {
	waited           chan struct{}
	nWaited, refused atomic.Int32
}

func (o *countingObserver) CheckWaited() {
	o.nWaited.Add(1)
	o.waited <- struct{}{}
}

func (o *countingObserver) CheckRefused() { o.refused.Add(1) }

// expireAtOnce makes every wait for a slot end at once: an attempt that
// needs a slot while none is free fails with ErrBusy rather than hang the
// test.
func expireAtOnce(s *Store) {
	expired := make(chan time.Time)
	close(expired)
	s.after = func(time.Duration) (<-chan time.Time, func() bool) { return expired, func() bool { return true } }
}

// authAsync runs Authenticate in a goroutine; the channel gets its error.
func authAsync(ctx context.Context, s *Store, name, pw string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := s.Authenticate(ctx, name, pw)
		done <- err
	}()
	return done
}

func newChecksStore(t *testing.T) (*Store, *fakeTime, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	for _, u := range []string{alice, "bob@example.test"} {
		if err := Add(path, u, "pw", nil); err != nil {
			t.Fatal(err)
		}
	}
	s, ft, _ := newTestStore(t, path)
	return s, ft, path
}

// TestChecksBounded: with both slots taken, a third attempt (here an
// unknown user, whose dummy-hash check counts too) waits, and when the
// wait runs out fails with ErrBusy without a check and without padding.
func TestChecksBounded(t *testing.T) {
	s, ft, _ := newChecksStore(t)
	h := holdChecks(s, 2)
	ctx := context.Background()

	first := authAsync(ctx, s, alice, "pw")
	second := authAsync(ctx, s, "bob@example.test", "pw")
	<-h.entered
	<-h.entered

	third := authAsync(ctx, s, "nobody@example.test", "pw")
	<-h.obs.waited
	if d := <-h.waits; d != DefaultCheckWait {
		t.Errorf("waited for %v, want DefaultCheckWait", d)
	}
	h.expire <- time.Time{}
	err := <-third
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("third attempt: %v, want ErrBusy and not ErrInvalidCredentials", err)
	}
	if n := h.obs.refused.Load(); n != 1 {
		t.Errorf("%d refusals observed, want 1", n)
	}
	if sl := ft.takeSleeps(); len(sl) != 0 {
		t.Errorf("a refusal was padded: %v", sl)
	}

	h.release <- struct{}{}
	h.release <- struct{}{}
	for _, done := range []<-chan error{first, second} {
		if err := <-done; err != nil {
			t.Errorf("an attempt holding a slot failed: %v", err)
		}
	}
	if len(h.entered) != 0 {
		t.Error("the refused attempt ran a check")
	}
}

// TestCheckWaiterGetsAFreedSlot: a waiting attempt proceeds as soon as a
// slot frees up.
func TestCheckWaiterGetsAFreedSlot(t *testing.T) {
	s, _, _ := newChecksStore(t)
	h := holdChecks(s, 1)
	ctx := context.Background()

	first := authAsync(ctx, s, alice, "pw")
	<-h.entered
	second := authAsync(ctx, s, "bob@example.test", "pw")
	<-h.obs.waited
	h.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-h.entered // the waiter took the slot
	h.release <- struct{}{}
	if err := <-second; err != nil {
		t.Errorf("the waiting attempt: %v", err)
	}
	if h.obs.nWaited.Load() != 1 || h.obs.refused.Load() != 0 {
		t.Errorf("observed %d waits and %d refusals, want 1 and 0", h.obs.nWaited.Load(), h.obs.refused.Load())
	}
}

// TestCheckWaitEndsWithContext: a session that ends while waiting stops
// waiting, with its context's error.
func TestCheckWaitEndsWithContext(t *testing.T) {
	s, _, _ := newChecksStore(t)
	h := holdChecks(s, 1)
	first := authAsync(context.Background(), s, alice, "pw")
	<-h.entered
	ctx, cancel := context.WithCancel(context.Background())
	second := authAsync(ctx, s, "bob@example.test", "pw")
	<-h.obs.waited
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) || errors.Is(err, ErrBusy) {
		t.Errorf("cancelled wait: %v, want context.Canceled", err)
	}
	h.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// TestPaddingHoldsNoSlot: a failed attempt sleeps out its padding without
// its slot, so with one slot another attempt is checked meanwhile.
func TestPaddingHoldsNoSlot(t *testing.T) {
	s, _, _ := newChecksStore(t)
	s.MaxChecks = 1
	obs := &countingObserver{waited: make(chan struct{}, 16)}
	s.Observer = obs
	expireAtOnce(s)
	inSleep, wake := make(chan struct{}), make(chan struct{})
	s.sleep = func(ctx context.Context, d time.Duration) error {
		close(inSleep)
		<-wake
		return nil
	}
	failed := authAsync(context.Background(), s, alice, "wrong")
	<-inSleep
	if _, err := s.Authenticate(context.Background(), "bob@example.test", "pw"); err != nil {
		t.Errorf("during another attempt's padding: %v", err)
	}
	if n := obs.nWaited.Load(); n != 0 {
		t.Errorf("%d waits for a slot during the padding, want 0", n)
	}
	close(wake)
	if err := <-failed; !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("the failed attempt: %v", err)
	}
}

// TestCacheHitNeedsNoSlot: with every slot taken, a cached password still
// gets in, and a password that needs a full check is refused.
func TestCacheHitNeedsNoSlot(t *testing.T) {
	s, _, _ := newChecksStore(t)
	s.CacheTTL = time.Hour
	s.MaxChecks = 1 // fixed at first use
	if _, err := s.Authenticate(context.Background(), alice, "pw"); err != nil {
		t.Fatal(err)
	}
	h := holdChecks(s, 1)
	expireAtOnce(s)
	ctx := context.Background()
	held := authAsync(ctx, s, "bob@example.test", "pw")
	<-h.entered

	if _, err := s.Authenticate(ctx, alice, "pw"); err != nil {
		t.Errorf("cache hit with every slot taken: %v", err)
	}
	if n := h.obs.nWaited.Load(); n != 0 {
		t.Errorf("the cache hit waited for a slot (%d waits)", n)
	}
	if _, err := s.Authenticate(ctx, alice, "wrong"); !errors.Is(err, ErrBusy) {
		t.Errorf("another password with every slot taken: %v, want ErrBusy", err)
	}
	h.release <- struct{}{}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}

func TestDefaultMaxChecks(t *testing.T) {
	s, _, _ := newChecksStore(t)
	if got := cap(s.checkSlots()); got != runtime.NumCPU() {
		t.Errorf("%d slots, want runtime.NumCPU() = %d", got, runtime.NumCPU())
	}
}

package auth

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// ErrBusy is returned by Authenticate when every slot for a full password
// check stayed taken for Store.CheckWait: nothing was checked, so it says
// nothing about the credentials, and the client should try again (the SMTP
// session answers 454 4.7.0, RFC 4954 §6). It does not wrap
// ErrInvalidCredentials.
var ErrBusy = errors.New("too many password checks at once")

// DefaultCheckWait is the default Store.CheckWait. A bcrypt check at cost
// 12 takes about a quarter of a second, so two seconds is a queue of about
// eight checks per slot: a burst of honest clients gets through, while an
// AUTH flood is turned away in bounded time instead of piling up sessions
// that each wait their turn, and the 454 reaches the client well within any
// client's command timeout (RFC 5321 §4.5.3.2 suggests minutes).
const DefaultCheckWait = 2 * time.Second

// Observer is told how full password checks cope with load, for metrics.
// The methods must be quick and safe for concurrent use.
type Observer interface {
	// CheckWaited: an attempt found every slot taken and waited for one.
	CheckWaited()
	// CheckRefused: the wait ended without a slot; the attempt failed with
	// ErrBusy. Every refusal was counted as a wait first.
	CheckRefused()
}

type nopObserver struct{}

func (nopObserver) CheckWaited()  {}
func (nopObserver) CheckRefused() {}

// checkSlots returns the semaphore of full checks, made on first use from
// MaxChecks.
func (s *Store) checkSlots() chan struct{} {
	s.slotsOnce.Do(func() {
		n := s.MaxChecks
		if n <= 0 {
			n = runtime.NumCPU()
		}
		s.slots = make(chan struct{}, n)
	})
	return s.slots
}

func (s *Store) observer() Observer {
	if s.Observer == nil {
		return nopObserver{}
	}
	return s.Observer
}

// acquireCheck takes a slot for one full hash comparison: at most
// MaxChecks run at once, so that an AUTH flood, which costs the client
// nothing, cannot take the CPU from sessions already sending mail. An
// attempt without a free slot waits up to CheckWait, then fails with
// ErrBusy; if ctx ends first, with ctx's error. The caller calls release as
// soon as the comparison returns: the failure padding does not hold a slot.
func (s *Store) acquireCheck(ctx context.Context) (release func(), err error) {
	slots := s.checkSlots()
	release = func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release, nil
	default:
	}
	obs := s.observer()
	obs.CheckWaited()
	wait := s.CheckWait
	if wait <= 0 {
		wait = DefaultCheckWait
	}
	expired, stop := s.after(wait)
	defer stop()
	select {
	case slots <- struct{}{}:
		return release, nil
	case <-expired:
		obs.CheckRefused()
		return nil, ErrBusy
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a password check: %w", ctx.Err())
	}
}

// afterTimer is the Store's real timer: a channel that fires after d, and
// a function that releases it.
func afterTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

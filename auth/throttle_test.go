package auth

import (
	"fmt"
	"testing"
	"time"
)

// fakeClock is the Throttle's time, moved by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newThrottle(c *fakeClock, n int) *Throttle {
	return &Throttle{MaxFailures: n, Window: 10 * time.Minute, Cooldown: time.Hour, now: c.now}
}

func TestThrottlePolicy(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}
	th := newThrottle(clk, 3)
	const ip = "192.0.2.1"
	// Each attempt: the verdict before it, then a failure.
	want := []Verdict{
		{}, {}, {}, // three free failures
		{Delay: time.Second, By: "client"},
		{Delay: 2 * time.Second, By: "client"},
		{Delay: 4 * time.Second, By: "client"},
		{Refuse: true, RetryAfter: time.Hour, By: "client"}, // 6 = 2N: cool-down
	}
	for i, w := range want {
		// A different name each time: only the client counter applies.
		name := fmt.Sprintf("user%d", i)
		if got := th.Check(ip, name); got != w {
			t.Fatalf("attempt %d: %+v, want %+v", i+1, got, w)
		}
		th.Failure(ip, name)
	}
	// Refused attempts do not count, and the cool-down ends on time.
	clk.add(59 * time.Minute)
	if v := th.Check(ip, ""); !v.Refuse || v.RetryAfter != time.Minute {
		t.Errorf("near the end of the cool-down: %+v", v)
	}
	clk.add(time.Minute)
	if v := th.Check(ip, "x"); v != (Verdict{}) {
		t.Errorf("after the cool-down: %+v", v)
	}
	// Another client is never affected by this one.
	if v := th.Check("192.0.2.2", "y"); v != (Verdict{}) {
		t.Errorf("other client: %+v", v)
	}
}

func TestThrottleWindow(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	th := newThrottle(clk, 2)
	th.Failure("c", "a")
	clk.add(6 * time.Minute)
	th.Failure("c", "b")
	if v := th.Check("c", "z"); v.Delay != time.Second {
		t.Errorf("two failures within the window: %+v", v)
	}
	clk.add(5 * time.Minute) // the first failure leaves the window
	if v := th.Check("c", "z"); v != (Verdict{}) {
		t.Errorf("one failure left in the window: %+v", v)
	}
}

// TestThrottleUserName: a guesser spread over many networks is stopped by
// the per-name counter, while the owner's known network is spared.
func TestThrottleUserName(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	th := newThrottle(clk, 2)
	th.Success("198.51.100.1", "Alice")
	for i := range 4 {
		th.Failure(fmt.Sprintf("203.0.113.%d", i), "alice")
	}
	if v := th.Check("203.0.113.99", "ALICE"); !v.Refuse || v.By != "user" {
		t.Errorf("new network for a name in its cool-down: %+v", v)
	}
	if v := th.Check("198.51.100.1", "alice"); v != (Verdict{}) {
		t.Errorf("the owner's known network: %+v", v)
	}
	// The owner's success does not clear the name for the guesser.
	th.Success("198.51.100.1", "alice")
	if v := th.Check("203.0.113.99", "alice"); !v.Refuse {
		t.Errorf("after the owner's login: %+v", v)
	}
	// The known pair expires.
	clk.add(31 * 24 * time.Hour)
	th.Failure("203.0.113.1", "alice")
	th.Failure("203.0.113.2", "alice")
	if v := th.Check("198.51.100.1", "alice"); v.Delay == 0 {
		t.Errorf("expired known pair still exempt: %+v", v)
	}
}

func TestThrottleDisabled(t *testing.T) {
	var nilT *Throttle
	nilT.Failure("c", "n")
	nilT.Success("c", "n")
	if v := nilT.Check("c", "n"); v != (Verdict{}) {
		t.Errorf("nil throttle: %+v", v)
	}
	th := &Throttle{}
	for range 100 {
		th.Failure("c", "n")
	}
	if v := th.Check("c", "n"); v != (Verdict{}) {
		t.Errorf("MaxFailures 0: %+v", v)
	}
}

// TestThrottleBounded: a flood of clients and names never holds more than
// MaxEntries keys per map, and the most recent attackers are kept.
func TestThrottleBounded(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	th := newThrottle(clk, 1)
	th.MaxEntries = 100
	for i := range 1000 {
		clk.add(time.Millisecond)
		th.Failure(fmt.Sprintf("c%d", i), fmt.Sprintf("n%d", i))
		th.Success(fmt.Sprintf("c%d", i), fmt.Sprintf("n%d", i))
	}
	nets, names, known := th.entries()
	if nets > 100 || names > 100 || known > 100 {
		t.Errorf("entries %d %d %d, want at most 100 each", nets, names, known)
	}
	th.Failure("c999", "")
	if v := th.Check("c999", ""); !v.Refuse {
		t.Errorf("the latest client was evicted: %+v", v)
	}
	// Idle entries go first: after the window, the map empties itself.
	clk.add(2 * time.Hour)
	th.Failure("fresh", "")
	for i := range 200 {
		th.Failure(fmt.Sprintf("d%d", i), "")
	}
	if nets, _, _ := th.entries(); nets > 100 {
		t.Errorf("%d client entries", nets)
	}
}

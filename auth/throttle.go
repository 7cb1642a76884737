package auth

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Throttle is the brute-force defence of AUTH: it remembers failed
// authentications per client network and per user name and says, before the
// next attempt is checked, whether to go ahead at once, wait first, or refuse.
//
// The policy, for each counter (client network; user name):
//
//   - fewer than MaxFailures failures within Window: go ahead (the Store's
//     own constant failure delay still applies);
//   - from MaxFailures on: wait BaseDelay before checking, doubling with
//     each further failure (1s, 2s, 4s, ... capped at MaxDelay);
//   - at 2×MaxFailures: refuse every attempt for Cooldown without checking
//     anything (the session answers 421 and closes).
//
// The wait comes before the credentials are checked, not after a failure:
// a delay that only failures pay would tell a client that hangs up early
// that its guess was wrong, and a correct password would still be found at
// full speed. So while a network is being slowed, everyone behind it is,
// which is the price of not leaking the answer.
//
// Per user name, a client network that has authenticated as that user
// before (within KnownFor) is exempt: a guesser elsewhere cannot lock the
// owner out from where the owner usually logs in. Everyone else trying that
// name is slowed and then refused, which is what stops a guesser that
// spreads over many networks.
//
// Memory is bounded: entries with nothing left to remember are dropped, and
// at most MaxEntries keys are kept per map, the least recently active going
// first.
//
// With Shared set, the counters and the known pairs are also kept there,
// for every server that shares it, and its counts decide: a guesser that
// spreads its attempts over several nodes is counted once. The local
// counters are kept all the same and decide whenever Shared fails, so a
// shared store that is down leaves each node with its own defence.
//
// A Throttle is safe for concurrent use. Set its fields before first use.
type Throttle struct {
	// MaxFailures is N above; 0 or less disables the throttle.
	MaxFailures int
	// Window is how long a failure counts.
	Window time.Duration
	// Cooldown is how long attempts are refused once 2×MaxFailures is
	// reached.
	Cooldown time.Duration
	// BaseDelay is the first wait (default 1s); MaxDelay caps the doubling
	// (default 1m).
	BaseDelay, MaxDelay time.Duration
	// KnownFor is how long a successful (user, network) pair stays exempt
	// from the per-user counter (default 30 days).
	KnownFor time.Duration
	// MaxEntries bounds each map (default 65536).
	MaxEntries int
	// Shared, when set, shares the counters between servers (see above).
	Shared SharedFailures

	mu    sync.Mutex
	now   func() time.Time // test seam
	nets  map[string]*failures
	names map[string]*failures
	known map[string]time.Time // name+"\x00"+client -> expiry
}

// SharedFailures keeps failure counters and remembered keys for several
// servers; relay/limits implements it over Redis. Keys are "scope:name"
// with any bytes in name (a user name as a client typed it); the
// implementation makes them safe. Every method must return within a
// fraction of a second, even when the store hangs (a client waits for the
// AUTH reply), and an error means nothing was decided or recorded: the
// Throttle then relies on its own counters.
type SharedFailures interface {
	// Failures returns how many failures key has had within window, or,
	// when key is in a cool-down, how long it still lasts.
	Failures(ctx context.Context, key string, window time.Duration) (n int, cooldown time.Duration, err error)
	// AddFailure records a failure of key, unless it is in a cool-down;
	// when key then has limit failures within window, they are cleared
	// and key is in a cool-down for cooldown.
	AddFailure(ctx context.Context, key string, window time.Duration, limit int, cooldown time.Duration) error
	// Remember marks key for ttl; Remembered tells whether it is marked.
	Remember(ctx context.Context, key string, ttl time.Duration) error
	Remembered(ctx context.Context, key string) (bool, error)
}

// Scopes of the shared keys.
const (
	sharedClient = "client:"
	sharedUser   = "user:"
	sharedKnown  = "known:"
)

// sharedVerdict is the verdict of one shared counter; ok is false when
// there is no Shared or it failed.
func (t *Throttle) sharedVerdict(key string) (v Verdict, ok bool) {
	if t.Shared == nil {
		return Verdict{}, false
	}
	n, cool, err := t.Shared.Failures(context.Background(), key, t.Window)
	if err != nil {
		return Verdict{}, false
	}
	return t.policy(n, cool), true
}

// failures is what one counter remembers.
type failures struct {
	times []time.Time // within Window, oldest first
	until time.Time   // end of the cool-down, if any
	last  time.Time   // last activity, for eviction
}

// Verdict is the Throttle's answer for one attempt.
type Verdict struct {
	// Refuse: do not check the credentials; answer 421 and close.
	Refuse bool
	// Delay: wait this long, then check the credentials.
	Delay time.Duration
	// RetryAfter is how long the cool-down still lasts (when Refuse).
	RetryAfter time.Duration
	// By names the counter that decided: "client" or "user".
	By string
}

func (t *Throttle) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

func (t *Throttle) enabled() bool { return t != nil && t.MaxFailures > 0 }

// Check returns the verdict for an attempt from client (a network key, such
// as "192.0.2.1" or "2001:db8::/64") as user name; name may be "" when it
// is not known yet (at the AUTH command), and then only the client counter
// is consulted.
func (t *Throttle) Check(client, name string) Verdict {
	if !t.enabled() {
		return Verdict{}
	}
	key := throttleKey(name)
	pair := key + "\x00" + client
	// The shared counters are read before the lock is taken: a slow store
	// must not hold up every other attempt.
	sv, sharedClientOK := t.sharedVerdict(sharedClient + client)
	var su Verdict
	sharedUserOK, sharedKnownPair := false, false
	if name != "" {
		su, sharedUserOK = t.sharedVerdict(sharedUser + key)
		if t.Shared != nil {
			sharedKnownPair, _ = t.Shared.Remembered(context.Background(), sharedKnown+pair)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	v := sv
	if !sharedClientOK {
		v = t.verdict(t.nets[client], now)
	}
	if v.Refuse || v.Delay > 0 {
		v.By = "client"
	}
	if name == "" {
		return v
	}
	if exp, ok := t.known[pair]; sharedKnownPair || ok && now.Before(exp) {
		return v
	}
	u := su
	if !sharedUserOK {
		u = t.verdict(t.names[key], now)
	}
	switch {
	case v.Refuse:
	case u.Refuse:
		v, v.By = u, "user"
	case u.Delay > v.Delay:
		v.Delay, v.By = u.Delay, "user"
	}
	return v
}

// verdict applies the policy to one counter. t.mu is held.
func (t *Throttle) verdict(f *failures, now time.Time) Verdict {
	if f == nil {
		return Verdict{}
	}
	var cool time.Duration
	if now.Before(f.until) {
		cool = f.until.Sub(now)
	} else {
		f.prune(now, t.Window)
	}
	return t.policy(len(f.times), cool)
}

// policy is the verdict for n failures within the window, or for a
// cool-down that lasts cool more.
func (t *Throttle) policy(n int, cool time.Duration) Verdict {
	if cool > 0 {
		return Verdict{Refuse: true, RetryAfter: cool}
	}
	if n < t.MaxFailures {
		return Verdict{}
	}
	base, maxD := t.BaseDelay, t.MaxDelay
	if base <= 0 {
		base = time.Second
	}
	if maxD <= 0 {
		maxD = time.Minute
	}
	d := base
	for i := t.MaxFailures; i < n && d < maxD; i++ {
		d *= 2
	}
	return Verdict{Delay: min(d, maxD)}
}

func (f *failures) prune(now time.Time, window time.Duration) {
	cut := 0
	for cut < len(f.times) && now.Sub(f.times[cut]) >= window {
		cut++
	}
	f.times = f.times[cut:]
}

// Failure records a failed attempt from client as name (name may be "").
func (t *Throttle) Failure(client, name string) {
	if !t.enabled() {
		return
	}
	if t.Shared != nil {
		// Cleared into a cool-down at 2×MaxFailures, as fail does.
		ctx := context.Background()
		t.Shared.AddFailure(ctx, sharedClient+client, t.Window, 2*t.MaxFailures, t.Cooldown)
		if name != "" {
			t.Shared.AddFailure(ctx, sharedUser+throttleKey(name), t.Window, 2*t.MaxFailures, t.Cooldown)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	t.nets = t.fail(t.nets, client, now)
	if name != "" {
		t.names = t.fail(t.names, throttleKey(name), now)
	}
}

func (t *Throttle) fail(m map[string]*failures, key string, now time.Time) map[string]*failures {
	if m == nil {
		m = make(map[string]*failures)
	}
	f := m[key]
	if f == nil {
		m = t.bound(m, now)
		f = &failures{}
		m[key] = f
	}
	f.last = now
	if now.Before(f.until) {
		return m // refused attempts are not checked, so they do not count
	}
	f.prune(now, t.Window)
	f.times = append(f.times, now)
	if len(f.times) >= 2*t.MaxFailures {
		f.until = now.Add(t.Cooldown)
		f.times = nil
	}
	return m
}

// Success records a successful authentication: the pair (name, client) is
// remembered as known. No counter is cleared: a guesser holding one valid
// account must not reset its network's count by logging in with it, and
// the owner logging in must not hand a guesser elsewhere a fresh allowance
// for the name (the known pair already spares the owner).
func (t *Throttle) Success(client, name string) {
	if !t.enabled() {
		return
	}
	key := throttleKey(name)
	pair := key + "\x00" + client
	knownFor := t.KnownFor
	if knownFor <= 0 {
		knownFor = 30 * 24 * time.Hour
	}
	if t.Shared != nil {
		t.Shared.Remember(context.Background(), sharedKnown+pair, knownFor)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock()
	if t.known == nil {
		t.known = make(map[string]time.Time)
	}
	if _, ok := t.known[pair]; !ok && len(t.known) >= t.maxEntries() {
		t.sweepKnown(now)
	}
	t.known[pair] = now.Add(knownFor)
}

func (t *Throttle) maxEntries() int {
	if t.MaxEntries > 0 {
		return t.MaxEntries
	}
	return 1 << 16
}

// bound makes room for one more key in m: entries with nothing to remember
// go first; if that is not enough, the least recently active quarter.
func (t *Throttle) bound(m map[string]*failures, now time.Time) map[string]*failures {
	max := t.maxEntries()
	if len(m) < max {
		return m
	}
	for k, f := range m {
		f.prune(now, t.Window)
		if len(f.times) == 0 && !now.Before(f.until) {
			delete(m, k)
		}
	}
	if len(m) < max {
		return m
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return m[a].last.Compare(m[b].last) })
	for _, k := range keys[:len(keys)/4+1] {
		delete(m, k)
	}
	return m
}

// sweepKnown drops expired pairs, then the oldest quarter if still full.
func (t *Throttle) sweepKnown(now time.Time) {
	for k, exp := range t.known {
		if !now.Before(exp) {
			delete(t.known, k)
		}
	}
	if len(t.known) < t.maxEntries() {
		return
	}
	keys := make([]string, 0, len(t.known))
	for k := range t.known {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return t.known[a].Compare(t.known[b]) })
	for _, k := range keys[:len(keys)/4+1] {
		delete(t.known, k)
	}
}

// entries returns the number of keys held, for tests of the bound.
func (t *Throttle) entries() (nets, names, known int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.nets), len(t.names), len(t.known)
}

// throttleKey is how a user name is counted: folded as the users file
// compares names, and cut to the longest valid name so that a client cannot
// make one entry cost more than that.
func throttleKey(name string) string {
	if len(name) > MaxNameLen {
		name = name[:MaxNameLen]
	}
	return nameKey(name)
}

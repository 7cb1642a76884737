package outbound

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"postern/queue"
	"postern/queue/reply"
)

// Shaping: how much mail each destination gets, and how postern backs off
// when one pushes back. See doc.go, "Shaping", for the model; this file
// holds the state machine.
//
// A destination is the set of MX hosts of a domain (every domain hosted
// on the same MX hosts shares one), or, until its MX hosts are known, the
// domain itself. A provider is a group of destinations whose MX hosts end
// in one of its suffixes (".google.com"): its limits hold across all of
// them, and a rate-limit reply from any of them slows them all down.

// Defaults of Shaping.
const (
	// DefaultConnections is Postfix's default_destination_concurrency_limit,
	// what real MX hosts are used to, and what `make bench` compares
	// postern with Postfix at. (KumoMTA's shaping.toml default is 10.)
	DefaultConnections = 20
	// DefaultDeadAfter is how many attempts in a row whose every host
	// failed to connect or greet make a destination dead. One such
	// attempt (up to MaxAddresses addresses tried) may be bad luck on a
	// lossy path; two in a row, with no success between, are not.
	DefaultDeadAfter = 2
	// DefaultDeadFor is how long a destination first stays dead: the
	// queue's default first retry. Each time it is found dead again the
	// wait doubles, up to DefaultDeadForMax (the queue's default longest
	// retry). Postfix keeps a dead destination for its minimal_backoff_time.
	DefaultDeadFor    = time.Minute
	DefaultDeadForMax = time.Hour
	// DefaultSuspendFor is how long a rate-limit reply first suspends a
	// destination or provider (unless its pattern says how long): long
	// enough for the attempts in flight to come back, short enough not
	// to matter to a remote that only needed the rate halved. Each
	// rate-limit reply with no delivery since doubles it, up to
	// DefaultSuspendForMax.
	DefaultSuspendFor    = 2 * time.Second
	DefaultSuspendForMax = 10 * time.Minute
)

const (
	// moment is the longest suspension that only parks the queue's work
	// (Admission.Until); a longer one defers it (Admission.Suspended),
	// so that `postern queue list` says why the messages wait.
	moment = 5 * time.Second
	// rateWindow is how far back the delivery rate is measured, the rate
	// a first rate-limit reply halves.
	rateWindow = 10 // seconds
	// slowStart is the rate a unit gets at its first rate-limit reply
	// when nothing was delivered in the last rateWindow: one message a
	// second, a rate no provider refuses for long.
	slowStart = 1.0
	// minRate is the lowest rate slowing down reaches: one a minute.
	minRate = 1.0 / 60
	// recoverStep is how much each delivery raises a lowered rate (1/16:
	// from half the remote's limit back to it in about 11 deliveries).
	recoverStep = 1.0 / 16
	// liftRate ends slowing down for a unit without a configured rate:
	// once back at 100 messages a second, it has no limit again.
	liftRate = 100.0
	// forgetAfter is how long a destination without traffic is kept; its
	// state then resets (a provider's) or is dropped (others').
	forgetAfter = 10 * time.Minute
	// gcEvery is how often the Shaper looks for units to forget.
	gcEvery = 30 * time.Second
	// maxDomains bounds the recipient domains a destination lists.
	maxDomains = 10
)

// Rate is a number of messages per period. The zero value is no limit.
type Rate struct {
	Messages int
	Per      time.Duration
}

// PerSecond is r in messages per second; 0 for no limit.
func (r Rate) PerSecond() float64 {
	if r.Messages <= 0 || r.Per <= 0 {
		return 0
	}
	return float64(r.Messages) / r.Per.Seconds()
}

// Limits are what one destination, or one provider, may take. Zero
// fields mean no limit, except in Shaping.Default (see there).
type Limits struct {
	// Connections caps the attempts running at once (each holds one
	// connection).
	Connections int
	// MessagesPerConnection caps the transactions one connection
	// carries; it is closed after that many.
	MessagesPerConnection int
	// Rate caps the messages (deliveries, whatever their recipients)
	// started per period.
	Rate Rate
}

// Provider is a group of destinations known by the suffixes of their MX
// hosts, with limits across all of them.
type Provider struct {
	Name string
	// MXSuffixes end the MX host names of its destinations, with their
	// leading dot: ".google.com". A destination belongs to the provider
	// whose suffix matches the most of its host names; the longest
	// suffix breaks ties.
	MXSuffixes []string
	// Limits: Connections and Rate hold across the provider;
	// MessagesPerConnection, when set, replaces the default's for its
	// destinations.
	Limits
}

// RateLimitPattern recognizes a temporary reply that says "slow down":
// every field set must match, and the reply must be a 4xx.
type RateLimitPattern struct {
	Code     int            // the reply code; 0 matches any 4xx
	Enhanced reply.Enhanced // the enhanced code; zero matches any
	Text     *regexp.Regexp // matched against the text; nil matches any
	// Suspend, when set, suspends the destination or provider for this
	// long; otherwise the rate is halved and it is suspended briefly
	// (DefaultSuspendFor, doubling).
	Suspend time.Duration
}

// Match reports whether r is a rate-limit reply by p.
func (p RateLimitPattern) Match(r reply.Reply) bool {
	if r.Class() != 4 {
		return false
	}
	return (p.Code == 0 || r.Code == p.Code) &&
		(p.Enhanced.IsZero() || r.Enhanced == p.Enhanced) &&
		(p.Text == nil || p.Text.MatchString(r.Text))
}

// Shaping configures a Shaper.
type Shaping struct {
	// Default are the limits of every destination. Default.Connections 0
	// means DefaultConnections.
	Default   Limits
	Providers []Provider
	// RateLimitPatterns are tried in order; the first that matches
	// decides. None: rate-limit replies are ordinary temporary failures.
	RateLimitPatterns []RateLimitPattern

	// DeadAfter, DeadFor, DeadForMax, SuspendFor, SuspendForMax: 0 means
	// the default of that name.
	DeadAfter                                      int
	DeadFor, DeadForMax, SuspendFor, SuspendForMax time.Duration

	// Shared, when set, shapes destinations and providers together with
	// every node that shares it (limits.redis): their rate, their
	// connections, their suspensions and dead times (see shared.go).
	// Whenever it fails, this node's own state decides, as without it.
	Shared SharedShaping

	// Logger gets a line when a destination or provider is slowed down,
	// suspended, found dead or recovers; nil logs nothing.
	Logger *zap.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
}

func (s Shaping) withDefaults() Shaping {
	if s.Default.Connections <= 0 {
		s.Default.Connections = DefaultConnections
	}
	if s.DeadAfter <= 0 {
		s.DeadAfter = DefaultDeadAfter
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&s.DeadFor, DefaultDeadFor}, {&s.DeadForMax, DefaultDeadForMax},
		{&s.SuspendFor, DefaultSuspendFor}, {&s.SuspendForMax, DefaultSuspendForMax}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if s.Logger == nil {
		s.Logger = zap.NewNop()
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	return s
}

// The kinds of unit, as queue.Destination.Kind says them.
const (
	kindDestination = "destination"
	kindDomain      = "domain"
	kindProvider    = "provider"
	kindSmarthostU  = "smarthost"
)

// Shaper holds the state of every destination and provider and decides
// what may be attempted: it implements queue.Gate (through MX and Router)
// and learns from every attempt's outcome (MX.Deliver reports it). It is
// safe for concurrent use.
type Shaper struct {
	cfg Shaping

	mu      sync.Mutex
	units   map[string]*unit // by name
	domains map[string]*unit // recipient domain → its destination, once its MX hosts are known
	lastGC  time.Time

	// With Shaping.Shared: this Shaper's name among the nodes, the last
	// slot holder numbered, and the slots held now (renewed while
	// renewing is set).
	node     string
	slotSeq  uint64
	slots    map[slot]struct{}
	renewing bool
}

// NewShaper returns a Shaper for cfg, defaults filled in.
func NewShaper(cfg Shaping) *Shaper {
	s := &Shaper{cfg: cfg.withDefaults(), units: make(map[string]*unit), domains: make(map[string]*unit),
		node: newNodeID(), slots: make(map[slot]struct{})}
	for _, p := range s.cfg.Providers {
		u := s.newUnit(p.Name, kindProvider, p.Limits, nil, time.Time{})
		u.suffixes = p.MXSuffixes
	}
	return s
}

// unit is the state of one destination, provider or smarthost list.
type unit struct {
	name     string
	kind     string
	provider *unit    // the provider of a destination, if any
	limits   Limits   // as configured
	suffixes []string // a provider's
	domains  []string // recipient domains lately delivered through it

	active int           // attempts admitted and not released
	freed  chan struct{} // closed when active drops; nil until someone waits

	// Rate: a token bucket at rate messages a second (0: no limit),
	// holding at most burst.
	rate, burst float64
	tokens      float64
	filled      time.Time
	slowedAt    time.Time // the last slow-down: refusals of attempts started before it do not count again
	// deliveredSince: a delivery went through since the last slow-down,
	// so the rate in force was tried.
	deliveredSince bool
	perSecond      [rateWindow]struct {
		sec int64 // the second this bucket counts
		n   uint32
	}
	firstDelivery time.Time // of the window's measure: see deliveryRate
	suspended     time.Time
	suspendFor    time.Duration // the next adaptive suspension

	// Health of a destination's hosts.
	failures int // attempts in a row whose every host failed to connect or greet
	// probing: one attempt at a time, until a host answers (a new
	// destination, or one whose hosts failed).
	probing   bool
	dead      time.Time
	deadFor   time.Duration
	deadCause reply.Reply

	// With Shaping.Shared: the hold (suspension or dead time) last read
	// from the store, any node's, and when it was read; when the shared
	// bucket refused last, until when (asked again only then).
	held       hold
	heldRead   time.Time
	sharedNext time.Time
	// slotsFull: the store found every connection slot held; the next
	// admission asks it again from then, or as soon as one of this node's
	// attempts ends (that frees a slot of the fleet's).
	slotsFull time.Time

	lastReply   reply.Reply
	lastReplyAt time.Time
	delivered   uint64
	rateLimited uint64
	connFailed  uint64
	used        time.Time
}

// newUnit makes a unit, used at now (zero for a provider: it is listed
// once it has had traffic). s.mu is held.
func (s *Shaper) newUnit(name, kind string, l Limits, provider *unit, now time.Time) *unit {
	u := &unit{name: name, kind: kind, limits: l, provider: provider, used: now,
		suspendFor: s.cfg.SuspendFor, deadFor: s.cfg.DeadFor}
	u.resetRate()
	s.units[name] = u
	return u
}

// resetRate puts the configured rate back in force, with a full bucket.
func (u *unit) resetRate() {
	u.rate = u.limits.Rate.PerSecond()
	u.burst = max(1, float64(u.limits.Rate.Messages))
	u.tokens, u.filled = u.burst, time.Time{}
}

// configuredRate is the rate of the configuration, 0 for none.
func (u *unit) configuredRate() float64 { return u.limits.Rate.PerSecond() }

// slowed reports whether the rate in force is below the configured one.
func (u *unit) slowed() bool { return u.rate != u.configuredRate() }

// window is how many attempts may run at once.
func (u *unit) window() int {
	if u.kind == kindDomain || u.probing {
		return 1 // one probe, until its hosts are known, or answer
	}
	return u.limits.Connections // 0 for a provider without its own limit
}

// wait returns the channel closed when an attempt of u ends.
func (u *unit) wait() <-chan struct{} {
	if u.freed == nil {
		u.freed = make(chan struct{})
	}
	return u.freed
}

// fill adds the tokens earned since the last look.
func (u *unit) fill(now time.Time) {
	if u.rate == 0 {
		return
	}
	if !u.filled.IsZero() && now.After(u.filled) {
		u.tokens = min(u.burst, u.tokens+now.Sub(u.filled).Seconds()*u.rate)
	}
	u.filled = now
}

// rateWait is how long until u's bucket holds a token; 0 when it does.
func (u *unit) rateWait(now time.Time) time.Duration {
	if u.rate == 0 {
		return 0
	}
	u.fill(now)
	if u.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - u.tokens) / u.rate * float64(time.Second))
}

func (u *unit) take() {
	if u.rate != 0 {
		u.tokens--
	}
}

// countDelivery adds one delivery to the per-second window.
func (u *unit) countDelivery(now time.Time) {
	if u.firstDelivery.IsZero() || now.Sub(u.firstDelivery) > 2*rateWindow*time.Second && u.deliveryRate(now) == 0 {
		u.firstDelivery = now
	}
	sec := now.Unix()
	b := &u.perSecond[sec%rateWindow]
	if b.sec != sec {
		b.sec, b.n = sec, 0
	}
	b.n++
}

// deliveryRate is the deliveries per second over the last rateWindow, or
// over the time since deliveries began when that is shorter (at least a
// second): a destination that has delivered 8 messages in its first
// second took them at 8 a second, not 0.8.
func (u *unit) deliveryRate(now time.Time) float64 {
	sec := now.Unix()
	var n uint32
	for _, b := range u.perSecond {
		if b.sec > sec-rateWindow && b.sec <= sec {
			n += b.n
		}
	}
	span := min(max(now.Sub(u.firstDelivery).Seconds(), 1), rateWindow)
	return float64(n) / span
}

// admit is queue.Gate.Admit for delivery to domain's MX hosts. With
// force (an operator's retry) a suspension or dead time does not stop it:
// its other limits do (a dead destination is probing, one at a time).
func (s *Shaper) admit(domain string, now time.Time, force bool) queue.Admission {
	s.mu.Lock()
	s.gc(now)
	d := s.domains[domain]
	if d == nil {
		d = s.units["domain:"+domain]
		if d == nil {
			d = s.newUnit("domain:"+domain, kindDomain, s.cfg.Default, nil, now)
		}
	}
	s.mu.Unlock()
	return s.admitUnit(d, now, force)
}

// admitSmarthost is queue.Gate.Admit for delivery through a smarthost
// list, which only its connection cap limits.
func (s *Shaper) admitSmarthost(name string, conns int, now time.Time) queue.Admission {
	s.mu.Lock()
	s.gc(now)
	u := s.units[name]
	if u == nil {
		u = s.newUnit(name, kindSmarthostU, Limits{Connections: conns}, nil, now)
	}
	s.mu.Unlock()
	return s.admitUnit(u, now, false)
}

// admitUnit decides for destination d (and its provider): first by what
// this node knows, without a call to the store (a hold, the attempts in
// flight, the rate); then, for a unit shaped through Shaping.Shared, by
// the fleet's rate and connection slots, s.mu released meanwhile (the
// attempt's place in the local window is kept while the store answers).
func (s *Shaper) admitUnit(d *unit, now time.Time, force bool) queue.Admission {
	units := []*unit{d}
	if d.provider != nil {
		units = append(units, d.provider)
	}
	shared := s.shared(d)
	if shared {
		s.readHolds(units, now)
	}
	s.mu.Lock()
	for _, u := range units {
		if a, ok := u.halted(now); ok && !force {
			s.mu.Unlock()
			return a
		}
	}
	windows := make([]int, len(units))
	for i, u := range units {
		windows[i] = u.window()
		if shared && now.Before(u.slotsFull) {
			// Read under s.mu: workers admit at once (the PostgreSQL
			// queue's do), and release writes both.
			a := queue.Admission{Until: u.slotsFull, Wait: u.wait()}
			s.mu.Unlock()
			return a
		}
		if w := windows[i]; w > 0 && u.active >= w {
			a := queue.Admission{Wait: u.wait()}
			if shared {
				// The place may be another attempt's for a moment only
				// (held while the store answers, see unreserve): ask
				// again soon as well.
				a.Until = now.Add(sharedSlotRetry)
			}
			s.mu.Unlock()
			return a
		}
	}
	var wait time.Duration
	rates := make([]float64, len(units))
	for i, u := range units {
		if shared && u.rate != 0 {
			// The store refused until then: no need to ask before.
			rates[i] = u.rate
			wait = max(wait, u.sharedNext.Sub(now))
			continue
		}
		wait = max(wait, u.rateWait(now))
	}
	if wait > 0 {
		s.mu.Unlock()
		return queue.Admission{Until: now.Add(wait)}
	}
	for _, u := range units {
		if !shared {
			u.take()
		}
		u.active++
		u.used = now
	}
	s.mu.Unlock()
	var held []slot
	if shared {
		var refused queue.Admission
		var ok bool
		if held, refused, ok = s.admitShared(units, rates, windows, now); !ok {
			s.unreserve(units)
			return refused
		}
	}
	var once sync.Once
	return queue.Admission{Release: func() {
		once.Do(func() {
			s.release(units)
			s.releaseSlots(held)
		})
	}}
}

// admitShared takes a shared slot of each unit with a window, then
// spends one message of each unit's shared bucket at rates (0: no rate),
// for an attempt admitted locally. Slots come first: when the fleet's
// connections are all busy, as under load they are, the rate is not
// spent for an attempt that does not run. It returns the slots held, or a
// refusal and false when the fleet has no room. Called without s.mu.
func (s *Shaper) admitShared(units []*unit, rates []float64, windows []int, now time.Time) ([]slot, queue.Admission, bool) {
	held, ok := s.acquireSlots(units, windows, now.Add(sharedSlotRetry))
	if !ok {
		// A slot freed on another node signals nothing here: ask again
		// soon. (No Wait: undoing this attempt's own place would close
		// it at once.)
		return nil, queue.Admission{Until: now.Add(sharedSlotRetry)}, false
	}
	for i, u := range units {
		if rates[i] == 0 {
			continue
		}
		wait, decided := s.sharedRate(u, rates[i], u.limits.Rate.Messages, u.limits.Rate.Per)
		s.mu.Lock()
		if !decided {
			// The store failed: this node's bucket decides, as alone.
			wait = u.rateWait(now)
			if wait == 0 {
				u.take()
			}
		} else if wait > 0 {
			u.sharedNext = now.Add(wait)
		}
		s.mu.Unlock()
		if wait > 0 {
			s.releaseSlots(held)
			return nil, queue.Admission{Until: now.Add(wait)}, false
		}
	}
	return held, queue.Admission{}, true
}

// halted answers for a unit that is dead or suspended at now.
func (u *unit) halted(now time.Time) (queue.Admission, bool) {
	until, why := u.suspended, u.lastReply
	if u.dead.After(until) {
		until, why = u.dead, u.deadCause
	}
	if u.held.until.After(until) { // another node's, read from the store
		until, why = u.held.until, u.held.Why
	}
	if !now.Before(until) {
		return queue.Admission{}, false
	}
	if until.Sub(now) <= moment {
		return queue.Admission{Until: until}, true
	}
	return queue.Admission{Until: until, Suspended: suspendedReply(why)}, true
}

// suspendedReply is the last reply of recipients deferred for a halted
// destination, as Postfix words it: "delivery temporarily suspended:" and
// the reason, a remote's reply quoted whole. The enhanced code is the
// reason's when it is a temporary one, else X.4.1 "No answer from host"
// (RFC 3463 §3.5).
func suspendedReply(why reply.Reply) reply.Reply {
	enh := why.Enhanced
	if enh.Class != 4 {
		enh = reply.Enhanced{Class: 4, Subject: 4, Detail: 1}
	}
	text := why.Text // postern's own words: the code is already there
	if why.Code != 0 {
		text = why.String()
	}
	return reply.Reply{Enhanced: enh, Text: "delivery temporarily suspended: " + text}
}

// unreserve gives back the places of an attempt the fleet refused, without
// waking those waiting for a place: they would be refused too (the fleet
// is full, or its rate spent), and each would wake the next, a loop of
// calls to the store for as long as the fleet stays full.
func (s *Shaper) unreserve(units []*unit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range units {
		u.active--
	}
}

func (s *Shaper) release(units []*unit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range units {
		u.active--
		u.slotsFull = time.Time{}
		if u.freed != nil {
			close(u.freed)
			u.freed = nil
		}
	}
}

// destination returns the destination of domain, whose MX hosts are
// hosts, and remembers it for the next admissions: MX delivery calls it
// once the hosts are resolved.
func (s *Shaper) destination(domain string, hosts []string) *unit {
	sorted := slices.Clone(hosts)
	for i, h := range sorted {
		sorted[i] = strings.ToLower(strings.TrimSuffix(h, "."))
	}
	slices.Sort(sorted)
	name := strings.Join(slices.Compact(sorted), ",")
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.units[name]; u != nil && u.kind != kindDestination {
		name = "mx:" + name // a host named like a provider or a smarthost list
	}
	d := s.units[name]
	if d == nil {
		p := s.provider(sorted)
		l := s.cfg.Default
		if p != nil && p.limits.MessagesPerConnection > 0 {
			l.MessagesPerConnection = p.limits.MessagesPerConnection
		}
		d = s.newUnit(name, kindDestination, l, p, s.cfg.Now())
		// One attempt at a time until a host answers: the first
		// attempt's hosts may be a tarpit that has not failed yet.
		d.probing = true
	}
	s.domains[domain] = d
	if !slices.Contains(d.domains, domain) {
		d.domains = append(d.domains, domain)
		if len(d.domains) > maxDomains {
			d.domains = d.domains[1:]
		}
	}
	return d
}

// provider is the provider whose suffixes match the most of hosts, the
// longest suffix breaking ties; nil when none matches. s.mu is held.
func (s *Shaper) provider(hosts []string) *unit {
	var best *unit
	bestN, bestLen := 0, 0
	for _, p := range s.cfg.Providers {
		n, longest := 0, 0
		for _, h := range hosts {
			for _, suf := range p.MXSuffixes {
				if strings.HasSuffix(h, strings.ToLower(suf)) {
					n++
					longest = max(longest, len(suf))
					break
				}
			}
		}
		if n > bestN || n == bestN && n > 0 && longest > bestLen {
			best, bestN, bestLen = s.units[p.Name], n, longest
		}
	}
	return best
}

// messagesPerConnection is the cap of d's connections, 0 for none.
func (s *Shaper) messagesPerConnection(d *unit) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return d.limits.MessagesPerConnection
}

// attemptReport is what one MX attempt tells about its destination.
type attemptReport struct {
	started   time.Time // when the attempt began
	delivered bool      // a recipient was accepted
	// rateLimited is the first reply matching a rate-limit pattern, and
	// the pattern.
	rateLimited *reply.Reply
	pattern     RateLimitPattern
	// answered: some host held an SMTP conversation. connFails counts
	// the hosts that failed to connect or to greet, connCause says how
	// the last one did; other is set when a host's failure said nothing
	// either way (a pool at its cap, a deadline).
	answered, other bool
	connFails       int
	connCause       reply.Reply
}

// connFailed reports whether every host tried failed to connect or greet.
func (o attemptReport) connFailed() bool { return !o.answered && !o.other && o.connFails > 0 }

// rateLimit returns the pattern r matches, if any.
func (s *Shaper) rateLimit(r reply.Reply) (RateLimitPattern, bool) {
	for _, p := range s.cfg.RateLimitPatterns {
		if p.Match(r) {
			return p, true
		}
	}
	return RateLimitPattern{}, false
}

// report learns from one attempt at destination d, and tells the other
// nodes (Shaping.Shared) of a suspension or a dead time it decided.
func (s *Shaper) report(d *unit, o attemptReport) {
	now := s.cfg.Now()
	s.mu.Lock()
	holds := s.learn(d, o, now)
	s.mu.Unlock()
	if len(holds) > 0 {
		s.writeHolds(holds)
	}
}

// learn is report's part under s.mu: it returns the holds to share.
func (s *Shaper) learn(d *unit, o attemptReport, now time.Time) []pendingHold {
	// Rate and suspension belong to the provider when there is one: it
	// is the provider that said "slow down".
	shaped := d
	if d.provider != nil {
		shaped = d.provider
	}
	both := []*unit{d}
	if shaped != d {
		both = append(both, shaped)
	}
	for _, u := range both {
		u.used = now
	}
	suspended, dead := shaped.suspended, d.dead
	if o.delivered {
		for _, u := range both {
			u.delivered++
			u.countDelivery(now)
			u.deliveredSince = true
		}
		if shaped.slowed() {
			shaped.rate += max(shaped.rate*recoverStep, minRate)
			if c := shaped.configuredRate(); c > 0 && shaped.rate >= c || c == 0 && shaped.rate >= liftRate {
				shaped.resetRate()
				s.cfg.Logger.Info("destination back to its full rate", zap.String("destination", shaped.name))
			}
		}
		shaped.suspendFor = s.cfg.SuspendFor
	}
	if o.rateLimited != nil {
		d.lastReply, d.lastReplyAt = *o.rateLimited, now
		s.slowDown(shaped, o, now)
	}
	switch {
	case o.answered:
		if d.probing || d.failures > 0 {
			s.cfg.Logger.Info("destination answers again", zap.String("destination", d.name))
		}
		d.failures, d.probing, d.deadFor = 0, false, s.cfg.DeadFor
	case o.connFailed():
		d.connFailed++
		d.failures++
		d.probing = true
		d.lastReply, d.lastReplyAt, d.deadCause = o.connCause, now, o.connCause
		if d.failures >= s.cfg.DeadAfter {
			d.dead = now.Add(d.deadFor)
			s.cfg.Logger.Warn("destination dead: its hosts do not answer", zap.String("destination", d.name),
				zap.Time("until", d.dead), zap.Int("failures", d.failures), replyField(o.connCause))
			d.deadFor = min(2*d.deadFor, s.cfg.DeadForMax)
		}
	}
	var holds []pendingHold
	if s.shared(shaped) && shaped.suspended.After(suspended) {
		h := hold{Why: shaped.lastReply}
		if shaped.slowed() {
			h.Rate = shaped.rate
		}
		holds = append(holds, pendingHold{sharedKey(shaped), h, shaped.suspended.Sub(now)})
	}
	if s.shared(d) && d.dead.After(dead) {
		holds = append(holds, pendingHold{sharedKey(d), hold{Dead: true, Why: d.deadCause}, d.dead.Sub(now)})
	}
	return holds
}

// slowDown acts on a rate-limit reply to an attempt at u. s.mu is held.
func (s *Shaper) slowDown(u *unit, o attemptReport, now time.Time) {
	u.rateLimited++
	u.lastReply, u.lastReplyAt = *o.rateLimited, now
	if o.pattern.Suspend > 0 {
		u.suspended = later(u.suspended, now.Add(o.pattern.Suspend))
		s.cfg.Logger.Warn("destination suspended", zap.String("destination", u.name),
			zap.Time("until", u.suspended), replyField(*o.rateLimited))
		return
	}
	// Attempts admitted before the last slow-down ran at the old rate:
	// their refusals are that one's echo, not news.
	if o.started.Before(u.slowedAt) {
		return
	}
	// The rate is halved when it was tried: at the first refusal, or
	// when deliveries went through since the last one. A refusal with
	// none since says the remote has not reopened yet (its window still
	// holds what was sent before), not that the rate is too high: that
	// one only suspends, for twice as long as the last time.
	if u.slowedAt.IsZero() || u.deliveredSince || !u.slowed() {
		// At its configured rate (or none), the rate it was really
		// delivering at is the one to halve; once slowed, the rate in
		// force (what it delivered at includes its suspensions).
		base := u.rate
		if got := u.deliveryRate(now); !u.slowed() && got > 0 && (base == 0 || got < base) {
			base = got
		}
		if base == 0 {
			base = 2 * slowStart
		}
		u.rate = max(base/2, minRate)
		u.burst, u.tokens, u.filled = 1, 0, now
	}
	u.slowedAt, u.deliveredSince = now, false
	u.suspended = later(u.suspended, now.Add(u.suspendFor))
	s.cfg.Logger.Warn("destination slowed down", zap.String("destination", u.name),
		zap.Float64("rate", u.rate), zap.Time("suspended_until", u.suspended), replyField(*o.rateLimited))
	u.suspendFor = min(2*u.suspendFor, s.cfg.SuspendForMax)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// gc forgets units without traffic for forgetAfter: a destination or
// domain is dropped, a provider's adaptive state is reset. s.mu is held.
func (s *Shaper) gc(now time.Time) {
	if now.Sub(s.lastGC) < gcEvery {
		return
	}
	s.lastGC = now
	for name, u := range s.units {
		quiet := u.active == 0 && now.Sub(u.used) > forgetAfter && now.After(u.dead) && now.After(u.suspended) && now.After(u.held.until)
		if !quiet {
			continue
		}
		if u.kind == kindProvider {
			if u.slowed() {
				u.resetRate()
			}
			u.suspendFor = s.cfg.SuspendFor
			continue
		}
		delete(s.units, name)
		for _, dom := range u.domains {
			if s.domains[dom] == u {
				delete(s.domains, dom)
			}
		}
	}
}

// Destinations describes every destination, provider and smarthost list
// the Shaper has state for (providers once used), providers first.
func (s *Shaper) Destinations() []queue.Destination {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []queue.Destination
	for _, u := range s.units {
		if u.kind == kindProvider && u.used.IsZero() {
			continue
		}
		out = append(out, u.describe(now))
	}
	order := map[string]int{kindProvider: 0, kindDestination: 1, kindDomain: 2, kindSmarthostU: 3}
	slices.SortFunc(out, func(a, b queue.Destination) int {
		if c := order[a.Kind] - order[b.Kind]; c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

func (u *unit) describe(now time.Time) queue.Destination {
	d := queue.Destination{
		Name: u.name, Kind: u.kind, Domains: slices.Clone(u.domains), Active: u.active,
		Limits: queue.DestinationLimits{Connections: u.window(), MessagesPerConnection: u.limits.MessagesPerConnection,
			Rate: u.rate, ConfiguredRate: u.configuredRate()},
		LastReply: u.lastReply, LastReplyAt: u.lastReplyAt,
		Delivered: u.delivered, RateLimited: u.rateLimited, ConnectionFailures: u.connFailed,
	}
	if u.provider != nil {
		d.Provider = u.provider.name
	}
	switch {
	case now.Before(u.held.until) && u.held.until.After(u.dead) && u.held.until.After(u.suspended):
		// Another node's hold, read from the store.
		d.State, d.Until = "suspended", u.held.until
		if u.held.Dead {
			d.State = "dead"
		}
	case now.Before(u.dead) && !u.dead.Before(u.suspended):
		d.State, d.Until = "dead", u.dead
	case now.Before(u.suspended):
		d.State, d.Until = "suspended", u.suspended
	case u.probing || u.kind == kindDomain && u.active > 0:
		d.State = "probing"
	case u.slowed():
		d.State = "slowed"
	case u.active > 0:
		d.State = "active"
	default:
		d.State = "idle"
	}
	return d
}

// usesKey carries a destination's MessagesPerConnection from MX delivery
// to the connection pool, through the session's context.
type usesKey struct{}

func withConnUses(ctx context.Context, n int) context.Context {
	if n <= 0 {
		return ctx
	}
	return context.WithValue(ctx, usesKey{}, n)
}

func connUses(ctx context.Context) int {
	n, _ := ctx.Value(usesKey{}).(int)
	return n
}

// String names the rate for logs: "10/s", "1/2m0s"; "unlimited" for none.
func (r Rate) String() string {
	if r.PerSecond() == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%d/%s", r.Messages, r.Per)
}

package outbound

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"go.uber.org/zap"

	"postern/queue/reply"
)

// Shaping shared by several nodes (issue 17). Nodes that share one queue
// also share their destinations: without this, three nodes open three
// times a destination's connections and send at three times its rate.
// With Shaping.Shared set, a Shaper keeps three things in the store, next
// to its own state:
//   - the rate of each destination and provider, in one bucket for the
//     fleet (the rate in force: a slowed unit asks at its lowered rate);
//   - its suspensions and dead times, with their end and reason, which
//     the other nodes read (at most once a second per unit, so that Admit
//     rarely waits for the store) and honour as their own, lowered rate
//     included;
//   - the connections of each destination and provider, as slots of a
//     semaphore that expire unless renewed, so that a node that dies
//     holding some gives them back within sharedSlotTTL.
//
// The store is a help, never a dependency: whenever a call fails, the
// node's own state decides as it does without a store (the store counts
// and logs that), and every call is bounded by the store's own short
// timeout. Smarthost lists are not shared: they are the operator's own
// relays, not someone else's MX hosts to be polite to.

// SharedShaping is the store through which the Shapers of several nodes
// shape together; relay/limits implements it over Redis.
//
// Contract: every method returns within a fraction of a second, even when
// the store hangs (Admit waits for some of them), and an error means that
// nothing was decided or recorded: the Shaper then decides alone. Keys
// are "scope:name", the scope lower-case letters, digits and '-', the name
// any bytes; the implementation makes them safe. Durations are from the
// store's clock, so that nodes whose clocks differ agree.
type SharedShaping interface {
	// Allow spends n of key's events per per (a bucket that holds
	// events, refilled over per), or spends nothing and says how long
	// until n fit.
	Allow(ctx context.Context, key string, events int, per time.Duration, n int) (ok bool, retryAfter time.Duration, err error)
	// Hold records value under key for ttl, unless key already holds a
	// value for longer; Held reads it back ("" and 0 when none holds).
	Hold(ctx context.Context, key, value string, ttl time.Duration) error
	Held(ctx context.Context, key string) (value string, ttl time.Duration, err error)
	// AcquireSlot takes one of key's limit slots for holder until ttl
	// from now, or returns false when limit are held; RenewSlots moves the
	// expiry of holders' slots to ttl from now; ReleaseSlot frees one.
	AcquireSlot(ctx context.Context, key, holder string, limit int, ttl time.Duration) (bool, error)
	RenewSlots(ctx context.Context, key string, holders []string, ttl time.Duration) error
	ReleaseSlot(ctx context.Context, key, holder string) error
}

const (
	// sharedHeldEvery is how often a unit's shared hold is read: a
	// suspension by another node reaches this one within about a second,
	// and Admit asks the store at most once a second per unit for it.
	sharedHeldEvery = time.Second
	// sharedSlotTTL is how long a connection slot lasts without renewal:
	// the longest a dead node's connections count against the fleet.
	// Slots are renewed every third of it while their attempt runs. Half
	// a minute: the dead node's leased messages come due again after the
	// queue's lease (2 minutes by default), and must not then find their
	// destination still full of the dead node's slots; a renewal every
	// 10 s costs one Redis call per destination in use.
	sharedSlotTTL = 30 * time.Second
	// sharedSlotRetry is when an admission refused for want of a shared
	// slot is asked again: a slot freed on another node signals nothing
	// here.
	sharedSlotRetry = 250 * time.Millisecond
)

// sharedKey names u in the store, its kind in the scope:
// "shaping-provider:gmail", "shaping-destination:mx1.example.net,mx2.example.net".
// A domain whose MX hosts this node has not resolved yet is a unit of its
// own ("shaping-domain:domain:example.net", one probe for the fleet): for
// that moment its attempts do not count against its destination's slots
// on the other nodes.
func sharedKey(u *unit) string { return "shaping-" + u.kind + ":" + u.name }

// shared reports whether u is shaped through the store.
func (s *Shaper) shared(u *unit) bool { return s.cfg.Shared != nil && u.kind != kindSmarthostU }

// hold is what a node tells the others about a unit it suspended or found
// dead, as stored (JSON): its reason, and the rate it lowered to.
type hold struct {
	Dead  bool        `json:"dead,omitempty"`
	Why   reply.Reply `json:"why"`
	Rate  float64     `json:"rate,omitempty"`
	until time.Time
}

// pendingHold is a hold to write once s.mu is released.
type pendingHold struct {
	key string
	h   hold
	ttl time.Duration
}

// writeHolds tells the store of holds; a failure leaves them this node's.
func (s *Shaper) writeHolds(hs []pendingHold) {
	for _, p := range hs {
		v, err := json.Marshal(p.h)
		if err != nil {
			continue
		}
		if err := s.cfg.Shared.Hold(context.Background(), p.key, string(v), p.ttl); err != nil {
			s.cfg.Logger.Debug("shared shaping: hold not shared", zap.String("key", p.key), zap.Error(err))
		}
	}
}

// readHolds refreshes the shared holds of those of units not read for
// sharedHeldEvery. It is called without s.mu: the reads go to the store.
func (s *Shaper) readHolds(units []*unit, now time.Time) {
	var stale []*unit
	s.mu.Lock()
	for _, u := range units {
		if s.shared(u) && now.Sub(u.heldRead) >= sharedHeldEvery {
			u.heldRead = now // one reader at a time, even when it fails
			stale = append(stale, u)
		}
	}
	s.mu.Unlock()
	for _, u := range stale {
		v, ttl, err := s.cfg.Shared.Held(context.Background(), sharedKey(u))
		if err != nil {
			continue // the last hold read still ends when it ends
		}
		var h hold
		if v != "" && json.Unmarshal([]byte(v), &h) != nil {
			continue
		}
		if v != "" {
			h.until = now.Add(ttl)
		}
		s.mu.Lock()
		s.applyHold(u, h, now)
		s.mu.Unlock()
	}
}

// applyHold makes a hold read from the store u's. s.mu is held.
func (s *Shaper) applyHold(u *unit, h hold, now time.Time) {
	if !h.until.After(now) {
		u.held = hold{}
		return
	}
	// The lowered rate comes with the suspension: the fleet slows down
	// together, each node then recovering with its own deliveries. Once
	// per hold: reading it again must not undo a recovery step.
	// A hold read again ends when it did (give or take the round trip):
	// a second apart is another hold.
	fresh := (h.until.Sub(u.held.until)).Abs() > time.Second
	if h.Rate > 0 && (u.rate == 0 || h.Rate < u.rate) && fresh {
		u.rate, u.burst, u.tokens, u.filled = max(h.Rate, minRate), 1, 0, now
		u.slowedAt, u.deliveredSince = now, false
	}
	if fresh && h.until.Sub(u.suspended) > time.Second && h.until.Sub(u.dead) > time.Second { // not this node's own
		s.cfg.Logger.Info("destination held by another node", zap.String("destination", u.name),
			zap.Bool("dead", h.Dead), zap.Time("until", h.until), replyField(h.Why))
	}
	u.held = h
}

// sharedRate spends one message of u's shared bucket. decided is false
// when the store failed: the local bucket then decides.
func (s *Shaper) sharedRate(u *unit, rate float64, messages int, per time.Duration) (wait time.Duration, decided bool) {
	events := messages
	if rate != u.configuredRate() || events <= 0 || per <= 0 {
		// Slowed: one message per interval, no burst.
		events, per = 1, time.Duration(float64(time.Second)/rate)
	}
	ok, wait, err := s.cfg.Shared.Allow(context.Background(), sharedKey(u), events, per, 1)
	switch {
	case err != nil:
		return 0, false
	case ok:
		return 0, true
	}
	return max(wait, time.Millisecond), true
}

// slotHolder names one attempt's slot: this Shaper and a counter.
func (s *Shaper) slotHolder() string {
	s.slotSeq++
	return s.node + ":" + strconv.FormatUint(s.slotSeq, 10)
}

// slot is a shared connection slot this node holds.
type slot struct{ key, holder string }

// acquireSlots takes a shared slot of each of units that has a connection
// cap. ok is false when one is full: what was taken is given back, and the
// full unit is not asked for again before retry (see unit.slotsFull). A
// store failure counts as a slot taken: the local window decided.
func (s *Shaper) acquireSlots(units []*unit, windows []int, retry time.Time) (held []slot, ok bool) {
	for i, u := range units {
		if windows[i] <= 0 {
			continue
		}
		s.mu.Lock()
		sl := slot{sharedKey(u), s.slotHolder()}
		s.mu.Unlock()
		got, err := s.cfg.Shared.AcquireSlot(context.Background(), sl.key, sl.holder, windows[i], sharedSlotTTL)
		if err != nil {
			continue
		}
		if !got {
			s.mu.Lock()
			u.slotsFull = retry
			s.mu.Unlock()
			s.releaseSlots(held)
			return nil, false
		}
		held = append(held, sl)
	}
	if len(held) > 0 {
		s.mu.Lock()
		for _, sl := range held {
			s.slots[sl] = struct{}{}
		}
		if !s.renewing {
			s.renewing = true
			go s.renewSlots()
		}
		s.mu.Unlock()
	}
	return held, true
}

// releaseSlots gives slots back. A failure leaves them to expire.
func (s *Shaper) releaseSlots(held []slot) {
	if len(held) == 0 {
		return
	}
	s.mu.Lock()
	for _, sl := range held {
		delete(s.slots, sl)
	}
	s.mu.Unlock()
	for _, sl := range held {
		s.cfg.Shared.ReleaseSlot(context.Background(), sl.key, sl.holder)
	}
}

// renewSlots keeps this node's slots alive while their attempts run; it
// ends when none is held (the next acquisition starts it again), so that
// an idle Shaper runs nothing.
func (s *Shaper) renewSlots() {
	t := time.NewTicker(sharedSlotTTL / 3)
	defer t.Stop()
	for range t.C {
		s.mu.Lock()
		if len(s.slots) == 0 {
			s.renewing = false
			s.mu.Unlock()
			return
		}
		byKey := map[string][]string{}
		for sl := range s.slots {
			byKey[sl.key] = append(byKey[sl.key], sl.holder)
		}
		s.mu.Unlock()
		for k, holders := range byKey {
			s.cfg.Shared.RenewSlots(context.Background(), k, holders, sharedSlotTTL)
		}
	}
}

// newNodeID names this Shaper's slot holders, unique across the fleet.
func newNodeID() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

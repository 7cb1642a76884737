package smtpd

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"postern/auth"
	"postern/relay/status"
)

// Policy is what the listeners enforce against abuse and mistakes: who may
// send what, rate limits, the brute-force defence, header hygiene and the
// bare-newline rule. Its zero value enforces none of them.
//
// One Policy is meant to be shared by all the listeners of a server (pass
// the same pointer in each Options): its counters, the connection cap
// among them, are then counted across listeners, as limits.max_connections
// says. Set the fields before the first listener serves; do not change
// them afterwards.
type Policy struct {
	// CheckHeaderFrom lists the listeners where, for an authenticated
	// user, every From: address and the Sender: address must be ones the
	// user may send as (else 550 5.7.1). Service accounts that send on
	// behalf of others use a listener left out of the list.
	CheckHeaderFrom []Kind
	// RelaySenderDomains, when not empty, are the only envelope sender
	// domains the TrustedRelay listener accepts (and <>).
	RelaySenderDomains []string
	// RelayRecipientDomains, when not empty, are the only recipient
	// domains the TrustedRelay listener accepts.
	RelayRecipientDomains []string

	// FixHeaders applies the MSA's header rules to every message: add
	// Date: and Message-ID: when missing (RFC 6409 §8.2, §8.3), remove
	// Bcc: and Resent-Bcc: (RFC 5322 §3.6.3). Every postern listener is a
	// submission service in RFC 6409's sense: none is an MX.
	FixHeaders bool
	// MaxReceived refuses a message with more Received: fields (554
	// 5.4.6, a mail loop: RFC 5321 §6.3). 0 disables the check.
	MaxReceived int

	// ForbidBareNewline refuses DATA that contains a bare CR or LF with
	// 521 5.5.2 and closes the connection (as Postfix's
	// smtpd_forbid_bare_newline), except from BareNewlineExclusions, whose
	// bare CR and LF become CRLF. When false, everyone gets the CRLF
	// conversion.
	ForbidBareNewline     bool
	BareNewlineExclusions []netip.Prefix

	// Per authenticated user: messages (counted at MAIL) and recipients
	// (counted at RCPT). Over the limit: 450 4.7.1 with the wait.
	UserMessages, UserRecipients Rate
	// Per client address (IPv6 grouped by /64): connections open at once
	// and new connections. Over: 421 4.7.0 and close. LimitExempt networks
	// (the trusted networks, in serve) are not counted: they are our own
	// applications, and a busy one must not lock itself out.
	IPConnections    int
	IPConnectionRate Rate
	LimitExempt      []netip.Prefix
	// MaxConnections caps the connections open at once over every
	// listener sharing this Policy (421 4.3.2 beyond). 0: no cap.
	MaxConnections int

	// ProxyFrom lists the peers (load balancers) that must open every
	// connection with a PROXY protocol v1 or v2 header; the address it
	// carries is then the client's for everything. Other peers are plain
	// SMTP clients: a PROXY line from them is an unknown command, never an
	// address. ProxyHeaderTimeout bounds the wait for the header (default
	// 10s).
	ProxyFrom          []netip.Prefix
	ProxyHeaderTimeout time.Duration

	// AuthThrottle, when set, slows and then refuses password guessing.
	AuthThrottle *auth.Throttle

	// Shared, when set, holds the per-user limits and the per-client
	// connection rate for every server that shares it (limits.redis), so
	// that a user's allowance is one across nodes rather than one per
	// node. Whenever it fails, this Policy's own buckets decide, as
	// without it: a shared store that is down weakens the limits to
	// per-node ones and never refuses mail. The connections open at once
	// are always counted per node: they end with the node's connections.
	Shared SharedLimiter

	once  sync.Once
	conns *connLimiter
	users *userLimiter
}

// Rate is N events per Per; N == 0 means no limit. It is a token bucket
// (golang.org/x/time/rate) of N tokens refilled over Per: a client may use
// all N at once, then one more every Per/N.
type Rate struct {
	N   int
	Per time.Duration
}

// SharedLimiter is a rate limiter shared by several servers; relay/limits
// implements it over Redis.
type SharedLimiter interface {
	// Allow spends n events of key's allowance (events per per, a token
	// bucket as Rate's) and returns true, or spends nothing and returns
	// false and how long until n events are available. An error means
	// nothing was decided: the caller uses its own bucket. It must return
	// within a fraction of a second, even when the store hangs: an SMTP
	// reply waits for it. Keys are "scope:name" with any bytes in name
	// (a user name, an address); the implementation makes them safe.
	Allow(ctx context.Context, key string, events int, per time.Duration, n int) (ok bool, retryAfter time.Duration, err error)
}

// Keys of the shared buckets. The user name is folded as the local table
// folds it, so that every node counts one user in one bucket.
const (
	sharedUserMessages   = "user-messages:"
	sharedUserRecipients = "user-recipients:"
	sharedIPConnections  = "ip-connections:"
)

// allowShared asks Shared for n events of r under key. decided is false
// when there is no Shared or it failed: then the local bucket decides.
func (p *Policy) allowShared(ctx context.Context, key string, r Rate, n int) (wait time.Duration, decided bool) {
	if p.Shared == nil {
		return 0, false
	}
	ok, wait, err := p.Shared.Allow(ctx, key, r.N, r.Per, n)
	switch {
	case err != nil:
		return 0, false
	case ok:
		return 0, true
	}
	// Refused: a wait of at least a nanosecond, so that the caller sees
	// a refusal even when the store rounds the wait to nothing.
	return max(wait, time.Nanosecond), true
}

func (r Rate) on() bool { return r.N > 0 && r.Per > 0 }

func (r Rate) limiter() *rate.Limiter {
	return rate.NewLimiter(rate.Limit(float64(r.N)/r.Per.Seconds()), r.N)
}

func (r Rate) String() string { return fmt.Sprintf("%d per %s", r.N, r.Per) }

func (p *Policy) init() {
	p.once.Do(func() {
		p.conns = &connLimiter{p: p}
		p.users = &userLimiter{p: p}
	})
}

// idleSweep is how often the per-client and per-user tables are swept of
// entries with nothing to remember; maxTableEntries bounds them. A full
// connection table stops tracking new clients (the global cap still
// applies) rather than refusing them: with IPv6, a client can present more
// /64s than any table holds, and failing closed would let it lock everyone
// else out.
const (
	idleSweep       = time.Minute
	maxTableEntries = 1 << 16
)

// clientKey groups client addresses as the limits count them: an IPv4
// address alone, an IPv6 address by its /64 (one customer's LAN, RFC 6177).
func clientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

func inPrefixes(ip netip.Addr, list []netip.Prefix) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Replies of the limits.
var (
	// RFC 3463 §3.8 X.7.0 "Other or undefined security status", with 421
	// (RFC 5321 §3.8: the server closes the channel).
	errTooManyConns = status.New(421, 7, 0, "Too many connections from your address, try again later")
	errConnRate     = status.New(421, 7, 0, "Too many new connections from your address, try again later")
	// RFC 3463 §3.4 X.3.2 "System not accepting network messages".
	errServerBusy = status.New(421, 3, 2, "Too busy, try again later")
)

// connLimiter counts connections, in total and per client network.
type connLimiter struct {
	p         *Policy
	mu        sync.Mutex
	total     int
	clients   map[netip.Prefix]*clientState
	lastSweep time.Time
}

type clientState struct {
	open int
	rate *rate.Limiter // nil when there is no rate limit
}

// acquire takes a slot of the global cap; release gives it back.
func (c *connLimiter) acquire() *status.Error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p.MaxConnections > 0 && c.total >= c.p.MaxConnections {
		return errServerBusy
	}
	c.total++
	return nil
}

func (c *connLimiter) release() {
	c.mu.Lock()
	c.total--
	c.mu.Unlock()
}

// admit applies the per-client limits to a new connection from ip. On
// success, done must be called when the connection ends.
func (c *connLimiter) admit(ctx context.Context, ip netip.Addr, now time.Time) (done func(), refusal *status.Error) {
	p := c.p
	if p.IPConnections <= 0 && !p.IPConnectionRate.on() || inPrefixes(ip, p.LimitExempt) {
		return func() {}, nil
	}
	key := clientKey(ip)
	// The shared bucket is asked before the lock is taken: a slow store
	// must not hold up the other clients' admissions.
	var sharedWait time.Duration
	sharedRate := false
	if p.IPConnectionRate.on() {
		sharedWait, sharedRate = p.allowShared(ctx, sharedIPConnections+key.String(), p.IPConnectionRate, 1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.clients[key]
	if st == nil {
		c.sweep(now)
		if len(c.clients) >= maxTableEntries {
			return func() {}, nil
		}
		st = &clientState{}
		if p.IPConnectionRate.on() {
			st.rate = p.IPConnectionRate.limiter()
		}
		if c.clients == nil {
			c.clients = make(map[netip.Prefix]*clientState)
		}
		c.clients[key] = st
	}
	if p.IPConnections > 0 && st.open >= p.IPConnections {
		return nil, errTooManyConns
	}
	switch {
	case sharedRate:
		if sharedWait > 0 {
			return nil, errConnRate
		}
	case st.rate != nil && !st.rate.AllowN(now, 1):
		return nil, errConnRate
	}
	st.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			st.open--
			c.mu.Unlock()
		})
	}, nil
}

// sweep drops clients with no open connection and a full bucket: they have
// nothing left to remember. c.mu is held.
func (c *connLimiter) sweep(now time.Time) {
	if now.Sub(c.lastSweep) < idleSweep && len(c.clients) < maxTableEntries {
		return
	}
	c.lastSweep = now
	for k, st := range c.clients {
		if st.open == 0 && (st.rate == nil || st.rate.TokensAt(now) >= float64(st.rate.Burst())) {
			delete(c.clients, k)
		}
	}
}

// userLimiter holds the per-user message and recipient buckets.
type userLimiter struct {
	p         *Policy
	mu        sync.Mutex
	users     map[string]*userState
	lastSweep time.Time
}

type userState struct{ msgs, rcpts *rate.Limiter }

// take spends one message (rcpt false) or one recipient (rcpt true) of
// user's allowance and returns 0, or spends nothing and returns how long
// until one is available.
func (u *userLimiter) take(ctx context.Context, user string, rcpt bool, now time.Time) time.Duration {
	r, shared := u.p.UserMessages, sharedUserMessages
	if rcpt {
		r, shared = u.p.UserRecipients, sharedUserRecipients
	}
	if !r.on() {
		return 0
	}
	if wait, decided := u.p.allowShared(ctx, shared+strings.ToLower(user), r, 1); decided {
		return wait
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(user, now)
	lim := &st.msgs
	if rcpt {
		lim = &st.rcpts
	}
	if *lim == nil {
		*lim = r.limiter()
	}
	res := (*lim).ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d
	}
	return 0
}

// TakeMessage spends, at once, one message and rcpts recipients of user's
// allowance, for a source that knows every recipient up front (the HTTP
// API); or it spends nothing and returns how long until they are available
// (-1: never, more recipients than the limit holds) and the limit that
// stopped it, as the SMTP reply would name it. The buckets are the SMTP
// listeners': a user has one allowance whichever way they send.
//
// With Shared, the message is spent first and stays spent when the
// recipients are refused, as a MAIL that is answered 250 and then has its
// RCPTs refused over SMTP (a shared store has no way to take back).
func (p *Policy) TakeMessage(user string, rcpts int, now time.Time) (wait time.Duration, what, limit string) {
	p.init()
	if wait, what, limit, decided := p.takeShared(user, rcpts); decided {
		return wait, what, limit
	}
	u := p.users
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.state(user, now)
	var done []*rate.Reservation
	for _, c := range []struct {
		r    Rate
		lim  **rate.Limiter
		n    int
		what string
	}{{p.UserMessages, &st.msgs, 1, "Message"}, {p.UserRecipients, &st.rcpts, rcpts, "Recipient"}} {
		if !c.r.on() || c.n == 0 {
			continue
		}
		if *c.lim == nil {
			*c.lim = c.r.limiter()
		}
		res := (*c.lim).ReserveN(now, c.n)
		d := res.DelayFrom(now)
		if !res.OK() || d > 0 {
			res.CancelAt(now)
			for _, r := range done {
				r.CancelAt(now)
			}
			if !res.OK() {
				d = -1
			}
			return d, c.what, c.r.String()
		}
		done = append(done, res)
	}
	return 0, "", ""
}

// takeShared is TakeMessage through Shared; decided is false when there is
// no Shared or it failed, and then the local buckets decide.
func (p *Policy) takeShared(user string, rcpts int) (wait time.Duration, what, limit string, decided bool) {
	if p.Shared == nil {
		return 0, "", "", false
	}
	name := strings.ToLower(user)
	for _, c := range []struct {
		r    Rate
		key  string
		n    int
		what string
	}{{p.UserMessages, sharedUserMessages, 1, "Message"}, {p.UserRecipients, sharedUserRecipients, rcpts, "Recipient"}} {
		if !c.r.on() || c.n == 0 {
			continue
		}
		if c.n > c.r.N {
			return -1, c.what, c.r.String(), true // never: more than the bucket holds
		}
		// The send API's request has no deadline of its own here; the
		// store bounds each call.
		d, ok := p.allowShared(context.Background(), c.key+name, c.r, c.n)
		if !ok {
			return 0, "", "", false
		}
		if d > 0 {
			return d, c.what, c.r.String(), true
		}
	}
	return 0, "", "", true
}

// state returns user's buckets, made when missing. u.mu is held.
func (u *userLimiter) state(user string, now time.Time) *userState {
	key := strings.ToLower(user)
	st := u.users[key]
	if st == nil {
		u.sweep(now)
		st = &userState{}
		if u.users == nil {
			u.users = make(map[string]*userState)
		}
		u.users[key] = st
	}
	return st
}

// sweep drops users whose buckets are full. Users come from the users file,
// so the table is small; the sweep keeps it so across renames. u.mu is held.
func (u *userLimiter) sweep(now time.Time) {
	if now.Sub(u.lastSweep) < idleSweep && len(u.users) < maxTableEntries {
		return
	}
	u.lastSweep = now
	full := func(l *rate.Limiter) bool { return l == nil || l.TokensAt(now) >= float64(l.Burst()) }
	for k, st := range u.users {
		if full(st.msgs) && full(st.rcpts) {
			delete(u.users, k)
		}
	}
}

// tables returns the sizes of the per-client and per-user tables, for tests
// of their bound.
func (p *Policy) tables() (clients, users int) {
	p.init()
	p.conns.mu.Lock()
	clients = len(p.conns.clients)
	p.conns.mu.Unlock()
	p.users.mu.Lock()
	users = len(p.users.users)
	p.users.mu.Unlock()
	return clients, users
}

// rateLimited is the 450 4.7.1 of a per-user limit, with the wait in the
// text (RFC 3463 §3.8 X.7.1: delivery not authorized, here not yet).
func rateLimited(what string, r Rate, wait time.Duration) *status.Error {
	wait = (wait + time.Second - 1).Truncate(time.Second)
	return status.New(450, 7, 1, fmt.Sprintf("%s limit reached (%s), try again in %s", what, r, wait))
}

func (p *Policy) checksHeaderFrom(k Kind) bool { return slices.Contains(p.CheckHeaderFrom, k) }

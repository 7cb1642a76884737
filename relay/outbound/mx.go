package outbound

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/status"
	"postern/relay/tlspolicy"
)

// Defaults for Options. RFC 5321 §4.5.3.2 gives the client timeouts: 5
// minutes for the greeting, MAIL and RCPT, 2 for DATA's 354, 3 per data
// block and 10 for the final reply. One CommandTimeout covers the greeting
// and all commands, so the longest of them, 5 minutes, is the default.
const (
	DefaultPort = 25
	// DefaultDialTimeout bounds the TCP connect. RFC 5321 sets none;
	// Postfix's smtp_connect_timeout is 30 s. Linux sends a SYN at 0 s
	// and retransmits it at 1, 3, 7 and 15 s (an initial RTO of 1 s,
	// doubling), and the next would go at 31 s: a timeout of 30 s waits
	// for exactly the same five SYNs as one of 20 s, plus 10 s of
	// silence after the last. 20 s leaves the last SYN 5 s for its
	// answer, more than any path on Earth needs, and gives a host that
	// does not answer up 10 s sooner, for each of the addresses tried.
	DefaultDialTimeout    = 20 * time.Second
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultDataTimeout bounds sending the whole message and, separately,
	// the wait for the reply after the final dot (RFC 5321 §4.5.3.2.6).
	DefaultDataTimeout = 10 * time.Minute
	// DefaultAttemptTimeout bounds a whole attempt: the lookups, every
	// address tried, the transaction. The per-step limits already bound
	// each wait; this one bounds their sum, so that a server answering
	// each command just in time cannot hold a delivery for hours. It is
	// longer than the longest transaction the step limits allow a
	// willing server (the message and its final reply take up to twice
	// DataTimeout).
	DefaultAttemptTimeout = 30 * time.Minute
	// DefaultMaxMXHosts, DefaultMaxAddresses and DefaultMaxSessions bound
	// what one attempt tries: the first five MX hosts, five addresses in
	// all (Postfix's smtp_mx_address_limit), and two SMTP sessions with
	// hosts that then failed (Postfix's smtp_mx_session_limit). The next
	// attempt starts again from the best MX.
	DefaultMaxMXHosts   = 5
	DefaultMaxAddresses = 5
	DefaultMaxSessions  = 2
)

// Options configure an MX deliverer, and the SMTP client of a Smarthost.
// The zero value of each field is a usable default.
type Options struct {
	// Hostname is the name given in EHLO; default os.Hostname.
	Hostname string
	// Resolver is the "host:port" of the DNS server to ask; "" uses the
	// nameservers of /etc/resolv.conf, read when the DNS cache has no
	// answer.
	Resolver string
	// Port is the TCP port dialed on MX hosts; default 25.
	Port int
	// TLS is the STARTTLS policy; default Opportunistic.
	TLS TLSMode
	// RootCAs verifies certificates in Required mode and those of
	// smarthosts; nil means the system roots.
	RootCAs *x509.CertPool
	// DialTimeout bounds the TCP connect, CommandTimeout each command's
	// reply (and the greeting), DataTimeout the sending of the message and
	// the reply to it, AttemptTimeout a whole MX attempt. See the Default
	// constants.
	DialTimeout, CommandTimeout, DataTimeout, AttemptTimeout time.Duration
	// MaxMXHosts, MaxAddresses and MaxSessions bound one MX attempt; see
	// the Default constants.
	MaxMXHosts, MaxAddresses, MaxSessions int
	// Logger gets one line per session (MX address or smarthost tried),
	// and lines for MX lookups, refused AUTH and parked connections; nil
	// logs nothing.
	Logger *zap.Logger

	// IdleTimeout is how long a connection is kept open after a
	// transaction, waiting for the next delivery to the same destination;
	// default DefaultIdleTimeout. Negative: every session has a
	// connection of its own, closed after QUIT.
	IdleTimeout time.Duration
	// MaxConnsPerHost caps the connections open at once to one
	// destination (an MX host address or a smarthost), parked ones
	// included; a delivery beyond it does not wait for one, it tries the
	// next address (the Shaper keeps deliveries within it). Default
	// DefaultMaxConnsPerHost, or Shaping.Default.Connections if larger.
	MaxConnsPerHost int
	// MaxIdlePerHost caps the connections kept open, idle, per
	// destination; default MaxConnsPerHost.
	MaxIdlePerHost int

	// Local lists the addresses and ports postern itself listens on (its
	// SMTP listeners). An MX address that is one of them, or that is
	// unspecified (0.0.0.0, ::), is a mail loop, never dialed (an
	// unspecified listener address stands for every local one).
	Local []netip.AddrPort

	// TLSPolicies, when set, decides the TLS of every MX session (DANE,
	// MTA-STS, delivery.tls_policy, then its own default: see
	// relay/tlspolicy and tlspolicy.go here) instead of TLS and RootCAs.
	// It is not consulted when TLS is Disabled, nor for smarthosts, which
	// keep their configured TLS.
	TLSPolicies *tlspolicy.Policies
	// TLSReports receives the TLS outcome of every MX session and of
	// every host a policy refused, for TLS reports (RFC 8460); nil
	// records nothing.
	TLSReports TLSRecorder

	// Shaping configures the MX deliverer's Shaper: limits per
	// destination and provider, and what a rate-limit reply looks like.
	// Its Logger defaults to Logger.
	Shaping Shaping
}

// MX delivers messages to the MX hosts of the recipients' domain. It is
// also the queue's Gate for them (Admit), through its Shaper.
type MX struct {
	client
	res    *resolver
	shaper *Shaper
	// ifaces are this machine's addresses, for a listener on an
	// unspecified address (Options.Local).
	ifaces []netip.Addr
}

var (
	_ queue.Deliverer = (*MX)(nil)
	_ queue.Gate      = (*MX)(nil)
)

// New returns an MX deliverer with opts, defaults filled in.
func New(opts Options) *MX {
	opts = opts.withDefaults()
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Shaping.Logger == nil {
		opts.Shaping.Logger = opts.Logger
	}
	m := &MX{
		client: newClient(opts),
		res:    &resolver{server: opts.Resolver, shuffle: rand.Shuffle},
		shaper: NewShaper(opts.Shaping),
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				m.ifaces = append(m.ifaces, p.Addr().Unmap())
			}
		}
	}
	return m
}

// loops reports whether dialing ip on the delivery port would reach
// postern itself (or nothing: an unspecified address), RFC 5321 §5.1's
// "the SMTP client ... finds itself": Postfix bounces such mail, "mail for
// X loops back to myself".
func (m *MX) loops(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return true
	}
	port := uint16(m.opts.Port)
	for _, l := range m.opts.Local {
		if l.Port() != port {
			continue
		}
		la := l.Addr().Unmap()
		if la == ip || la.IsUnspecified() && (ip.IsLoopback() || slices.Contains(m.ifaces, ip)) {
			return true
		}
	}
	return false
}

// Close closes the connections kept open for reuse and waits until they
// are. Deliveries still running close theirs when they end; a Deliver
// after Close works, without reuse. Call it once the queue is closed.
func (m *MX) Close() error {
	m.pool.close()
	return nil
}

// UseTLSPolicies makes MX delivery follow ps and report to rec (see
// Options.TLSPolicies and TLSReports), for a deliverer made before the
// store the policies keep their state in was open. Call it before the
// first Deliver: it is not synchronized with deliveries.
func (m *MX) UseTLSPolicies(ps *tlspolicy.Policies, rec TLSRecorder) {
	m.opts.TLSPolicies, m.opts.TLSReports = ps, rec
}

// Admit is queue.Gate: whether an attempt at d.Domain's MX hosts may start
// now (see Shaper).
func (m *MX) Admit(d queue.Dest, now time.Time) queue.Admission {
	return m.shaper.admit(d.Domain, now, d.Retry)
}

// Destinations describes the state of every destination and provider
// (see Shaper.Destinations).
func (m *MX) Destinations() []queue.Destination { return m.shaper.Destinations() }

// withDefaults fills in the zero fields of opts that every deliverer
// uses.
func (opts Options) withDefaults() Options {
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = DefaultCommandTimeout
	}
	if opts.DataTimeout == 0 {
		opts.DataTimeout = DefaultDataTimeout
	}
	if opts.AttemptTimeout == 0 {
		opts.AttemptTimeout = DefaultAttemptTimeout
	}
	if opts.MaxMXHosts <= 0 {
		opts.MaxMXHosts = DefaultMaxMXHosts
	}
	if opts.MaxAddresses <= 0 {
		opts.MaxAddresses = DefaultMaxAddresses
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxConnsPerHost <= 0 {
		// Never below what the Shaper lets one destination have: a
		// delivery it admitted must not find the pool full (which
		// fails the attempt instead of waiting).
		opts.MaxConnsPerHost = max(DefaultMaxConnsPerHost, opts.Shaping.Default.Connections)
	}
	if opts.MaxIdlePerHost <= 0 {
		opts.MaxIdlePerHost = opts.MaxConnsPerHost
	}
	return opts
}

// Local statuses. Their replies read like a server's so that logs and
// bounces quote every failure the same way; RemoteMTA stays empty.
var (
	// Address literals ("[192.0.2.1]", RFC 5321 §4.1.3) would let anyone
	// who can submit mail make postern connect to any address, internal
	// ones included; real mail never needs them. X.1.2 "Bad destination
	// system address" (RFC 3463 §3.2).
	errAddressLiteral = status.New(550, 1, 2, "address literals are not accepted as destinations")
	// A domain without MX and without address records cannot receive mail
	// (RFC 5321 §5.1); Postfix bounces it too.
	errNoMailHost = status.New(550, 1, 2, "domain has no MX and no address record")
	// Every address of the domain's mail hosts is postern itself (or
	// unspecified): RFC 3463 §3.5 X.4.6 "Routing loop detected", final, as
	// Postfix's "mail for X loops back to myself".
	errLoop = status.New(554, 4, 6, "mail for this domain loops back to myself")
)

// Deliver makes one delivery attempt: it finds the MX hosts of d.Domain and
// tries their addresses in order until one runs the SMTP transaction, then
// sends QUIT. See queue.Deliverer for the contract.
//
// The next address is tried when one cannot be reached, greets or answers
// EHLO or MAIL with an error (4xx or 5xx, except a 5xx to MAIL, which is
// the sender's permanent failure), or fails STARTTLS under Required. Once
// MAIL is accepted the transaction's replies are final for this attempt:
// another MX is not tried, so that a message is not delivered twice. When
// every address fails, all recipients are Temporary with the last failure's
// words.
//
// BODY=8BITMIME is declared whenever the server offers 8BITMIME, which
// RFC 6152 allows for any body. To a server without it an 8-bit message
// goes converted to 7 bits (RFC 6152 §3, see downgrade.go), or, when it
// cannot be converted or is DKIM-signed, not at all: 554 5.6.3, and the
// next MX is tried. SMTPUTF8 is requested only when an envelope address is
// not ASCII; a server that does not offer it then gets no attempt.
func (m *MX) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	return m.deliver(ctx, d, "")
}

// deliver is Deliver with the name of the route that chose direct
// delivery, for the log.
func (m *MX) deliver(parent context.Context, d *queue.Delivery, route string) []queue.Result {
	if len(d.Rcpts) == 0 {
		return []queue.Result{}
	}
	ctx, cancel := context.WithTimeout(parent, m.opts.AttemptTimeout)
	defer cancel()
	fail := func(err error, mta string) []queue.Result {
		return failAll(ctx, len(d.Rcpts), err, mta)
	}
	if strings.HasPrefix(d.Domain, "[") {
		return fail(errAddressLiteral, "")
	}

	hosts, err := m.res.mxHosts(ctx, d.Domain)
	if err != nil {
		m.log.Info("MX lookup failed", zap.String("id", d.ID), zap.String("domain", d.Domain), zap.Error(err))
		return fail(err, "")
	}
	implicit := len(hosts) == 1 && strings.EqualFold(hosts[0], strings.TrimSuffix(d.Domain, "."))
	// The destination is every MX host of the domain, the ones beyond
	// MaxMXHosts included: they are what other domains share.
	dest := m.shaper.destination(d.Domain, hosts)
	ctx = withConnUses(ctx, m.shaper.messagesPerConnection(dest))
	seen := attemptReport{started: m.shaper.cfg.Now()}
	// What the attempt showed of the destination, unless it was cut off
	// from outside (shutdown): then it showed nothing.
	report := func() {
		if parent.Err() == nil {
			m.shaper.report(dest, seen)
		}
	}

	// The TLS policies of the domain, once per attempt (tlspolicy.go).
	var dp *tlspolicy.DomainPolicy
	if m.opts.TLSPolicies != nil && m.opts.TLS != Disabled {
		dp = m.opts.TLSPolicies.Domain(ctx, d.Domain)
	}

	var last error
	var lastMTA string
	// other is the last failure that was not a REQUIRETLS refusal: with
	// one, the attempt is not a REQUIRETLS failure (permanent) but
	// temporary, since that host may take the message later.
	var other error
	dialed, looped := false, false
	tried, sessions := 0, 0
hosts:
	for _, host := range hosts[:min(len(hosts), m.opts.MaxMXHosts)] {
		hp, err := m.hostPolicy(ctx, dp, d, host)
		if err != nil {
			m.logPolicy(d, host, err)
			last, lastMTA = err, ""
			if !isRequireTLS(err) {
				other = err
			}
			continue
		}
		addrs, err := m.res.addrs(ctx, host)
		if err != nil {
			m.log.Info("MX host lookup failed", zap.String("id", d.ID), zap.String("mx", host), zap.Error(err))
			if errors.As(err, new(errNoAddress)) {
				if implicit {
					return fail(errNoMailHost, "")
				}
				// RFC 3463 §3.5: X.4.4 "Unable to route".
				err = status.Wrap(err, 451, 4, 4, "MX host "+host+" has no address")
			}
			last, lastMTA, other = err, "", err
			continue
		}
		for _, ip := range addrs {
			if err := ctx.Err(); err != nil {
				report()
				return fail(err, lastMTA)
			}
			if m.loops(ip) {
				m.log.Warn("MX address loops back to postern itself: skipped", zap.String("id", d.ID),
					zap.String("domain", d.Domain), zap.String("mx", host), zap.Stringer("ip", ip), zap.Int("port", m.opts.Port))
				looped = true
				continue
			}
			if tried >= m.opts.MaxAddresses || sessions >= m.opts.MaxSessions {
				break hosts
			}
			tried++
			dialed = true
			res, err := m.attempt(ctx, d, host, ip, route, hp)
			if err == nil {
				seen.results(res, m.shaper)
				report()
				return res
			}
			if seen.failure(host, ip, err, m.shaper) {
				sessions++
			}
			last, lastMTA = err, host
			if !isRequireTLS(err) {
				other = err
			}
		}
	}
	if dialed {
		report()
	}
	if looped && !dialed && last == nil { // no other host left untried
		return fail(errLoop.With(fmt.Errorf("mail for %s", d.Domain)), "")
	}
	if last == nil { // only when ctx ended during the lookups
		last = ctx.Err()
	}
	if isRequireTLS(last) && other != nil {
		// Another host failed otherwise, and may take the message
		// later: wait for it, with that host's reason.
		last = other
	}
	return fail(last, lastMTA)
}

// results notes what a transaction's results tell of the destination.
func (o *attemptReport) results(res []queue.Result, s *Shaper) {
	o.answered = true
	for _, r := range res {
		switch {
		case r.Outcome == queue.Delivered:
			o.delivered = true
		case r.Outcome == queue.Temporary && o.rateLimited == nil:
			if p, ok := s.rateLimit(r.Reply); ok {
				o.rateLimited, o.pattern = &r.Reply, p
			}
		}
	}
}

// failure notes what the failure of the session with host at ip tells of
// the destination, and reports whether that host held an SMTP session
// (which MaxSessions counts). The seam with the SMTP client is its
// errors: a reply (*Error) means the host talked; a local status or a
// failed STARTTLS means it talked and our policy stopped; a network error
// or an end of stream before any reply means it did not (connect
// refused, timed out, or no greeting), and so does a greeting that
// refuses the session, unless it says "slow down".
func (o *attemptReport) failure(host string, ip netip.Addr, err error, s *Shaper) (session bool) {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, errConnLimit):
		o.other = true
		return false
	}
	if re, ok := errors.AsType[*Error](err); ok {
		if p, ok := s.rateLimit(re.Reply); ok {
			if o.rateLimited == nil {
				r := re.Reply
				o.rateLimited, o.pattern = &r, p
			}
			o.answered = true
			return true
		}
		if re.Command != CmdConnect {
			o.answered = true
			return true
		}
	} else if errors.As(err, new(*status.Error)) || errors.Is(err, errTLSFailed) {
		o.answered = true
		return true
	}
	o.connFails++
	o.connCause = reply.Reply{Enhanced: reply.Enhanced{Class: 4, Subject: 4, Detail: 1},
		Text: fmt.Sprintf("%s[%s]: %s", host, ip, replyOf(err))}
	if re, ok := errors.AsType[*Error](err); ok && re.Class() == 4 && !re.Enhanced.IsZero() {
		o.connCause.Enhanced = re.Enhanced
	}
	return false
}

// attempt runs one SMTP session with ip. Under Opportunistic TLS a failed
// STARTTLS is retried at once on a new plain-text connection to the same
// address: a broken TLS stack is common and Opportunistic promises
// delivery, not secrecy (RFC 7435 §6; Postfix does the same).
func (m *MX) attempt(ctx context.Context, d *queue.Delivery, host string, ip netip.Addr, route string, hp *hostTLS) ([]queue.Result, error) {
	p := peer{
		tls:   hp,
		addr:  net.JoinHostPort(ip.String(), strconv.Itoa(m.opts.Port)),
		host:  host,
		kind:  kindMX,
		name:  host,
		mta:   host,
		route: route,
		mode:  m.opts.TLS,
		// Only Required verifies: most MX certificates would not
		// (RFC 7435), and Opportunistic promises no authentication.
		verify: m.opts.TLS == Required,
	}
	if hp != nil {
		// The policy decides what the certificate must be, and whether
		// plain text may follow a failed STARTTLS (only where it would
		// under Opportunistic).
		p.mode, p.verify = Opportunistic, false
	}
	if p.mode == Opportunistic {
		// A plain-text connection parked for this address means its
		// STARTTLS failed moments ago: use that connection rather
		// than dial, fail again and fall back on every message.
		plain := p
		plain.mode = Disabled
		if m.pool.parked(plain.key()) {
			p = plain
		}
	}
	res, err := m.session(ctx, d, p)
	if err != nil && p.mode == Opportunistic && errors.Is(err, errTLSFailed) {
		p.mode = Disabled
		res, err = m.session(ctx, d, p)
	}
	return res, err
}

// The values of peer.kind, which are also the log field naming the server.
const (
	kindMX        = "mx"
	kindSmarthost = "smarthost"
)

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
	"postern/relay/status"
)

// Defaults for Options. RFC 5321 §4.5.3.2 gives the client timeouts: 5
// minutes for the greeting, MAIL and RCPT, 2 for DATA's 354, 3 per data
// block and 10 for the final reply. One CommandTimeout covers the greeting
// and all commands, so the longest of them, 5 minutes, is the default.
const (
	DefaultPort = 25
	// DefaultDialTimeout is Postfix's smtp_connect_timeout: RFC 5321 sets
	// none, and a host that has not answered the SYN in 30 seconds is
	// better given up for the next MX.
	DefaultDialTimeout    = 30 * time.Second
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultDataTimeout bounds sending the whole message and, separately,
	// the wait for the reply after the final dot (RFC 5321 §4.5.3.2.6).
	DefaultDataTimeout = 10 * time.Minute
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
	// the reply to it. See the Default constants.
	DialTimeout, CommandTimeout, DataTimeout time.Duration
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
	// included; deliveries beyond it wait for one to come free. Default
	// DefaultMaxConnsPerHost.
	MaxConnsPerHost int
	// MaxIdlePerHost caps the connections kept open, idle, per
	// destination; default MaxConnsPerHost.
	MaxIdlePerHost int

	// Local lists the addresses and ports postern itself listens on (its
	// SMTP listeners). An MX address that is one of them, or that is
	// unspecified (0.0.0.0, ::), is a mail loop, never dialed (an
	// unspecified listener address stands for every local one).
	Local []netip.AddrPort
}

// MX delivers messages to the MX hosts of the recipients' domain.
type MX struct {
	client
	res *resolver
	// ifaces are this machine's addresses, for a listener on an
	// unspecified address (Options.Local).
	ifaces []netip.Addr
}

var _ queue.Deliverer = (*MX)(nil)

// New returns an MX deliverer with opts, defaults filled in.
func New(opts Options) *MX {
	opts = opts.withDefaults()
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	m := &MX{
		client: newClient(opts),
		res:    &resolver{server: opts.Resolver, shuffle: rand.Shuffle},
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
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxConnsPerHost <= 0 {
		opts.MaxConnsPerHost = DefaultMaxConnsPerHost
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
func (m *MX) deliver(ctx context.Context, d *queue.Delivery, route string) []queue.Result {
	if len(d.Rcpts) == 0 {
		return []queue.Result{}
	}
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

	var last error
	var lastMTA string
	dialed, looped := false, false
	for _, host := range hosts {
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
			last, lastMTA = err, ""
			continue
		}
		for _, ip := range addrs {
			if err := ctx.Err(); err != nil {
				return fail(err, lastMTA)
			}
			if m.loops(ip) {
				m.log.Warn("MX address loops back to postern itself: skipped", zap.String("id", d.ID),
					zap.String("domain", d.Domain), zap.String("mx", host), zap.Stringer("ip", ip), zap.Int("port", m.opts.Port))
				looped = true
				continue
			}
			dialed = true
			res, err := m.attempt(ctx, d, host, ip, route)
			if err == nil {
				return res
			}
			last, lastMTA = err, host
		}
	}
	if looped && !dialed && last == nil { // no other host left untried
		return fail(errLoop.With(fmt.Errorf("mail for %s", d.Domain)), "")
	}
	if last == nil { // only when ctx ended during the lookups
		last = ctx.Err()
	}
	return fail(last, lastMTA)
}

// attempt runs one SMTP session with ip. Under Opportunistic TLS a failed
// STARTTLS is retried at once on a new plain-text connection to the same
// address: a broken TLS stack is common and Opportunistic promises
// delivery, not secrecy (RFC 7435 §6; Postfix does the same).
func (m *MX) attempt(ctx context.Context, d *queue.Delivery, host string, ip netip.Addr, route string) ([]queue.Result, error) {
	p := peer{
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
	if m.opts.TLS == Opportunistic {
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

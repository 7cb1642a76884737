package outbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
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

// Options configure an MX deliverer. The zero value of each field is a
// usable default.
type Options struct {
	// Hostname is the name given in EHLO; default os.Hostname.
	Hostname string
	// Resolver is the "host:port" of the DNS server to ask; "" uses the
	// nameservers of /etc/resolv.conf, read at each delivery.
	Resolver string
	// Port is the TCP port dialed on MX hosts; default 25.
	Port int
	// TLS is the STARTTLS policy; default Opportunistic.
	TLS TLSMode
	// RootCAs verifies certificates in Required mode; nil means the
	// system roots.
	RootCAs *x509.CertPool
	// DialTimeout bounds the TCP connect, CommandTimeout each command's
	// reply (and the greeting), DataTimeout the sending of the message and
	// the reply to it. See the Default constants.
	DialTimeout, CommandTimeout, DataTimeout time.Duration
	// Logger gets one line per attempt on an MX address; nil logs nothing.
	Logger *zap.Logger
}

// MX delivers messages to the MX hosts of the recipients' domain.
type MX struct {
	opts Options
	res  *resolver
	log  *zap.Logger
}

var _ queue.Deliverer = (*MX)(nil)

// New returns an MX deliverer with opts, defaults filled in.
func New(opts Options) *MX {
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
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
	return &MX{
		opts: opts,
		res:  &resolver{server: opts.Resolver, shuffle: rand.Shuffle},
		log:  opts.Logger,
	}
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
	// Non-ASCII envelope addresses need SMTPUTF8 (RFC 6531 §3.2); X.6.7
	// "Non-ASCII addresses not permitted for that sender/recipient".
	errNoSMTPUTF8 = status.New(553, 6, 7, "non-ASCII address and the server does not offer SMTPUTF8")
	// RFC 3207 with a Required policy; X.7.10 "Encryption needed".
	errNoSTARTTLS = status.New(451, 7, 10, "STARTTLS required but not offered")
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
// BODY=8BITMIME: go-smtp declares it whenever the server offers 8BITMIME,
// which RFC 6152 allows for any body; to a server without 8BITMIME the
// message goes as it is, without 8-to-7-bit conversion, as Postfix does by
// default. SMTPUTF8 is requested only when an envelope address is not
// ASCII; a server that does not offer it then gets no attempt.
func (m *MX) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	results := make([]queue.Result, len(d.Rcpts))
	if len(d.Rcpts) == 0 {
		return results
	}
	fail := func(err error, mta string) []queue.Result {
		o := queue.Temporary
		var se *status.Error
		if errors.As(err, &se) && se.Permanent() {
			o = queue.Permanent
		}
		if err := ctx.Err(); err != nil {
			o = queue.Temporary
		}
		for i := range results {
			results[i] = queue.Result{Outcome: o, Reply: err.Error(), RemoteMTA: mta}
		}
		return results
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
			res, err := m.attempt(ctx, d, host, ip)
			if err == nil {
				return res
			}
			last, lastMTA = err, host
		}
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
func (m *MX) attempt(ctx context.Context, d *queue.Delivery, host string, ip netip.Addr) ([]queue.Result, error) {
	res, err := m.session(ctx, d, host, ip, m.opts.TLS)
	if err != nil && m.opts.TLS == Opportunistic && errors.Is(err, errTLSFailed) {
		res, err = m.session(ctx, d, host, ip, Disabled)
	}
	return res, err
}

// errTLSFailed marks a STARTTLS exchange or handshake that failed.
var errTLSFailed = errors.New("STARTTLS failed")

// session runs one connection: the prelude (greeting, EHLO, STARTTLS), then
// one transaction. A nil error means the results are final for this
// attempt; an error means the next address should be tried.
func (m *MX) session(ctx context.Context, d *queue.Delivery, host string, ip netip.Addr, mode TLSMode) (results []queue.Result, err error) {
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(m.opts.Port))
	var usedTLS bool
	var reply string // the reply that ended the session, for the log
	defer func() {
		fields := []zap.Field{
			zap.String("id", d.ID), zap.String("mx", host), zap.String("addr", addr),
			zap.Int("attempt", d.Attempt), zap.Bool("tls", usedTLS),
		}
		if err != nil {
			reply = err.Error()
		} else {
			fields = append(fields, zap.String("outcomes", summary(results)))
		}
		m.log.Info("delivery attempt", append(fields, zap.String("reply", reply))...)
	}()

	dialer := net.Dialer{Timeout: m.opts.DialTimeout}
	// After a cancellation the errors below are the effects of closing
	// the connection; the cause goes first.
	ioErr := func(err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w (%v)", cerr, err)
		}
		return err
	}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, ioErr(err)
	}
	defer raw.Close()
	// Closing the connection is the only way to interrupt a blocked read
	// or write; every step below then fails with an I/O error.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()

	conn, usedTLS, err := m.prelude(ctx, raw, host, mode)
	if err != nil {
		return nil, ioErr(err)
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = m.opts.CommandTimeout
	c.SubmissionTimeout = m.opts.DataTimeout
	defer c.Close()
	if err := c.Hello(m.opts.Hostname); err != nil {
		return nil, remoteOr(CmdEHLO, err, ioErr)
	}

	utf8 := !isASCII(d.From)
	for _, r := range d.Rcpts {
		utf8 = utf8 || !isASCII(r)
	}
	if ok, _ := c.Extension("SMTPUTF8"); utf8 && !ok {
		c.Quit()
		return nil, errNoSMTPUTF8
	}

	results = make([]queue.Result, len(d.Rcpts))
	set := func(idx []int, o queue.Outcome, r string) {
		for _, i := range idx {
			results[i] = queue.Result{Outcome: o, Reply: r, RemoteMTA: host}
		}
		reply = r
	}
	all := make([]int, len(d.Rcpts))
	for i := range all {
		all[i] = i
	}

	if err := c.Mail(d.From, &smtp.MailOptions{Size: d.Body.Size(), UTF8: utf8}); err != nil {
		re := remoteError(CmdMAIL, err)
		if re == nil {
			return nil, ioErr(err)
		}
		if re.Temporary() {
			c.Quit()
			return nil, re
		}
		// The sender is refused for good: no other MX will think otherwise.
		set(all, queue.Permanent, re.Reply())
		c.Quit()
		return results, nil
	}

	var accepted []int
	for i, rcpt := range d.Rcpts {
		err := c.Rcpt(rcpt, nil)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		re := remoteError(CmdRCPT, err)
		if re == nil {
			// The connection is broken: every recipient without a reply
			// yet, accepted ones included, is deferred.
			set(unanswered(results), queue.Temporary, ioErr(err).Error())
			return results, nil
		}
		set([]int{i}, outcome(re), re.Reply())
	}
	if len(accepted) == 0 {
		c.Quit()
		return results, nil
	}

	body, err := d.Body.Open()
	if err != nil {
		set(accepted, queue.Temporary, status.Wrap(err, 451, 3, 0, "cannot read the queued message").Error())
		c.Quit()
		return results, nil
	}
	defer body.Close()
	w, err := c.Data()
	if err != nil {
		if re := remoteError(CmdDATA, err); re != nil {
			set(accepted, outcome(re), re.Reply())
			c.Quit()
		} else {
			set(accepted, queue.Temporary, ioErr(err).Error())
		}
		return results, nil
	}
	conn.SetWriteDeadline(time.Now().Add(m.opts.DataTimeout))
	if _, err := io.Copy(w, body); err != nil {
		// No final dot is sent: closing the connection makes the server
		// drop the partial message (RFC 5321 §3.8).
		set(accepted, queue.Temporary, ioErr(err).Error())
		return results, nil
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		if re := remoteError(CmdEOD, err); re != nil {
			set(accepted, outcome(re), re.Reply())
			c.Quit()
		} else {
			set(accepted, queue.Temporary, ioErr(err).Error())
		}
		return results, nil
	}
	set(accepted, queue.Delivered, fromText(CmdEOD, 250, resp.StatusText).Reply())
	c.Quit()
	return results, nil
}

// prelude reads the greeting and, unless TLS is Disabled, sends EHLO and
// upgrades with STARTTLS when offered. go-smtp's client has no StartTLS of
// its own in v0.25.1 (only NewClientStartTLS, which fails when STARTTLS is
// not offered), so this part of the dialogue is done here, and the
// connection is handed to go-smtp with the greeting put back in front of
// it: go-smtp then reads the real greeting and sends its own EHLO, which
// after STARTTLS RFC 3207 §4.2 requires anyway (in plain text it repeats
// ours, which RFC 5321 §4.1.4 allows).
//
// Reading the greeting here also tells a greeting failure from an EHLO one.
func (m *MX) prelude(ctx context.Context, raw net.Conn, host string, mode TLSMode) (net.Conn, bool, error) {
	raw.SetDeadline(time.Now().Add(m.opts.CommandTimeout))
	defer raw.SetDeadline(time.Time{})
	br := bufio.NewReader(raw)
	tp := textproto.NewReader(br)

	code, msg, err := tp.ReadResponse(220)
	if err != nil {
		return nil, false, remoteOr(CmdConnect, err, nil)
	}
	greeting := fromText(CmdConnect, code, msg).Wire()
	handover := func(c net.Conn, r io.Reader) net.Conn {
		return &greetedConn{Conn: c, r: io.MultiReader(strings.NewReader(greeting), r)}
	}
	if mode == Disabled {
		return handover(raw, br), false, nil
	}

	if _, err := fmt.Fprintf(raw, "EHLO %s\r\n", m.opts.Hostname); err != nil {
		return nil, false, err
	}
	_, msg, err = tp.ReadResponse(250)
	if err != nil {
		re := remoteError(CmdEHLO, err)
		if re != nil && re.Code/100 == 5 && mode == Opportunistic {
			// No ESMTP, hence no STARTTLS: go-smtp retries with HELO.
			return handover(raw, br), false, nil
		}
		return nil, false, remoteOr(CmdEHLO, err, nil)
	}
	if !offers(msg, "STARTTLS") {
		if mode == Required {
			return nil, false, errNoSTARTTLS
		}
		return handover(raw, br), false, nil
	}

	tlsFail := func(err error) error {
		if mode == Required {
			// RFC 3463 §3.8: X.7.5 "Cryptographic failure".
			return status.Wrap(err, 451, 7, 5, "TLS with "+host+" failed")
		}
		return fmt.Errorf("%w: %w", errTLSFailed, err)
	}
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, false, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		if re := remoteError(CmdSTARTTLS, err); re != nil {
			return nil, false, tlsFail(re)
		}
		return nil, false, err
	}
	// Anything the server sent after its 220 arrived before the handshake,
	// in plain text, where an attacker may have injected it (the STARTTLS
	// command injection of CVE-2011-0411): refuse to go on.
	if br.Buffered() > 0 {
		return nil, false, tlsFail(errors.New("unexpected data after the STARTTLS reply"))
	}
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if mode == Opportunistic {
		cfg.InsecureSkipVerify = true
	} else {
		cfg.RootCAs = m.opts.RootCAs
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, false, tlsFail(err)
	}
	return handover(tc, tc), true, nil
}

// greetedConn is a connection whose reads start with a greeting already
// read from it.
type greetedConn struct {
	net.Conn
	r io.Reader
}

func (c *greetedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// offers reports whether an EHLO reply's text (lines joined by "\n", the
// first being the greeting) lists the extension ext.
func offers(ehlo, ext string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(l, " ")
		if strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// remoteOr returns err as an *Error when it is a reply to command, or else
// the I/O error, passed through ioErr when not nil.
func remoteOr(command string, err error, ioErr func(error) error) error {
	if re := remoteError(command, err); re != nil {
		return re
	}
	if ioErr != nil {
		return ioErr(err)
	}
	return err
}

// outcome is the fate of recipients given a remote error reply.
func outcome(e *Error) queue.Outcome {
	if e.Permanent() {
		return queue.Permanent
	}
	return queue.Temporary
}

// unanswered lists the recipients without a result yet.
func unanswered(results []queue.Result) []int {
	var idx []int
	for i, r := range results {
		if r.Outcome == 0 {
			idx = append(idx, i)
		}
	}
	return idx
}

// summary counts outcomes for the log: "delivered=2 deferred=1".
func summary(results []queue.Result) string {
	n := map[queue.Outcome]int{}
	for _, r := range results {
		n[r.Outcome]++
	}
	var parts []string
	for _, o := range []queue.Outcome{queue.Delivered, queue.Temporary, queue.Permanent} {
		if n[o] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", o, n[o]))
		}
	}
	return strings.Join(parts, " ")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

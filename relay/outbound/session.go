package outbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/status"
)

// client is what MX and Smarthost share: one SMTP session with one server,
// from the TCP connection to QUIT.
type client struct {
	opts Options
	log  *zap.Logger
	pool *pool
}

func newClient(opts Options) client {
	return client{opts: opts, log: opts.Logger, pool: newPool(opts)}
}

// peer is one server to try and how to talk to it.
type peer struct {
	addr string // "host:port" dialed
	// host is the name the certificate must be valid for: the MX host,
	// or the host part of the smarthost's address.
	host string
	kind string // log field naming the server: "mx" or "smarthost"
	name string // its value: the MX host, or the smarthost's name
	mta  string // Result.RemoteMTA
	// route names the rule that chose this server, for the log; "" when
	// the deliverer was called directly.
	route string

	mode     TLSMode // STARTTLS policy (ignored with implicit)
	implicit bool    // TLS from the first byte (RFC 8314 §3.3)
	verify   bool    // verify the certificate for host against Options.RootCAs
	auth     *credentials

	// failover makes the session report a definite failure of every
	// recipient as an error, so that the caller tries the next server in
	// the same attempt: a 4xx to MAIL (always), and, when this is set,
	// 4xx to every RCPT or to DATA, where the server has said it did not
	// take the message.
	failover bool
}

// key names the destination of p in the connection pool: one server
// address, reached one way (TLS mode, certificate name and verification)
// as one identity. Connections of different keys are never mixed: a
// connection opened without verifying the certificate must not carry a
// delivery that requires it.
func (p peer) key() string {
	user := ""
	if p.auth != nil {
		user = p.auth.username
	}
	return fmt.Sprintf("%s|%s|%s|%s|%d|%t|%t|%s", p.kind, p.name, p.addr, p.host, p.mode, p.implicit, p.verify, user)
}

// credentials are what AUTH sends. The password is a secret, which prints
// as a mask; fmt does not call String on unexported fields, so credentials
// itself masks it too: it must never reach a log line, even through %+v.
type credentials struct {
	username string
	password secret
}

func (c credentials) String() string   { return c.username + ":********" }
func (c credentials) GoString() string { return c.String() }

type secret string

func (secret) String() string   { return "********" }
func (secret) GoString() string { return `"********"` }

// errTLSFailed marks a STARTTLS exchange or handshake that failed.
var errTLSFailed = errors.New("STARTTLS failed")

// Local statuses of the session.
var (
	// Non-ASCII envelope addresses need SMTPUTF8 (RFC 6531 §3.2); X.6.7
	// "Non-ASCII addresses not permitted for that sender/recipient".
	errNoSMTPUTF8 = status.New(553, 6, 7, "non-ASCII address and the server does not offer SMTPUTF8")
	// RFC 3207 with a Required policy; X.7.10 "Encryption needed".
	errNoSTARTTLS = status.New(451, 7, 10, "STARTTLS required but not offered")
	// A username is configured but the server offers no mechanism we
	// speak: RFC 3463 X.7.8 "Authentication credentials invalid" is the
	// nearest; temporary, because the configuration is what is wrong.
	errNoAuthMech = status.New(451, 7, 8, "smarthost does not offer AUTH PLAIN or LOGIN")
	// Never send a password over a connection without TLS (RFC 4954 §4
	// leaves it to the client; a smarthost password is worth more than
	// one message). X.7.10 "Encryption needed".
	errClearAuth = status.New(451, 7, 10, "refusing to send the smarthost password without TLS")
)

// session runs one transaction with p, on a connection parked by an
// earlier session when there is one (see pool.go), or else on a new one:
// the prelude (greeting, EHLO, STARTTLS or implicit TLS, AUTH), then the
// transaction. A nil error means the results are final for this attempt;
// an error means the next server (MX address or smarthost) should be
// tried.
//
// A parked connection that turns out dead before the server has accepted
// MAIL (the remote closed it meanwhile, or answers 421) costs nothing: the
// transaction is run again at once on a new connection. Nothing was
// started, so nothing can be duplicated.
func (c *client) session(ctx context.Context, d *queue.Delivery, p peer) ([]queue.Result, error) {
	key := p.key()
	fresh := false
	for {
		results, err, stale := c.sessionOnce(ctx, d, p, key, fresh)
		if !stale || ctx.Err() != nil {
			return results, err
		}
		fresh = true
	}
}

// use is how one session ended, as far as its connection is concerned.
type use struct {
	reused bool // the connection was parked by an earlier session
	// keep: the dialogue ended on a reply and no transaction is open, so
	// the connection may carry the next one.
	keep bool
	// stale: a reused connection failed before MAIL was accepted in a
	// way that says it was dead: an I/O error or 421.
	stale bool
	reply reply.Reply // the reply that ended the session, for the log
}

func (c *client) sessionOnce(ctx context.Context, d *queue.Delivery, p peer, key string, fresh bool) (results []queue.Result, err error, stale bool) {
	var cn *conn
	var u use
	defer func() {
		fields := []zap.Field{
			zap.String("id", d.ID), zap.String(p.kind, p.name), zap.String("addr", p.addr),
			zap.Int("attempt", d.Attempt), zap.Bool("tls", cn != nil && cn.usedTLS),
			zap.Bool("reused", u.reused),
		}
		if p.route != "" {
			fields = append(fields, zap.String("route", p.route))
		}
		if p.auth != nil {
			// The user name, never the password.
			mech := ""
			if cn != nil {
				mech = cn.mech
			}
			fields = append(fields, zap.String("auth_user", p.auth.username), zap.String("auth_mech", mech))
		}
		rep := u.reply
		if err != nil {
			rep = replyOf(err)
		} else {
			fields = append(fields, zap.String("outcomes", summary(results)))
		}
		c.log.Info("delivery attempt", append(fields, replyField(rep))...)
	}()

	cn, u.reused, err = c.acquire(ctx, p, key, fresh)
	if err != nil {
		return nil, err, false
	}
	// Closing the connection is the only way to interrupt a blocked read
	// or write; every step below then fails with an I/O error.
	stop := context.AfterFunc(ctx, func() { cn.raw.Close() })
	results, err = c.transact(ctx, d, p, cn, &u)
	if !stop() {
		u.keep = false // closed by the cancellation
	}
	c.pool.put(key, cn, u.keep)
	return results, err, u.reused && u.stale
}

// acquire returns a connection to p in a slot of the pool: a parked one
// (reused true), or a new one. A connection parked for more than
// checkAfter must answer NOOP first; one parked less is taken as it is, and
// if it has died after all, session sees it fail at MAIL and starts over on
// a new connection. The check is NOOP rather than RSET (RFC 5321 §4.1.1.5): only
// connections whose transaction is over are parked (the final reply to
// DATA clears the server's buffers, §4.1.1.4), so there is nothing to
// reset, and go-smtp's Reset makes its next MAIL send EHLO again, one more
// round trip (and on some servers the loss of a completed AUTH).
func (c *client) acquire(ctx context.Context, p peer, key string, fresh bool) (*conn, bool, error) {
	cn, err := c.pool.get(ctx, key, fresh)
	if err != nil {
		return nil, false, err // ctx's
	}
	if cn != nil && c.pool.now().Sub(cn.parked) < checkAfter {
		return cn, true, nil
	}
	if cn != nil {
		stop := context.AfterFunc(ctx, func() { cn.raw.Close() })
		// A live server answers NOOP at once: one that takes longer
		// than checkTimeout is treated as dead rather than holding the
		// delivery for the whole command timeout.
		cn.sc.CommandTimeout = min(c.opts.CommandTimeout, checkTimeout)
		err := cn.sc.Noop()
		cn.sc.CommandTimeout = c.opts.CommandTimeout
		if stop() && err == nil {
			return cn, true, nil
		}
		// Dead (the server's idle timeout, most likely): dial again in
		// the same slot.
		c.log.Debug("parked connection failed its check", zap.String(p.kind, p.name),
			zap.String("addr", p.addr), zap.Error(err))
		cn.sc.Close()
		cn.raw.Close()
	}
	cn, err = c.dial(ctx, p)
	if err != nil {
		c.pool.put(key, nil, false)
		return nil, false, err
	}
	return cn, false, nil
}

// ioErr puts ctx's error before err once ctx has ended: the errors of a
// cancelled session are the effects of closing its connection.
func ioErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// dial opens a connection to p and runs its prelude: greeting, EHLO,
// STARTTLS or implicit TLS, AUTH.
func (c *client) dial(ctx context.Context, p peer) (_ *conn, err error) {
	dialer := net.Dialer{Timeout: c.opts.DialTimeout}
	raw, err := dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, ioErr(ctx, err)
	}
	cn := &conn{raw: raw, nc: raw, created: c.pool.now()}
	defer func() {
		if err != nil {
			if cn.sc != nil {
				cn.sc.Close()
			}
			raw.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if !stop() && err == nil {
			err = ioErr(ctx, net.ErrClosed)
		}
	}()

	if p.implicit {
		tc := tls.Client(raw, c.tlsConfig(p))
		raw.SetDeadline(time.Now().Add(c.opts.CommandTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			// RFC 3463 §3.8: X.7.5 "Cryptographic failure".
			return nil, ioErr(ctx, status.Wrap(err, 451, 7, 5, "TLS with "+p.host+" failed"))
		}
		raw.SetDeadline(time.Time{})
		cn.nc, cn.usedTLS = tc, true
	}
	mode := p.mode
	if p.implicit {
		mode = Disabled // no STARTTLS inside TLS
	}
	nc, upgraded, err := c.prelude(ctx, cn.nc, p, mode)
	if err != nil {
		return nil, ioErr(ctx, err)
	}
	cn.nc, cn.usedTLS = nc, cn.usedTLS || upgraded
	cn.sc = smtp.NewClient(nc)
	cn.sc.CommandTimeout = c.opts.CommandTimeout
	cn.sc.SubmissionTimeout = c.opts.DataTimeout
	if err := cn.sc.Hello(c.opts.Hostname); err != nil {
		return nil, remoteOr(CmdEHLO, err, func(err error) error { return ioErr(ctx, err) })
	}
	if p.auth != nil {
		if cn.mech, err = c.authenticate(cn.sc, p, cn.usedTLS); err != nil {
			cn.sc.Quit()
			return nil, ioErr(ctx, err)
		}
	}
	return cn, nil
}

// transact runs one transaction on cn and says in u how it left the
// connection.
func (c *client) transact(ctx context.Context, d *queue.Delivery, p peer, cn *conn, u *use) (results []queue.Result, err error) {
	sc := cn.sc
	// ended records the server's reply to the last command sent: the
	// connection may be kept if it was a reply other than 421 and open
	// says no transaction is left open. An I/O error (re nil) leaves it
	// broken.
	ended := func(re *Error, open bool) {
		u.keep = re != nil && re.Code != 421 && !open
	}
	ioFail := func(err error) error { return ioErr(ctx, err) }

	// MailFrom: the VERP return path when the queue gave one (routes
	// still follow d.From, the sender's domain).
	utf8 := !isASCII(d.MailFrom())
	for _, r := range d.Rcpts {
		utf8 = utf8 || !isASCII(r)
	}
	if ok, _ := sc.Extension("SMTPUTF8"); utf8 && !ok {
		u.keep = true // nothing was sent
		return nil, errNoSMTPUTF8
	}
	remoteDSN, _ := sc.Extension("DSN")

	results = make([]queue.Result, len(d.Rcpts))
	set := func(idx []int, o queue.Outcome, r reply.Reply) {
		for _, i := range idx {
			results[i] = queue.Result{Outcome: o, Reply: r, RemoteMTA: p.mta}
		}
		u.reply = r
	}
	all := make([]int, len(d.Rcpts))
	for i := range all {
		all[i] = i
	}

	mailOpts, mailFull := mailOptions(d)
	mailOpts.Size, mailOpts.UTF8 = d.Body.Size(), utf8
	if err := sc.Mail(d.MailFrom(), mailOpts); err != nil {
		re := remoteError(CmdMAIL, err)
		ended(re, false)
		if re == nil || re.Code == 421 {
			u.stale = true
		}
		if re == nil {
			return nil, ioFail(err)
		}
		// RFC 4954 §6: 530 5.7.0 "Authentication required". From a
		// smarthost that is our configuration, not the sender: retry.
		if re.Temporary() || p.kind == kindSmarthost && re.Code == 530 {
			return nil, re
		}
		// The sender is refused for good: no other server will think
		// otherwise.
		set(all, queue.Permanent, re.Reply)
		return results, nil
	}

	var accepted []int
	passed := make([]bool, len(d.Rcpts)) // DSN parameters given in full
	var lastTemp *Error
	for i, rcpt := range d.Rcpts {
		opts, full := rcptOptions(d, i)
		passed[i] = full && mailFull
		err := sc.Rcpt(rcpt, opts)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		re := remoteError(CmdRCPT, err)
		if re == nil {
			// The connection is broken: every recipient without a reply
			// yet, accepted ones included, is deferred.
			set(unanswered(results), queue.Temporary, replyOf(ioFail(err)))
			return results, nil
		}
		if re.Temporary() {
			lastTemp = re
		}
		set([]int{i}, outcome(re), re.Reply)
	}
	if len(accepted) == 0 {
		// MAIL was accepted: a transaction is open. RSET would close
		// it, but see acquire: QUIT instead.
		if p.failover && lastTemp != nil && allTemporaryBut(results, nil) {
			return nil, lastTemp
		}
		return results, nil
	}

	// refused answers a refusal of the message itself, to DATA or to the
	// final dot: another smarthost is tried if nothing has gone for good
	// yet; otherwise the reply is every accepted recipient's result.
	refused := func(re *Error) ([]queue.Result, error) {
		if p.failover && re.Temporary() && allTemporaryBut(results, accepted) {
			return nil, re
		}
		set(accepted, outcome(re), re.Reply)
		return results, nil
	}

	body, err := d.Body.Open()
	if err != nil {
		set(accepted, queue.Temporary, status.Wrap(err, 451, 3, 0, "cannot read the queued message").Reply())
		return results, nil
	}
	defer body.Close()
	w, err := sc.Data()
	if err != nil {
		re := remoteError(CmdDATA, err)
		if re == nil {
			set(accepted, queue.Temporary, replyOf(ioFail(err)))
			return results, nil
		}
		return refused(re)
	}
	cn.nc.SetWriteDeadline(time.Now().Add(c.opts.DataTimeout))
	// The content goes straight onto the connection (go-smtp's writer
	// has flushed the DATA command), its last line break through w, which
	// then ends it (see dotstuff.go).
	tail, err := sendData(cn.nc, body)
	if err == nil {
		_, err = w.Write(tail)
	}
	if err != nil {
		// The final dot must never follow a partial message, or the
		// server would accept it cut short (and the retry would send it
		// again). QUIT would write that dot: textproto ends an open DATA
		// before any next command. So the TCP connection is closed first,
		// which makes the server drop the partial message (RFC 5321 §3.8).
		cn.raw.Close()
		set(accepted, queue.Temporary, replyOf(ioFail(err)))
		return results, nil
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		re := remoteError(CmdEOD, err)
		ended(re, false)
		if re == nil {
			// The final dot went out and no reply came: the server may
			// have the message. Never try another server now (a
			// duplicate is worse than a delay); the queue retries later.
			set(accepted, queue.Temporary, replyOf(ioFail(err)))
			return results, nil
		}
		return refused(re)
	}
	u.keep = true
	set(accepted, queue.Delivered, fromText(CmdEOD, 250, resp.StatusText).Reply)
	if remoteDSN {
		// RFC 3461 §6.2.1: the remote offered DSN and got every parameter
		// of these recipients, so it reports from now on.
		for _, i := range accepted {
			results[i].RemoteDSN = passed[i]
		}
	}
	return results, nil
}

// allTemporaryBut reports whether every result outside idx is Temporary
// (those in idx have no result yet).
func allTemporaryBut(results []queue.Result, idx []int) bool {
	skip := make(map[int]bool, len(idx))
	for _, i := range idx {
		skip[i] = true
	}
	for i, r := range results {
		if !skip[i] && r.Outcome != queue.Temporary {
			return false
		}
	}
	return true
}

// authenticate runs AUTH with the first mechanism both sides know, PLAIN
// before LOGIN, and only over TLS. Every failure, a 535 included, comes
// back as an error: the caller treats it as temporary, since a refused
// password says the configuration is wrong, not the message.
func (c *client) authenticate(sc *smtp.Client, p peer, usedTLS bool) (string, error) {
	if !usedTLS {
		return "", errClearAuth
	}
	var a sasl.Client
	var mech string
	switch {
	case sc.SupportsAuth(sasl.Plain):
		mech, a = sasl.Plain, sasl.NewPlainClient("", p.auth.username, string(p.auth.password))
	case sc.SupportsAuth(sasl.Login):
		mech, a = sasl.Login, sasl.NewLoginClient(p.auth.username, string(p.auth.password))
	default:
		return "", errNoAuthMech
	}
	if err := sc.Auth(a); err != nil {
		if re := remoteError(CmdAUTH, err); re != nil {
			c.log.Warn("smarthost refused our credentials",
				zap.String("smarthost", p.name), zap.String("auth_user", p.auth.username),
				zap.String("auth_mech", mech), replyField(re.Reply))
			return mech, re
		}
		return mech, err
	}
	return mech, nil
}

// tlsConfig is the client TLS configuration for p. Certificates are
// verified for p.host against Options.RootCAs (nil: the system roots)
// when p.verify says so; otherwise the connection is encrypted without
// authenticating the server.
func (c *client) tlsConfig(p peer) *tls.Config {
	cfg := &tls.Config{ServerName: p.host, MinVersion: tls.VersionTLS12}
	if p.verify {
		cfg.RootCAs = c.opts.RootCAs
	} else {
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// prelude reads the greeting and, unless mode is Disabled, sends EHLO and
// upgrades with STARTTLS when offered. go-smtp's client has no StartTLS of
// its own in v0.25.1 (only NewClientStartTLS, which fails when STARTTLS is
// not offered), so this part of the dialogue is done here, and the
// connection is handed to go-smtp with the greeting put back in front of
// it: go-smtp then reads the real greeting and sends its own EHLO, which
// after STARTTLS RFC 3207 §4.2 requires anyway (in plain text it repeats
// ours, which RFC 5321 §4.1.4 allows).
//
// Reading the greeting here also tells a greeting failure from an EHLO one.
func (c *client) prelude(ctx context.Context, raw net.Conn, p peer, mode TLSMode) (net.Conn, bool, error) {
	raw.SetDeadline(time.Now().Add(c.opts.CommandTimeout))
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

	if _, err := fmt.Fprintf(raw, "EHLO %s\r\n", c.opts.Hostname); err != nil {
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
			return status.Wrap(err, 451, 7, 5, "TLS with "+p.host+" failed")
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
	tc := tls.Client(raw, c.tlsConfig(p))
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

// failAll gives every one of n recipients the failure err: Permanent when
// err is a permanent local status (a null MX, an address literal),
// Temporary otherwise, and always Temporary once ctx has ended.
func failAll(ctx context.Context, n int, err error, mta string) []queue.Result {
	o := queue.Temporary
	var se *status.Error
	if errors.As(err, &se) && se.Permanent() {
		o = queue.Permanent
	}
	if ctx.Err() != nil {
		o = queue.Temporary
	}
	rep := replyOf(err)
	results := make([]queue.Result, n)
	for i := range results {
		results[i] = queue.Result{Outcome: o, Reply: rep, RemoteMTA: mta}
	}
	return results
}

// replyOf is the typed reply a failure gives the recipients: the remote's
// reply, a local status (its code, enhanced code and words), or, for an
// I/O or DNS failure with neither, the error's text alone.
func replyOf(err error) reply.Reply {
	if re, ok := errors.AsType[*Error](err); ok {
		return re.Reply
	}
	if se, ok := errors.AsType[*status.Error](err); ok {
		return se.Reply()
	}
	return reply.Reply{Text: err.Error()}
}

// replyField logs a typed reply as the queue's lines do: an object of
// code, enhanced code and text (the code left out when there is none).
func replyField(r reply.Reply) zap.Field { return zap.Object("reply", zapReply(r)) }

type zapReply reply.Reply

func (r zapReply) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if r.Code != 0 {
		enc.AddInt("code", r.Code)
	}
	if !r.Enhanced.IsZero() {
		enc.AddString("enhanced_code", r.Enhanced.String())
	}
	enc.AddString("text", r.Text)
	return nil
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

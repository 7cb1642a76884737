package outbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/smtpclient"
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
	// tls, for MX hosts under relay/tlspolicy, decides STARTTLS and the
	// certificate in place of verify (mode then only says whether
	// STARTTLS is tried at all), and carries the message's REQUIRETLS.
	tls  *hostTLS
	auth *credentials
	// requireTLS: a smarthost must take the message with REQUIRETLS
	// (RFC 8689 §4.2.2); for MX hosts tls carries it.
	requireTLS bool

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
	return fmt.Sprintf("%s|%s|%s|%s|%d|%t|%t|%s|%s", p.kind, p.name, p.addr, p.host, p.mode, p.implicit, p.verify, user, p.tls.key())
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
	// transactions counts the MAIL commands sent (more than one when
	// the server limits the recipients of a transaction).
	transactions int
}

func (c *client) sessionOnce(ctx context.Context, d *queue.Delivery, p peer, key string, fresh bool) (results []queue.Result, err error, stale bool) {
	var cn *conn
	var u use
	defer func() {
		fields := []zap.Field{
			zap.String("id", d.ID), zap.String(p.kind, p.name), zap.String("addr", p.addr),
			zap.Int("attempt", d.Attempt), zap.Bool("tls", cn != nil && cn.sc.TLS()),
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
		if u.transactions > 1 {
			fields = append(fields, zap.Int("transactions", u.transactions))
		}
		c.log.Info("delivery attempt", append(fields, replyField(rep))...)
	}()

	cn, u.reused, err = c.acquire(ctx, p, key, fresh)
	if err != nil {
		return nil, err, false
	}
	// The client closes the connection if ctx ends while it talks (and
	// then says it is not reusable).
	results, err = c.transact(ctx, d, p, cn, &u)
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
// reset.
func (c *client) acquire(ctx context.Context, p peer, key string, fresh bool) (*conn, bool, error) {
	cn, err := c.pool.get(ctx, key, fresh)
	if err != nil {
		return nil, false, err // ctx's
	}
	if cn != nil && c.pool.now().Sub(cn.parked) < checkAfter {
		return cn, true, nil
	}
	if cn != nil {
		// A live server answers NOOP at once: one that takes longer
		// than checkTimeout is treated as dead rather than holding the
		// delivery for the whole command timeout.
		err := cn.sc.Noop(ctx, checkTimeout)
		if err == nil {
			return cn, true, nil
		}
		// Dead (the server's idle timeout, most likely): dial again in
		// the same slot.
		c.log.Debug("parked connection failed its check", zap.String(p.kind, p.name),
			zap.String("addr", p.addr), zap.Error(err))
		cn.sc.Close()
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
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// dial opens a connection to p and runs its prelude: implicit TLS, the
// greeting, EHLO, STARTTLS as p.mode says (and EHLO again), AUTH.
func (c *client) dial(ctx context.Context, p peer) (_ *conn, err error) {
	dialer := net.Dialer{Timeout: c.opts.DialTimeout}
	raw, err := dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, ioErr(ctx, err)
	}
	cn := &conn{
		sc: smtpclient.New(raw, smtpclient.Options{
			Hostname:       c.opts.Hostname,
			CommandTimeout: c.opts.CommandTimeout,
			DataTimeout:    c.opts.DataTimeout,
		}),
		created: c.pool.now(),
	}
	defer func() {
		if err != nil {
			cn.sc.Close()
		}
	}()
	sc := cn.sc
	mode := p.mode
	if p.implicit {
		if err := sc.ImplicitTLS(ctx, c.tlsConfig(p)); err != nil {
			// RFC 3463 §3.8: X.7.5 "Cryptographic failure".
			return nil, ioErr(ctx, status.Wrap(err, 451, 7, 5, "TLS with "+p.host+" failed"))
		}
		mode = Disabled // no STARTTLS inside TLS
	}
	if err := sc.Greet(ctx); err != nil {
		return nil, err
	}
	if err := sc.Hello(ctx); err != nil {
		return nil, err
	}
	switch {
	case mode == Disabled:
	case p.tls != nil:
		if err := c.startTLSPolicy(ctx, sc, p); err != nil {
			return nil, err
		}
	default:
		if err := c.startTLS(ctx, sc, p, mode); err != nil {
			return nil, err
		}
	}
	if p.auth != nil {
		if cn.mech, err = c.authenticate(ctx, sc, p); err != nil {
			if _, ok := errors.AsType[*Error](err); ok {
				sc.Quit(min(c.opts.CommandTimeout, quitTimeout))
			}
			return nil, ioErr(ctx, err)
		}
	}
	return cn, nil
}

// startTLS upgrades the connection when the server offers STARTTLS (and
// fails under Required when it does not), then says EHLO again (RFC 3207
// §4.2). A failure of the upgrade itself wraps errTLSFailed under
// Opportunistic, so that MX.attempt retries in plain text, and is 451
// 4.7.5 under Required; anything the server sent after its go-ahead is
// such a failure (smtpclient.StartTLS: CVE-2011-0411).
func (c *client) startTLS(ctx context.Context, sc *smtpclient.Client, p peer, mode TLSMode) error {
	if !sc.Ext().StartTLS {
		if mode == Required {
			return errNoSTARTTLS
		}
		return nil
	}
	if err := sc.StartTLS(ctx, c.tlsConfig(p)); err != nil {
		if !errors.Is(err, smtpclient.ErrTLS) {
			return err
		}
		if mode == Required {
			// RFC 3463 §3.8: X.7.5 "Cryptographic failure".
			return status.Wrap(err, 451, 7, 5, "TLS with "+p.host+" failed")
		}
		return fmt.Errorf("%w: %w", errTLSFailed, err)
	}
	return sc.Hello(ctx)
}

// transact runs the transaction of d on cn (several, when the server
// limits the recipients of one: see smtpclient.Client.Send) and says in u
// how it left the connection.
func (c *client) transact(ctx context.Context, d *queue.Delivery, p peer, cn *conn, u *use) (results []queue.Result, err error) {
	sc := cn.sc
	ext := sc.Ext()
	// MailFrom: the VERP return path when the queue gave one (routes
	// still follow d.From, the sender's domain).
	utf8 := !isASCII(d.MailFrom())
	for _, r := range d.Rcpts {
		utf8 = utf8 || !isASCII(r)
	}
	if utf8 && !ext.SMTPUTF8 {
		u.keep = true // nothing was sent
		return nil, errNoSMTPUTF8
	}

	results = make([]queue.Result, len(d.Rcpts))
	set := func(i int, o queue.Outcome, r reply.Reply) {
		results[i] = queue.Result{Outcome: o, Reply: r, RemoteMTA: p.mta}
		u.reply = r
	}

	if err := requireTLSOffered(p, sc); err != nil {
		u.keep = true // nothing was sent
		return nil, err
	}

	tx := &smtpclient.Tx{From: d.MailFrom(), Body: d.Body, Size: d.Body.Size(), UTF8: utf8, RequireTLS: p.requiresTLS()}
	mailFull := mailDSN(d, tx)
	passed := make([]bool, len(d.Rcpts)) // DSN parameters given in full
	for i := range d.Rcpts {
		r, full := rcptDSN(d, i)
		tx.Rcpts = append(tx.Rcpts, r)
		passed[i] = full && mailFull
	}
	if !ext.EightBitMIME {
		body, err := c.downgrade(d)
		if err != nil {
			// Nothing was sent; another server may offer 8BITMIME.
			u.keep = true
			return nil, err
		}
		tx.Body, tx.Size = body, body.Size()
	}

	res, err := sc.Send(ctx, tx)
	u.keep = sc.Reusable()
	if err != nil {
		re, _ := errors.AsType[*Error](err)
		if re == nil || re.Code == 421 {
			u.stale = true
		}
		if re == nil {
			return nil, ioErr(ctx, err)
		}
		// RFC 4954 §6: 530 5.7.0 "Authentication required". From a
		// smarthost that is our configuration, not the sender: retry.
		if re.Temporary() || p.kind == kindSmarthost && re.Code == 530 {
			return nil, re
		}
		// The sender is refused for good: no other server will think
		// otherwise.
		for i := range results {
			set(i, queue.Permanent, re.Reply)
		}
		return results, nil
	}
	u.transactions = res.Transactions

	// failover: every recipient got a temporary refusal, none an I/O
	// error (after which the server may hold the message: a delay is
	// better than a duplicate); the next server is worth a try.
	failover := p.failover
	// last is the refusal to fail over with: the one of the message (to
	// DATA or its content) when a recipient was accepted, else the last
	// RCPT refusal.
	var last *Error
	lastAccepted := false
	for i, r := range res.Rcpts {
		switch {
		case r.Err != nil:
			failover = false
			set(i, queue.Temporary, replyOf(ioErr(ctx, bodyErr(r.Err))))
		case r.Delivered():
			failover = false
			set(i, queue.Delivered, r.Reply.Reply)
			// RFC 3461 §6.2.1: the remote offered DSN and got every
			// parameter of this recipient, so it reports from now on.
			results[i].RemoteDSN = ext.DSN && passed[i]
		default:
			if r.Reply.Permanent() {
				failover = false
			}
			if r.Accepted || !lastAccepted {
				last, lastAccepted = r.Reply, r.Accepted
			}
			set(i, outcome(r.Reply), r.Reply.Reply)
		}
	}
	if failover && last != nil {
		return nil, last
	}
	if n := len(res.Replies); n > 0 && res.Replies[n-1] != nil {
		u.reply = res.Replies[n-1].Reply // what ended the session, for the log
	}
	return results, nil
}

// bodyErr gives a message that could not be read its local status: 451
// 4.3.0, with the cause in its words.
func bodyErr(err error) error {
	if errors.Is(err, smtpclient.ErrBody) {
		return status.Wrap(err, 451, 3, 0, "cannot read the queued message")
	}
	return err
}

// authenticate runs AUTH with the first mechanism both sides know, PLAIN
// before LOGIN, and only over TLS. Every failure, a 535 included, comes
// back as an error: the caller treats it as temporary, since a refused
// password says the configuration is wrong, not the message.
func (c *client) authenticate(ctx context.Context, sc *smtpclient.Client, p peer) (string, error) {
	if !sc.TLS() {
		return "", errClearAuth
	}
	var mech string
	switch {
	case sc.Ext().SupportsAuth("PLAIN"):
		mech = "PLAIN"
	case sc.Ext().SupportsAuth("LOGIN"):
		mech = "LOGIN"
	default:
		return "", errNoAuthMech
	}
	if err := sc.Auth(ctx, mech, p.auth.username, string(p.auth.password)); err != nil {
		if re, ok := errors.AsType[*Error](err); ok {
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

// outcome is the fate of recipients given a remote error reply.
func outcome(e *Error) queue.Outcome {
	if e.Permanent() {
		return queue.Permanent
	}
	return queue.Temporary
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

package relaytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Commands that FailNext can make fail.
const (
	// CmdConnect is the greeting: the receiver answers the new connection
	// with the failure instead of 220 and closes it.
	CmdConnect = "CONNECT"
	// CmdEHLO is the first EHLO or HELO of a connection, and the first after
	// STARTTLS (go-smtp opens a session at that point).
	CmdEHLO = "EHLO"
	CmdMAIL = "MAIL"
	CmdRCPT = "RCPT"
	// CmdDATA is the reply after the message content (the final dot); the
	// receiver reads the whole message before failing it.
	CmdDATA = "DATA"
)

// Message is one message a Receiver accepted.
type Message struct {
	From       string   // envelope sender, "" for the null reverse-path
	To         []string // accepted recipients, in RCPT order
	Data       []byte   // the message as received, dot-unstuffed
	Opts       smtp.MailOptions
	RcptOpts   []smtp.RcptOptions // parallel to To; zero values where none were given
	AuthUser   string             // the user name of a successful AUTH, "" without one
	Helo       string             // the EHLO/HELO name the client gave
	TLS        bool               // whether the transaction ran over TLS
	RemoteAddr string
}

// ReceiverOption configures a Receiver.
type ReceiverOption func(*receiverConfig)

type receiverConfig struct {
	hide      []string
	tlsNames  []string
	brokenTLS bool
	implicit  bool
	cert      *tls.Certificate
	auth      *Credentials
	server    []func(*smtp.Server)
}

// Credentials are a user name and password AUTH can give.
type Credentials struct {
	Username, Password string
}

// AuthAttempt is one AUTH exchange a Receiver saw.
type AuthAttempt struct {
	Mech     string // PLAIN or LOGIN
	Username string
	Password string
	TLS      bool // whether it ran over TLS
	OK       bool // whether the Receiver accepted it
}

// WithAuth makes the Receiver offer AUTH PLAIN and LOGIN, accept only the
// given user name and password (SetAuth changes them), and refuse MAIL
// before a successful AUTH with 530 5.7.0 (RFC 4954 §6). Every exchange is
// recorded (Auths). With WithSTARTTLS, AUTH is offered only after TLS, as
// real providers do; without, it is offered in plain text too.
func WithAuth(username, password string) ReceiverOption {
	return func(c *receiverConfig) { c.auth = &Credentials{username, password} }
}

// WithImplicitTLS makes the Receiver speak TLS from the first byte (port
// 465, RFC 8314), with a fresh self-signed certificate valid for names and
// the listening IP address; clients that verify it use CertPool.
func WithImplicitTLS(names ...string) ReceiverOption {
	return func(c *receiverConfig) {
		c.implicit = true
		c.tlsNames = append(c.tlsNames, names...)
	}
}

// WithSTARTTLS makes the Receiver offer STARTTLS with a fresh self-signed
// certificate valid for names and for the listening IP address. Clients
// that should verify it use Receiver.CertPool.
func WithSTARTTLS(names ...string) ReceiverOption {
	return func(c *receiverConfig) { c.tlsNames = append(c.tlsNames, names...) }
}

// WithCertificate makes the Receiver offer STARTTLS with cert (one of a
// test CA, say) instead of a self-signed one.
func WithCertificate(cert tls.Certificate) ReceiverOption {
	return func(c *receiverConfig) { c.cert = &cert }
}

// WithoutExtensions hides EHLO keywords ("PIPELINING", "CHUNKING",
// "8BITMIME", "LIMITS", ...) that go-smtp would offer, to play a server
// that lacks them. Only the offer is hidden: a client that uses the
// extension anyway still gets go-smtp's handling. Connections with
// implicit TLS are left alone.
func WithoutExtensions(keywords ...string) ReceiverOption {
	return func(c *receiverConfig) { c.hide = append(c.hide, keywords...) }
}

// WithBrokenTLS makes the Receiver offer STARTTLS and then fail every TLS
// handshake, as a misconfigured server does.
func WithBrokenTLS() ReceiverOption {
	return func(c *receiverConfig) { c.brokenTLS = true }
}

// WithServer lets the caller adjust the go-smtp server before it starts
// (EnableSMTPUTF8, MaxMessageBytes, ...). Backend, TLSConfig and ErrorLog
// belong to the Receiver and should be left alone.
func WithServer(f func(*smtp.Server)) ReceiverOption {
	return func(c *receiverConfig) { c.server = append(c.server, f) }
}

// Receiver is an in-process SMTP server (go-smtp) on a loopback address. It
// records every message it accepts, fails commands on request, and counts
// its open connections so tests can prove the client closed them all.
type Receiver struct {
	srv  *smtp.Server
	ln   net.Listener
	pool *x509.CertPool
	done chan struct{}
	once sync.Once

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change below
	msgs     []Message
	open     int // connections accepted and not yet closed
	maxOpen  int // the most connections open at once
	accepted int // connections accepted in total
	rcptFail map[string]*smtp.SMTPError
	failNext map[string][]failure
	auth     *Credentials // nil: no AUTH
	auths    []AuthAttempt
	// hold, when set, holds the reply to the next message: held is
	// closed once it is recorded, release lets the reply go.
	hold *heldReply

	record bool     // connections are plain text from the start: log their commands
	hide   []string // EHLO keywords not offered, upper case
	cmds   []Command
}

type heldReply struct{ held, release chan struct{} }

// HoldNextReply makes the Receiver record the next message it is sent and
// then hold back its reply to the final dot until release is called, as a
// slow MX that has committed the message but not answered yet. held is
// closed once the message is recorded: the sender's attempt is in flight.
// release is safe to call more than once.
func (r *Receiver) HoldNextReply() (held <-chan struct{}, release func()) {
	h := &heldReply{held: make(chan struct{}), release: make(chan struct{})}
	r.mu.Lock()
	r.hold = h
	r.mu.Unlock()
	var once sync.Once
	return h.held, func() { once.Do(func() { close(h.release) }) }
}

type failure struct {
	err *smtp.SMTPError
	n   int // remaining uses; < 0 forever
}

// NewReceiver starts a Receiver on addr ("127.0.0.2:0", or "127.0.0.2:N"
// with a port from FreePort) and closes it when the test ends.
func NewReceiver(t testing.TB, addr string, opts ...ReceiverOption) *Receiver {
	t.Helper()
	r, err := StartReceiver(addr, opts...)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// StartReceiver starts a Receiver on addr; the caller must Close it.
func StartReceiver(addr string, opts ...ReceiverOption) (*Receiver, error) {
	if err := checkLoopbackAddr(addr); err != nil {
		return nil, err
	}
	var cfg receiverConfig
	for _, o := range opts {
		o(&cfg)
	}
	r := &Receiver{
		done:     make(chan struct{}),
		changed:  make(chan struct{}),
		rcptFail: make(map[string]*smtp.SMTPError),
		failNext: make(map[string][]failure),
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r.ln = &countingListener{Listener: l, r: r}
	r.auth = cfg.auth
	r.record = !cfg.implicit
	for _, k := range cfg.hide {
		r.hide = append(r.hide, strings.ToUpper(k))
	}

	r.srv = smtp.NewServer(smtp.BackendFunc(r.newSession))
	r.srv.Domain = "relaytest.invalid"
	r.srv.ErrorLog = log.New(io.Discard, "", 0)
	r.srv.AllowInsecureAuth = true
	if cfg.implicit && cfg.brokenTLS {
		l.Close()
		return nil, errors.New("relaytest: WithImplicitTLS and WithBrokenTLS do not go together")
	}
	if len(cfg.tlsNames) > 0 || cfg.brokenTLS || cfg.implicit {
		names := append(cfg.tlsNames, l.Addr().(*net.TCPAddr).IP.String())
		if len(cfg.tlsNames) > 0 {
			r.srv.Domain = cfg.tlsNames[0]
		}
		cert, pool, err := SelfSigned(names...)
		if err != nil {
			l.Close()
			return nil, err
		}
		r.pool = pool
		r.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if cfg.cert != nil {
		r.pool = nil
		r.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cfg.cert}}
	}
	if r.srv.TLSConfig != nil {
		if cfg.brokenTLS {
			r.srv.TLSConfig = &tls.Config{
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					return nil, errors.New("relaytest: broken TLS")
				},
			}
		}
	}
	if cfg.auth != nil && r.srv.TLSConfig != nil {
		r.srv.AllowInsecureAuth = false
	}
	if cfg.implicit {
		// Connections are counted (and CONNECT failures answered, in
		// plain text) before the handshake.
		r.ln = tls.NewListener(r.ln, r.srv.TLSConfig)
		r.srv.TLSConfig = nil // no STARTTLS inside TLS
	}
	for _, f := range cfg.server {
		f(r.srv)
	}
	go func() {
		defer close(r.done)
		r.srv.Serve(r.ln)
	}()
	return r, nil
}

// Addr is the "host:port" the Receiver listens on.
func (r *Receiver) Addr() string { return r.ln.Addr().String() }

// Port is the TCP port the Receiver listens on.
func (r *Receiver) Port() int { return r.ln.Addr().(*net.TCPAddr).Port }

// CertPool holds the Receiver's self-signed certificate, for clients that
// verify it; nil without WithSTARTTLS.
func (r *Receiver) CertPool() *x509.CertPool { return r.pool }

// Close stops the Receiver and drops its connections. It may be called
// more than once.
func (r *Receiver) Close() {
	r.once.Do(func() {
		r.srv.Close()
		r.ln.Close()
		<-r.done
	})
}

// FailRcpt makes every RCPT TO rcpt (compared case-insensitively) answer
// code and msg until Reset. msg may start with an enhanced status code
// ("5.1.1 no such user"); without one the reply has none.
func (r *Receiver) FailRcpt(rcpt string, code int, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rcptFail[strings.ToLower(rcpt)] = Reply(code, msg)
}

// FailNext makes the next n uses of cmd (one of the Cmd constants) answer
// code and msg; n < 0 means every use until Reset. Failures queued for the
// same command apply in the order given.
func (r *Receiver) FailNext(cmd string, code int, msg string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd = strings.ToUpper(cmd)
	r.failNext[cmd] = append(r.failNext[cmd], failure{err: Reply(code, msg), n: n})
}

// Reset clears every failure set by FailRcpt and FailNext.
func (r *Receiver) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.rcptFail)
	clear(r.failNext)
}

// SetAuth changes the credentials a Receiver made WithAuth accepts.
func (r *Receiver) SetAuth(username, password string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.auth = &Credentials{username, password}
}

// Auths returns the AUTH exchanges seen so far, in order.
func (r *Receiver) Auths() []AuthAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]AuthAttempt(nil), r.auths...)
}

// Messages returns a copy of the messages accepted so far.
func (r *Receiver) Messages() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs...)
}

// WaitMessages waits until at least n messages have been accepted and
// returns them all, or returns ctx's error with those accepted so far.
func (r *Receiver) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	var msgs []Message
	err := r.wait(ctx, func() bool {
		msgs = append([]Message(nil), r.msgs...)
		return len(r.msgs) >= n
	})
	return msgs, err
}

// OpenConns is the number of connections currently open.
func (r *Receiver) OpenConns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.open
}

// MaxOpenConns is the most connections that were open at once, from
// whichever clients: what a limit on a destination's connections, shared
// by several senders, is measured by.
func (r *Receiver) MaxOpenConns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxOpen
}

// Conns is the number of connections accepted since the start.
func (r *Receiver) Conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepted
}

// WaitIdle waits until no connection is open. The server closes its end
// only after the client has sent QUIT or closed its own end, so a client
// that leaks its connection makes WaitIdle return ctx's error.
func (r *Receiver) WaitIdle(ctx context.Context) error {
	return r.wait(ctx, func() bool { return r.open == 0 })
}

// wait calls cond under the lock after every change until it holds.
func (r *Receiver) wait(ctx context.Context, cond func() bool) error {
	for {
		r.mu.Lock()
		ok, ch := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("relaytest: %w", ctx.Err())
		}
	}
}

// notifyLocked wakes every waiter; r.mu must be held.
func (r *Receiver) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// take consumes one queued failure for cmd, or returns nil.
func (r *Receiver) take(cmd string) *smtp.SMTPError {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.failNext[cmd]
	if len(q) == 0 {
		return nil
	}
	f := &q[0]
	err := f.err
	if f.n > 0 {
		f.n--
	}
	if f.n == 0 {
		r.failNext[cmd] = q[1:]
	}
	return err
}

// Reply builds the bare *smtp.SMTPError that go-smtp writes as the reply
// "code msg". A leading enhanced status code in msg ("4.2.2 mailbox full")
// becomes the reply's enhanced code; without one the reply carries none.
func Reply(code int, msg string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: msg}
	first, rest, _ := strings.Cut(msg, " ")
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) > 3 {
			return e
		}
		ec[i] = n
	}
	e.EnhancedCode, e.Message = ec, rest
	return e
}

func (r *Receiver) newSession(c *smtp.Conn) (smtp.Session, error) {
	if err := r.take(CmdEHLO); err != nil {
		return nil, err
	}
	s := &session{r: r, conn: c}
	r.mu.Lock()
	withAuth := r.auth != nil
	r.mu.Unlock()
	if withAuth {
		return &authSession{s}, nil
	}
	return s, nil
}

type session struct {
	r        *Receiver
	conn     *smtp.Conn
	from     string
	opts     smtp.MailOptions
	to       []string
	rcptOpts []smtp.RcptOptions
	authUser string // after a successful AUTH
}

// errAuthRequired is RFC 4954 §6's reply to MAIL before AUTH.
var errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}

// errAuthFailed is RFC 4954 §6's reply to wrong credentials.
var errAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if err := s.r.take(CmdMAIL); err != nil {
		return err
	}
	s.r.mu.Lock()
	needAuth := s.r.auth != nil
	s.r.mu.Unlock()
	if needAuth && s.authUser == "" {
		return errAuthRequired
	}
	s.from, s.to, s.rcptOpts = from, nil, nil
	s.opts = smtp.MailOptions{}
	if opts != nil {
		s.opts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := s.r.take(CmdRCPT); err != nil {
		return err
	}
	s.r.mu.Lock()
	err := s.r.rcptFail[strings.ToLower(to)]
	s.r.mu.Unlock()
	if err != nil {
		return err
	}
	s.to = append(s.to, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	s.rcptOpts = append(s.rcptOpts, o)
	return nil
}

// authSession is a session that offers AUTH (WithAuth).
type authSession struct{ *session }

func (s *authSession) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *authSession) Auth(mech string) (sasl.Server, error) {
	check := func(mech string) func(user, pass string) error {
		return func(user, pass string) error {
			_, isTLS := s.conn.TLSConnectionState()
			r := s.r
			r.mu.Lock()
			ok := r.auth != nil && user == r.auth.Username && pass == r.auth.Password
			r.auths = append(r.auths, AuthAttempt{Mech: mech, Username: user, Password: pass, TLS: isTLS, OK: ok})
			r.notifyLocked()
			r.mu.Unlock()
			if !ok {
				return errAuthFailed
			}
			s.authUser = user
			return nil
		}
	}
	switch mech {
	case sasl.Plain:
		c := check(sasl.Plain)
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errAuthFailed
			}
			return c(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check(sasl.Login)}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of AUTH LOGIN, which go-sasl lacks: two
// base64 prompts, "Username:" and "Password:" (draft-murchison-sasl-login).
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil { // no initial response: ask for the user name
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

func (s *session) Data(body io.Reader) error {
	b, err := io.ReadAll(body)
	if err == nil && cutShort(s.conn.Conn()) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return err
	}
	if err := s.r.take(CmdDATA); err != nil {
		return err
	}
	_, isTLS := s.conn.TLSConnectionState()
	m := Message{
		From:       s.from,
		To:         append([]string(nil), s.to...),
		Data:       b,
		Opts:       s.opts,
		RcptOpts:   append([]smtp.RcptOptions(nil), s.rcptOpts...),
		AuthUser:   s.authUser,
		Helo:       s.conn.Hostname(),
		TLS:        isTLS,
		RemoteAddr: s.conn.Conn().RemoteAddr().String(),
	}
	s.r.mu.Lock()
	s.r.msgs = append(s.r.msgs, m)
	s.r.notifyLocked()
	h := s.r.hold
	s.r.hold = nil
	s.r.mu.Unlock()
	if h != nil {
		close(h.held)
		select {
		case <-h.release:
		case <-s.r.done:
		}
	}
	return nil
}

func (s *session) Reset() {
	s.from, s.to, s.opts, s.rcptOpts = "", nil, smtp.MailOptions{}, nil
}

func (s *session) Logout() error { return nil }

// countingListener counts connections and answers CONNECT failures itself,
// since go-smtp always greets with 220.
type countingListener struct {
	net.Listener
	r *Receiver
}

func (l *countingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		r := l.r
		r.mu.Lock()
		r.open++
		r.maxOpen = max(r.maxOpen, r.open)
		r.accepted++
		r.notifyLocked()
		r.mu.Unlock()
		cc := &countedConn{Conn: c, r: r, log: &cmdLog{r: r, conn: r.accepted, on: r.record}}
		if e := r.take(CmdConnect); e != nil {
			fmt.Fprintf(cc, "%s\r\n", replyLine(e))
			cc.Close()
			continue
		}
		return cc, nil
	}
}

func replyLine(e *smtp.SMTPError) string {
	if e.EnhancedCode == smtp.NoEnhancedCode {
		return fmt.Sprintf("%d %s", e.Code, e.Message)
	}
	ec := e.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, ec[0], ec[1], ec[2], e.Message)
}

type countedConn struct {
	net.Conn
	r    *Receiver
	once sync.Once
	log  *cmdLog
	// failed: a read from the client failed (see cutShort).
	failed atomic.Bool
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.log.read(p[:n])
	if err != nil {
		c.failed.Store(true)
	}
	return n, err
}

// cutShort reports whether the client's connection failed: a message body
// that ended then was cut off. go-smtp ends a BDAT chunk cut short by the
// client's disconnection as if it were whole; a real MX discards it, and
// so does the Receiver.
func cutShort(c net.Conn) bool {
	for {
		switch v := c.(type) {
		case *countedConn:
			return v.failed.Load()
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return false
		}
	}
}

func (c *countedConn) Write(p []byte) (int, error) {
	out, n := c.log.write(p)
	if len(out) == 0 {
		return n, nil
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return n, nil
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.r.mu.Lock()
		c.r.open--
		c.r.notifyLocked()
		c.r.mu.Unlock()
	})
	return err
}

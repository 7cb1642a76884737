package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"postern/auth"
	"postern/relay/submit"
)

// Kind is what a listener is for.
type Kind int

const (
	// Submission is port 587 (RFC 6409): STARTTLS, then AUTH, then mail.
	Submission Kind = iota + 1
	// Submissions is port 465 (RFC 8314): implicit TLS, then AUTH.
	Submissions
	// TrustedRelay accepts mail without AUTH from trusted networks only.
	TrustedRelay
)

func (k Kind) String() string {
	switch k {
	case Submission:
		return "submission"
	case Submissions:
		return "submissions"
	case TrustedRelay:
		return "relay"
	}
	return "unknown"
}

// Enqueuer stores a message durably: see submit.Enqueuer.
type Enqueuer = submit.Enqueuer

// Authenticator checks a user name and password. A wrong pair returns an
// error wrapping auth.ErrInvalidCredentials after the same delay whether or
// not the user exists; an error wrapping auth.ErrBusy means the pair was
// not checked for want of capacity (454, not counted as a failure); any
// other error is an internal failure.
type Authenticator interface {
	Authenticate(ctx context.Context, name, password string) (*auth.User, error)
}

// Signer signs a message (DKIM): see submit.Signer.
type Signer = submit.Signer

// Observer is told what sessions do, for metrics. Reply sees the replies
// the session decides (to AUTH, MAIL, RCPT and DATA); replies go-smtp
// sends on its own (syntax errors, size and recipient limits) are not
// seen. Methods are called from many sessions at once.
type Observer interface {
	Reply(code int)
	AuthFailure()
	Accepted(listener string, size int64)
}

type nopObserver struct{}

func (nopObserver) Reply(int)              {}
func (nopObserver) AuthFailure()           {}
func (nopObserver) Accepted(string, int64) {}

// Options configure one listener. The zero value of optional fields is
// useful.
type Options struct {
	Kind     Kind
	Hostname string // EHLO greeting and Received "by"
	// TLS is required for Submission (offered as STARTTLS) and Submissions
	// (implicit). On TrustedRelay it is offered as STARTTLS when set.
	TLS             *tls.Config
	MaxMessageBytes int64
	MaxRecipients   int
	// Trusted networks may use TrustedRelay. Ignored on other kinds.
	Trusted []netip.Prefix

	Auth  Authenticator // required for Submission and Submissions
	Queue Enqueuer
	// Signer, when set, is asked for the current signer for each message,
	// so keys can be reloaded while sessions run.
	Signer func() Signer
	Logger *zap.Logger
	// Observer, when set, is told of replies, auth failures and accepted
	// messages.
	Observer Observer

	// Timeouts per command and for the whole DATA transfer. Defaults follow
	// RFC 5321 §4.5.3.2: the server waits 5 minutes for a command
	// (§4.5.3.2.7) and a client 10 minutes for the reply to the final dot
	// (§4.5.3.2.6), which bounds a whole transfer from our side too.
	CommandTimeout time.Duration
	DataTimeout    time.Duration
	// IdleTimeout closes a session that has not completed a transaction
	// for this long (counted from the connection, then from each accepted
	// message): a client may not hold a connection open by sending NOOPs
	// or nothing. 0: only CommandTimeout applies.
	IdleTimeout time.Duration

	// Policy is the anti-abuse policy, shared by the listeners of one
	// server; nil enforces nothing.
	Policy *Policy
}

// Server is one SMTP listener.
type Server struct {
	opts Options
	smtp *smtp.Server
	// submit is the pipeline every accepted message goes through.
	submit *submit.Pipeline
	log    *zap.Logger
	// ctx is cancelled when the server is shut down for good, so a session
	// stuck in Enqueue or Authenticate does not hold up the exit forever.
	ctx    context.Context
	cancel context.CancelFunc

	// go-smtp's Serve does not notice an earlier Shutdown, and its Close
	// does nothing after Shutdown, so the Server keeps its listeners and
	// connections itself.
	mu     sync.Mutex
	closed bool
	lns    []net.Listener
	conns  map[net.Conn]struct{}
}

// NewServer builds a listener's server. It does not listen yet.
func NewServer(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = 5 * time.Minute
	}
	if opts.DataTimeout == 0 {
		opts.DataTimeout = 10 * time.Minute
	}
	if opts.Policy == nil {
		opts.Policy = &Policy{}
	}
	opts.Policy.init()
	s := &Server{opts: opts, log: opts.Logger.With(zap.String("listener", opts.Kind.String()))}
	if opts.Queue != nil {
		s.submit = submit.New(submit.Options{
			Hostname: opts.Hostname, Queue: opts.Queue, Signer: opts.Signer,
			FixHeaders: opts.Policy.FixHeaders, MaxReceived: opts.Policy.MaxReceived,
		})
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = opts.MaxRecipients
	srv.ReadTimeout = opts.CommandTimeout
	srv.WriteTimeout = opts.CommandTimeout
	srv.ErrorLog = zapErrorLog{s.log}
	// DSN (RFC 3461): NOTIFY, RET, ENVID and ORCPT are kept with the
	// message, honoured in bounces and passed on to remotes that offer DSN.
	srv.EnableDSN = true
	// REQUIRETLS (RFC 8689): go-smtp advertises it only on a TLS
	// connection; the flag is kept with the message for delivery.
	srv.EnableREQUIRETLS = opts.TLS != nil
	if opts.Kind != Submissions {
		srv.TLSConfig = opts.TLS // offered as STARTTLS
	}
	// go-smtp would refuse AUTH on a plain connection with its own
	// "523 5.7.10"; RFC 4954 §6 names 538 5.7.11 for that case. So let the
	// command through and refuse it ourselves (Session.Auth), and advertise
	// no mechanisms before TLS (Session.AuthMechanisms).
	srv.AllowInsecureAuth = true
	s.smtp = srv
	return s
}

// Serve accepts connections on l until Shutdown. For Submissions, l is
// wrapped in TLS here. After Shutdown, Serve closes l and returns nil.
//
// Below go-smtp (and below TLS), l is wrapped in a guardListener that reads
// PROXY headers and applies the connection limits: a refused connection
// costs an accept, a few bytes and a close, never a session or a handshake.
func (s *Server) Serve(l net.Listener) error {
	tl := newGuardListener(l, s)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		tl.Close()
		return nil
	}
	s.lns = append(s.lns, tl)
	s.mu.Unlock()
	l = tl
	if s.opts.Kind == Submissions {
		l = tls.NewListener(l, s.opts.TLS)
	}
	err := s.smtp.Serve(l)
	if err == smtp.ErrServerClosed || s.isClosed() && errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown stops listening, closes the sessions that have no transaction
// open at once (and each one whose transaction ends, as it ends), and
// waits for the others to finish until ctx is done; then it closes them
// and cancels work in progress. A new MAIL meanwhile gets 421 4.3.2 (RFC
// 5321 §3.8: the server may close the channel with 421 when it must shut
// down). Nothing is lost: a session closed before its 250 has not had the
// message acknowledged, so the client still holds it and retries.
//
// Idle sessions are not waited for: a client that keeps a connection open
// between messages (a pool) would otherwise hold the shutdown for its whole
// budget, and with it the end of the deliveries in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	lns := s.lns
	s.mu.Unlock()
	// go-smtp closes only the listeners its Serve has registered; one
	// whose Serve is just starting would run on.
	for _, l := range lns {
		l.Close()
	}
	done := make(chan error, 1)
	go func() { done <- s.smtp.Shutdown(ctx) }()
	tick := time.NewTicker(shutdownSweep)
	defer tick.Stop()
	var err error
sweep:
	for {
		s.closeConns(func(c *trackedConn) bool { return !c.busy() })
		select {
		case err = <-done:
			break sweep
		case <-tick.C:
		}
	}
	s.cancel()
	if err != nil {
		// go-smtp's Close is a no-op once Shutdown has run.
		s.closeConns(func(*trackedConn) bool { return true })
	}
	return err
}

// shutdownSweep is how often Shutdown closes the sessions that have
// become idle: soon after a busy session's 250, without a hook in every
// reply.
const shutdownSweep = 50 * time.Millisecond

// draining reports whether Shutdown has begun.
func (s *Server) draining() bool { return s.isClosed() }

// closeConns closes the tracked connections that match.
func (s *Server) closeConns(match func(*trackedConn) bool) {
	s.mu.Lock()
	var conns []*trackedConn
	for c := range s.conns {
		if tc, ok := c.(*trackedConn); ok && match(tc) {
			conns = append(conns, tc)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type zapErrorLog struct{ log *zap.Logger }

func (z zapErrorLog) Printf(format string, v ...any) { z.log.Sugar().Debugf(format, v...) }
func (z zapErrorLog) Println(v ...any)               { z.log.Sugar().Debug(v...) }

package smtpd

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"postern/auth"
	"postern/queue"
	"postern/queue/message"
	"postern/relay/status"
	"postern/relay/submit"
)

// Replies postern gives, each tied to the RFC that names it.
var (
	// RFC 4954 §6: MAIL before AUTH where AUTH is required. (go-smtp's own
	// ErrAuthRequired is 502, which says "command not implemented".)
	errAuthRequired = status.New(530, 7, 0, "Authentication required")
	// RFC 4954 §6: AUTH attempted before TLS.
	errEncryptionRequired = status.New(538, 7, 11, "Encryption required for requested authentication mechanism")
	// RFC 4954 §6: bad user name or password.
	errAuthFailed = status.New(535, 7, 8, "Authentication credentials invalid")
	// RFC 4954 §6: temporary failure while checking credentials.
	errAuthTemp = status.New(454, 7, 0, "Temporary authentication failure")
	// RFC 4954 §4: AUTH is not available on this listener.
	errAuthNotOffered = status.New(502, 5, 1, "AUTH not available on this port")
	errAuthMech       = status.New(504, 5, 4, "Unrecognized authentication type")
	errAuthMalformed  = status.New(501, 5, 2, "Malformed authentication response")
	// RFC 3463 §3.8 X.7.1: delivery not authorized; RFC 5321 §3.6.2 554 at
	// MAIL and 550 at RCPT for relaying denied.
	errRelayDeniedMail = status.New(554, 7, 1, "Relay access denied")
	errRelayDeniedRcpt = status.New(550, 7, 1, "Relay access denied")
	// RFC 3463 §3.8 X.7.1 with 553 (mailbox name not allowed): the user may
	// not send as this address. No internal detail in the text.
	errSenderNotAllowed = status.New(553, 7, 1, "Sender address not allowed")
	// RFC 3463 §3.2 X.1.7 and X.1.3: bad sender / recipient syntax.
	errBadSender = status.New(501, 1, 7, "Bad sender address syntax")
	errBadRcpt   = status.New(501, 1, 3, "Bad destination mailbox address syntax")
	// RFC 3463 §3.4 X.3.1: mail system full (RFC 5321 452).
	errNoSpace = status.New(452, 3, 1, "Insufficient system storage, try again later")
	errNoMail  = status.New(503, 5, 1, "Need MAIL command first")
	// Too many failed AUTH attempts: RFC 3463 §3.8 X.7.0 with 421, after
	// which the server closes the connection (RFC 5321 §3.8).
	errAuthCooldown = status.New(421, 7, 0, "Too many failed authentications, try again later")
	// The DATA time limit passed: RFC 3463 §3.5 X.4.2 "Bad connection",
	// as go-smtp's own idle timeout reply, and the channel closes.
	errDataTimeout = status.New(421, 4, 2, "Timeout during DATA, closing connection")
	// RFC 8689 §4.1 needs REQUIRETLS over TLS; RFC 3463 (RFC 5248)
	// X.7.10 "Encryption Needed".
	errRequireTLSPlain = status.New(530, 7, 10, "REQUIRETLS needs a TLS session: use STARTTLS first")
	// RFC 5321 §3.8 and RFC 3463 §3.4 X.3.2 "System not accepting network
	// messages": the server is shutting down.
	errShuttingDown = status.New(421, 3, 2, "Server shutting down, try again later")
	// The suppression list could not be read: RFC 3463 §3.4 X.3.0 with
	// 451, so the client retries later.
	errSuppressionsUnavailable = status.New(451, 3, 0, "Temporary local problem, try again later")
)

type session struct {
	srv  *Server
	conn *smtp.Conn
	tc   *trackedConn // nil only for connections not from Serve (tests)
	log  *zap.Logger
	ip   netip.Addr // the client's, from the PROXY header when there is one

	user *auth.User // nil until AUTH succeeds
	// plainAtStart: the session began before TLS (go-smtp makes a new one
	// after STARTTLS), so a Logout that finds TLS on is STARTTLS's.
	plainAtStart bool

	from    string
	hasMAIL bool
	rcpts   []string
	// REQUIRETLS (RFC 8689 §4.1) was given with MAIL.
	requireTLS bool
	// DSN parameters (RFC 3461), kept for the queue's bounces.
	ret, envID string
	dsn        []queue.RcptDSN
	anyDSN     bool
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	ip := remoteIP(c.Conn().RemoteAddr())
	_, isTLS := c.TLSConnectionState()
	return &session{
		srv:          s,
		conn:         c,
		tc:           trackedOf(c.Conn()),
		ip:           ip,
		log:          s.log.With(zap.Stringer("client_ip", ip)),
		plainAtStart: !isTLS,
	}, nil
}

func (s *session) policy() *Policy { return s.srv.opts.Policy }

// closeAfterReply makes the next reply the session's last (421 and 521
// replies, RFC 5321 §3.8: the server closes the channel after them).
func (s *session) closeAfterReply() {
	if s.tc != nil {
		s.tc.closeAfterReply()
	}
}

// clientKey is the client's network as the limits and the AUTH throttle
// count it.
func (s *session) clientKey() string { return clientKey(s.ip).String() }

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (s *session) isTLS() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}

func (s *session) trusted() bool { return inPrefixes(s.ip, s.srv.opts.Trusted) }

// AuthMechanisms advertises AUTH only on submission listeners and only
// over TLS (RFC 4954 §4: no plaintext passwords on an unprotected wire).
func (s *session) AuthMechanisms() []string {
	if s.srv.opts.Kind == TrustedRelay || !s.isTLS() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.opts.Kind == TrustedRelay {
		return nil, s.reply(errAuthNotOffered, 0)
	}
	if !s.isTLS() {
		return nil, s.reply(errEncryptionRequired, 0)
	}
	// A network in its cool-down is refused before it sends credentials.
	if v := s.policy().AuthThrottle.Check(s.clientKey(), ""); v.Refuse {
		return nil, s.reply(s.authRefused("", v), 0)
	}
	switch mech {
	case sasl.Plain:
		return saslReplies{auth.NewPlainServer(s.authenticate), s}, nil
	case sasl.Login:
		return saslReplies{auth.NewLoginServer(s.authenticate), s}, nil
	}
	return nil, s.reply(errAuthMech, 0)
}

// saslReplies gives every SASL error its RFC 4954 §6 reply: go-smtp would
// send any other error's raw text with 454.
// It is also where every outcome of the exchange is reported to the
// Observer, once.
type saslReplies struct {
	sasl.Server
	s *session
}

func (r saslReplies) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := r.Server.Next(response)
	if err == nil {
		if done {
			r.s.srv.opts.Observer.Reply(235)
		}
		return challenge, done, nil
	}
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		// already a reply (from authenticate)
	case errors.Is(err, auth.ErrMalformedResponse):
		se = errAuthMalformed.SMTP()
	case errors.Is(err, auth.ErrAuthzidMismatch), errors.Is(err, auth.ErrInvalidCredentials):
		se = errAuthFailed.SMTP()
	default:
		se = errAuthTemp.SMTP()
	}
	if se.Code == errAuthFailed.Code {
		r.s.srv.opts.Observer.AuthFailure()
	}
	r.s.srv.opts.Observer.Reply(se.Code)
	return nil, false, se
}

// authRefused logs the one line per refused attempt that fail2ban matches
// (README "Security": `auth refused.*"client_ip": ?"<HOST>"`) and returns
// the 421 that ends the session.
func (s *session) authRefused(name string, v auth.Verdict) *status.Error {
	s.log.Warn("auth refused", zap.String("username", name), zap.String("by", v.By),
		zap.Duration("retry_after", v.RetryAfter.Round(time.Second)))
	s.closeAfterReply()
	return errAuthCooldown
}

func (s *session) authenticate(name, password string) error {
	th := s.policy().AuthThrottle
	client := s.clientKey()
	v := th.Check(client, name)
	if v.Refuse {
		return s.authRefused(name, v).SMTP()
	}
	if v.Delay > 0 {
		// Before the check, so that the delay says nothing about the
		// answer (see auth.Throttle).
		s.log.Warn("auth delayed", zap.String("username", name), zap.String("by", v.By), zap.Duration("delay", v.Delay))
		t := time.NewTimer(v.Delay)
		select {
		case <-t.C:
		case <-s.srv.ctx.Done():
			t.Stop()
			return errAuthTemp.SMTP()
		}
	}
	u, err := s.srv.opts.Auth.Authenticate(s.srv.ctx, name, password)
	switch {
	case err == nil:
		th.Success(client, name)
		s.user = u
		s.log = s.log.With(zap.String("user", u.Name))
		s.log.Info("authenticated")
		return nil
	case errors.Is(err, auth.ErrInvalidCredentials):
		th.Failure(client, name)
		// The name is what the client typed: log it (for fail2ban), never
		// the password.
		s.log.Warn("authentication failed", zap.String("username", name))
		return errAuthFailed.SMTP()
	case errors.Is(err, auth.ErrBusy):
		// Every password check slot stayed taken: nothing was checked, so
		// it is no failed guess for the throttle, and the client may try
		// again (RFC 4954 §6: 454 is a temporary authentication failure).
		s.log.Warn("auth busy", zap.String("username", name))
		return errAuthTemp.SMTP()
	default:
		s.log.Error("authentication error", zap.Error(err))
		return errAuthTemp.SMTP()
	}
}

// reply is the choke point for the replies the session decides: it counts
// the reply and turns err into the bare *smtp.SMTPError go-smtp needs (nil
// means go-smtp's own success reply, okCode).
func (s *session) reply(err error, okCode int) error {
	if err == nil {
		s.srv.opts.Observer.Reply(okCode)
		return nil
	}
	e := status.ToSMTP(err).(*smtp.SMTPError) // the choke point
	s.srv.opts.Observer.Reply(e.Code)
	return e
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if opts != nil && opts.RequireTLS && !s.isTLS() {
		// go-smtp takes the parameter on any connection once enabled;
		// RFC 8689 §4.1 makes it a promise about TLS, which a
		// plain-text session cannot begin to keep.
		return s.reply(errRequireTLSPlain, 0)
	}
	if err := s.mail(from); err != nil {
		return s.reply(err, 250)
	}
	if opts != nil {
		s.ret, s.envID = string(opts.Return), opts.EnvelopeID
		s.requireTLS = opts.RequireTLS
	}
	if s.tc != nil {
		s.tc.setInTx(true)
	}
	return s.reply(nil, 250)
}

func (s *session) mail(from string) error {
	if s.srv.draining() {
		s.closeAfterReply()
		return errShuttingDown
	}
	switch s.srv.opts.Kind {
	case Submission, Submissions:
		if s.user == nil {
			return errAuthRequired
		}
	case TrustedRelay:
		if !s.trusted() {
			s.log.Warn("relay denied", zap.String("from", from))
			return errRelayDeniedMail
		}
	}
	if from != "" { // "" is the null reverse-path <> (RFC 5321 §4.5.5)
		a, err := submit.ParseAddress(from)
		if err != nil {
			return errBadSender.With(err)
		}
		from = a.String()
	}
	if s.user != nil && !s.user.MaySendAs(from) {
		s.log.Warn("sender not allowed", zap.String("from", from))
		return errSenderNotAllowed
	}
	pol := s.policy()
	if s.srv.opts.Kind == TrustedRelay && len(pol.RelaySenderDomains) > 0 && from != "" {
		if _, dom, _ := strings.Cut(from, "@"); !submit.DomainIn(dom, pol.RelaySenderDomains) {
			s.log.Warn("sender domain not allowed on the relay listener", zap.String("from", from))
			return errSenderNotAllowed
		}
	}
	// The message is counted here, so that a user over the limit hears it
	// before sending the body.
	if s.user != nil {
		if wait := pol.users.take(s.srv.ctx, s.user.Name, false, time.Now()); wait > 0 {
			s.log.Warn("message rate limit", zap.Duration("wait", wait))
			return rateLimited("Message", pol.UserMessages, wait)
		}
	}
	s.from, s.hasMAIL = from, true
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := s.rcpt(to); err != nil {
		return s.reply(err, 250)
	}
	var d queue.RcptDSN
	if opts != nil {
		for _, n := range opts.Notify {
			d.Notify = append(d.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			d.ORcpt = strings.ToLower(string(opts.OriginalRecipientType)) + ";" + opts.OriginalRecipient
		}
	}
	s.dsn = append(s.dsn, d)
	s.anyDSN = s.anyDSN || len(d.Notify) > 0 || d.ORcpt != ""
	return s.reply(nil, 250)
}

func (s *session) rcpt(to string) error {
	if !s.hasMAIL {
		return errNoMail
	}
	// Checked again here so that no path to a recipient skips the relay
	// decision, whatever MAIL did.
	if s.srv.opts.Kind == TrustedRelay && !s.trusted() {
		return errRelayDeniedRcpt
	}
	if (s.srv.opts.Kind == Submission || s.srv.opts.Kind == Submissions) && s.user == nil {
		return errAuthRequired
	}
	a, err := submit.ParseAddress(to)
	if err != nil {
		return errBadRcpt.With(err)
	}
	pol := s.policy()
	if s.srv.opts.Kind == TrustedRelay && len(pol.RelayRecipientDomains) > 0 && !submit.DomainIn(a.Domain, pol.RelayRecipientDomains) {
		s.log.Warn("recipient domain not allowed on the relay listener", zap.String("rcpt", a.String()))
		return errRelayDeniedRcpt
	}
	if err := s.checkSuppressed(a.String()); err != nil {
		return err
	}
	if s.user != nil {
		if wait := pol.users.take(s.srv.ctx, s.user.Name, true, time.Now()); wait > 0 {
			s.log.Warn("recipient rate limit", zap.Duration("wait", wait))
			return rateLimited("Recipient", pol.UserRecipients, wait)
		}
	}
	s.rcpts = append(s.rcpts, a.String())
	return nil
}

// checkSuppressed refuses rcpt when the sending user's mail is no longer
// sent to it. Checked before the recipient rate limit: a refused recipient
// costs the user nothing.
func (s *session) checkSuppressed(rcpt string) error {
	if s.srv.opts.Suppressions == nil {
		return nil
	}
	var user string
	if s.user != nil {
		user = s.user.Name
	}
	sup, err := s.srv.opts.Suppressions.Suppressed(user, rcpt)
	if err != nil {
		return errSuppressionsUnavailable.With(err)
	}
	if sup == nil {
		return nil
	}
	s.log.Info("recipient suppressed", zap.String("rcpt", rcpt), zap.String("reason", sup.Reason),
		zap.Time("since", sup.Created))
	return suppressedError(sup)
}

// suppressedError is the RCPT reply for a suppressed recipient: RFC 3463
// §3.2 X.1.1 "Bad destination mailbox address" with 550 (RFC 5321
// §4.2.2, mailbox unavailable), the answer the remote itself gave or
// would give. The text says since when and why, in words a sender can act
// on (an operator removes the suppression), and nothing internal: not the
// remote's reply text, not a queue ID.
func suppressedError(sup *queue.Suppression) *status.Error {
	why := "by an operator"
	switch sup.Reason {
	case queue.SuppressBounce:
		why = "after a permanent failure"
		if e := sup.Reply.Enhanced; e.Valid() {
			why += " (" + e.String() + ")"
		}
	case queue.SuppressComplaint:
		why = "after a spam complaint"
	}
	return status.New(550, 1, 1, "Recipient address suppressed since "+
		sup.Created.UTC().Format(time.DateOnly)+" "+why+": mail to it is not sent")
}

func (s *session) Data(r io.Reader) error {
	if s.tc != nil {
		s.tc.beginData(time.Now().Add(s.srv.opts.DataTimeout))
	}
	id, size, err := s.data(r)
	if s.tc != nil {
		s.tc.endData(err == nil, s.srv.opts.IdleTimeout)
	}
	if err != nil {
		st := status.From(err)
		if st.Err != nil || st.Code/100 == 4 {
			s.log.Warn("message refused", zap.Int("code", st.Code), zap.Error(err))
		}
		return s.reply(st, 0)
	}
	// The session's logger already carries client_ip and, after AUTH, user.
	s.log.Info("accepted",
		zap.String("id", id),
		zap.String("from", s.from),
		zap.Int("rcpts", len(s.rcpts)),
		zap.Int64("size", size))
	s.srv.opts.Observer.Accepted(s.srv.opts.Kind.String(), size)
	// go-smtp writes a bare *SMTPError as the reply: this is how the 250
	// carries the queue ID.
	return s.reply(&smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}, 0)
}

func (s *session) data(r io.Reader) (id string, size int64, err error) {
	if !s.hasMAIL || len(s.rcpts) == 0 {
		return "", 0, errNoMail
	}
	// The message streams from the client to the queue through the
	// submission pipeline (relay/submit): only its header section is held
	// in memory, and a client that disconnects mid-DATA, or an error on
	// the way, leaves nothing in the queue. Bare CR and LF are refused or
	// turned into CRLF on the way in (newline.go), so nothing postern
	// sends contains one.
	if s.tc != nil {
		r = &cutGuard{r: r, cut: s.tc.readFailed.Load}
	}
	pol := s.policy()
	var in io.Reader
	if pol.ForbidBareNewline && !inPrefixes(s.ip, pol.BareNewlineExclusions) {
		in = &bareNewlineGuard{r: r}
	} else {
		cr := message.NewCRLFReader(r)
		defer cr.Release()
		in = cr
	}
	// Nothing reads the buffer once Submit returns (the queue has read
	// the body to its end or given up, and the signer has ended).
	br := submit.Readers.Get().(*bufio.Reader)
	br.Reset(in)
	defer func() { br.Reset(nil); submit.Readers.Put(br) }()

	env := &queue.Envelope{
		From:     s.from,
		Rcpts:    append([]string(nil), s.rcpts...),
		ClientIP: s.ip.String(),
		Listener: s.srv.opts.Kind.String(),
		Ret:      s.ret,
		EnvID:    s.envID,

		RequireTLS: s.requireTLS,
	}
	if s.anyDSN {
		env.DSN = append([]queue.RcptDSN(nil), s.dsn...)
	}
	proto := "ESMTP"
	o := &submit.Origin{IP: s.ip, Helo: s.conn.Hostname()}
	if st, ok := s.conn.TLSConnectionState(); ok {
		o.TLS = &st
		proto += "S"
	}
	if s.user != nil {
		env.User = s.user.Name
		proto += "A"
		o.User, o.CheckHeaderFrom = s.user, pol.checksHeaderFrom(s.srv.opts.Kind)
	}
	o.Protocol = proto
	id, size, err = s.srv.submit.Submit(s.srv.ctx, env, o, br)
	if rj, ok := errors.AsType[*submit.Rejected](err); ok && rj.From != nil {
		s.log.Warn("header sender not allowed", zap.Strings("from", rj.From), zap.Strings("sender", rj.Sender), zap.Error(rj.Status.Err))
	}
	if err != nil {
		return "", 0, s.dataError(err)
	}
	return id, size, nil
}

// dataError gives an error met while reading or queueing a message its
// reply.
func (s *session) dataError(err error) error {
	switch {
	case errors.Is(err, errBareFound):
		// go-smtp reads the rest of the DATA before it replies, so the
		// client hears the 521; then the connection closes.
		s.closeAfterReply()
		return errBareNewline.With(err)
	case errors.Is(err, smtp.ErrTooLongLine):
		// go-smtp stops reading and closes after this reply: a
		// permanent one, so that the client does not send the same
		// message again and again.
		s.closeAfterReply()
		return errLineTooLong.With(err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EDQUOT):
		return errNoSpace.With(err)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		// The DATA (or idle) limit passed mid-transfer: the client is too
		// slow to keep the connection.
		s.closeAfterReply()
		return errDataTimeout.With(err)
	}
	return err // go-smtp's ErrDataTooLarge is a 552 5.3.4 SMTPError; others become 451 4.3.0
}

var (
	// RFC 5321 §4.5.3.1.6 allows 1,000 octets a line; go-smtp reads up
	// to 2,000. RFC 3463 X.6.0: a message content problem.
	errLineTooLong = status.New(554, 6, 0, "Message line too long")
)

func (s *session) Reset() {
	if s.tc != nil {
		s.tc.setInTx(false)
	}
	s.from, s.hasMAIL, s.rcpts = "", false, nil
	s.ret, s.envID, s.dsn, s.anyDSN = "", "", nil, false
	s.requireTLS = false
}

// Logout is called by go-smtp when the connection ends, and also right
// after a successful STARTTLS handshake, before the client's next command.
//
// That second moment is where a 40 ms stall was: in TLS 1.3 the server's
// last handshake message (Finished) comes before the client's, and Go's
// server then writes nothing until the client's next command. The
// client's Finished is left to the kernel's delayed acknowledgement
// (about 40 ms on Linux), and a client that does not set TCP_NODELAY
// (Python's smtplib, and most others) holds its EHLO back under Nagle's
// algorithm until that acknowledgement comes. Postfix happens to write a
// session ticket after the client's Finished, which acknowledges it at
// once. Here the pending acknowledgement is sent at once instead (ackNow):
// EHLO after STARTTLS is answered in well under a millisecond.
func (s *session) Logout() error {
	if s.tc != nil && s.plainAtStart && s.isTLS() {
		ackNow(s.tc.Conn) // this session began in plain text: STARTTLS just ended
	}
	return nil
}

// Compile-time checks that session has the methods go-smtp looks for.
var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// cutGuard turns the end of a message body into io.ErrUnexpectedEOF when
// the connection failed while it was read. go-smtp ends a BDAT chunk cut
// off by the client's disconnection as if it were complete (it copies
// the chunk through an io.LimitReader, for which the connection's EOF is
// no error, and closes the body with the LAST chunk), so without this a
// client that died in the middle of "BDAT n LAST" would have its partial
// message queued and delivered. DATA needs no guard (go-smtp's DATA
// reader reports a missing end-of-data line), and a complete chunk never
// reads past its last byte, so cut is only true here for a cut chunk.
type cutGuard struct {
	r   io.Reader
	cut func() bool
}

func (g *cutGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if err == io.EOF && g.cut() {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

package bounces

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"postern/queue"
	"postern/relay/status"
)

// Queue is what the intake needs of the queue; *queue.Queue implements
// it. Trace returns an error wrapping queue.ErrNotFound for a message it
// has no trace of (never traced, or kept past its time). RecordFeedback
// commits the events and suppressions together before it returns.
type Queue interface {
	Trace(id string) (*queue.Trace, error)
	RecordFeedback(evs []queue.Event, sups []queue.Suppression) error
}

var _ Queue = (*queue.Queue)(nil)

// Replies of listen.mx, each tied to its RFC.
var (
	// RFC 5321 §3.6.2 / RFC 3463 X.7.1: any domain but the bounce
	// domain is a relay attempt.
	errRelayDenied = status.New(550, 7, 1, "Relaying denied: this server accepts mail for its bounce domain only")
	// RFC 3463 X.1.1: at the bounce domain, but no token this server
	// made, or one whose message it no longer knows.
	errNoMailbox = status.New(550, 1, 1, "No such mailbox")
	// RFC 3463 X.3.0 with 451: a local failure; the remote retries.
	errLocal = status.New(451, 3, 0, "Temporary local problem, try again later")
)

// MXOptions configure the listen.mx server.
type MXOptions struct {
	Hostname string // EHLO greeting
	Tokens   *Tokens
	Queue    Queue
	// TLS, when set, is offered as STARTTLS.
	TLS *tls.Config
	// MaxMessageBytes bounds a report (one with RET=FULL carries the
	// whole original); more gets 552.
	MaxMessageBytes int64
	Logger          *zap.Logger
}

// MX is the listen.mx SMTP server: it accepts reports for the bounce
// domain's return paths, records what they say, and keeps nothing else.
type MX struct {
	opts MXOptions
	smtp *smtp.Server
	log  *zap.Logger
}

// NewMX builds the server; Serve runs it.
func NewMX(opts MXOptions) *MX {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	m := &MX{opts: opts, log: opts.Logger.With(zap.String("listener", "mx"))}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &mxSession{mx: m, log: m.log.With(zap.String("client", c.Conn().RemoteAddr().String()))}, nil
	}))
	s.Domain = opts.Hostname
	s.MaxMessageBytes = opts.MaxMessageBytes
	s.MaxRecipients = 50
	// A report is small and sent by an MTA: no reason to wait long.
	s.ReadTimeout, s.WriteTimeout = 2*time.Minute, 2*time.Minute
	s.TLSConfig = opts.TLS // STARTTLS offered when set
	s.ErrorLog = zapLog{m.log}
	// No AUTH: the session does not implement smtp.AuthSession, so
	// nothing is advertised and AUTH is refused.
	m.smtp = s
	return m
}

// Serve accepts connections on l until Shutdown.
func (m *MX) Serve(l net.Listener) error {
	err := m.smtp.Serve(l)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets transactions in progress finish until
// ctx ends, then closes what is left.
func (m *MX) Shutdown(ctx context.Context) error {
	err := m.smtp.Shutdown(ctx)
	if err != nil {
		m.smtp.Close()
	}
	return err
}

type zapLog struct{ l *zap.Logger }

func (z zapLog) Printf(format string, v ...any) { z.l.Debug(fmt.Sprintf(format, v...)) }
func (z zapLog) Println(v ...any)               { z.l.Debug(fmt.Sprint(v...)) }

// target is one accepted recipient: the token and what the queue kept.
type target struct {
	addr  string
	tok   Token
	trace *queue.Trace
}

type mxSession struct {
	mx      *MX
	log     *zap.Logger
	from    string
	targets []target
}

func (s *mxSession) reply(err error) error {
	if err == nil {
		return nil
	}
	return status.ToSMTP(err)
}

func (s *mxSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.targets = from, nil
	return nil
}

func (s *mxSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	return s.reply(s.rcpt(to))
}

func (s *mxSession) rcpt(to string) error {
	tok, err := s.mx.opts.Tokens.Parse(to)
	switch {
	case errors.Is(err, ErrNotBounceDomain):
		s.log.Info("mx: recipient refused: not the bounce domain", zap.String("rcpt", to))
		return errRelayDenied
	case err != nil:
		s.log.Info("mx: recipient refused: bad token", zap.String("rcpt", to), zap.Error(err))
		return errNoMailbox
	}
	tr, err := s.mx.opts.Queue.Trace(tok.QueueID)
	if errors.Is(err, queue.ErrNotFound) {
		s.log.Info("mx: recipient refused: message no longer known", zap.String("rcpt", to), zap.String("id", tok.QueueID))
		return errNoMailbox
	}
	if err != nil {
		return errLocal.With(err)
	}
	for _, t := range s.targets {
		if t.tok == tok {
			// The same return path twice: one report, recorded once.
			return nil
		}
	}
	s.targets = append(s.targets, target{addr: to, tok: tok, trace: tr})
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	if len(s.targets) == 0 {
		return s.reply(status.New(503, 5, 1, "Need RCPT command first"))
	}
	cr := &readErr{r: r}
	rep, err := ParseReport(cr)
	// Read what the parser left (an epilogue, parts after the limits),
	// so go-smtp sees the whole DATA; an error reading it (the size
	// limit, a broken connection) is the reply, whatever the parser
	// made of the part it got.
	io.Copy(io.Discard, cr)
	if cr.err != nil {
		return s.reply(cr.err)
	}
	if err != nil {
		// Accepted and dropped: refusing would have the sender's MTA
		// bounce a bounce, which goes nowhere. The log keeps why.
		s.log.Warn("mx: message is not a report we can read; dropped", zap.String("from", s.from), zap.Error(err))
		return nil
	}
	var evs []queue.Event
	var sups []queue.Suppression
	for _, t := range s.targets {
		e, sp := feedback(t, rep, s.log)
		evs, sups = append(evs, e...), append(sups, sp...)
	}
	if len(evs) == 0 {
		s.log.Info("mx: report without a failure or complaint for our messages; nothing recorded", zap.String("from", s.from))
		return nil
	}
	if err := s.mx.opts.Queue.RecordFeedback(evs, sups); err != nil {
		s.log.Error("mx: recording a report", zap.Error(err))
		return s.reply(errLocal.With(err))
	}
	for _, e := range evs {
		s.log.Info("mx: "+string(e.Type), zap.String("id", e.QueueID), zap.String("rcpt", e.Recipient),
			zap.String("reply", e.Reply.String()), zap.String("feedback_type", e.FeedbackType),
			zap.Bool("suppressed", suppressedIn(sups, e)))
	}
	return nil
}

// readErr remembers the first error other than EOF its reader gave.
type readErr struct {
	r   io.Reader
	err error
}

func (c *readErr) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

func (s *mxSession) Reset()        { s.from, s.targets = "", nil }
func (s *mxSession) Logout() error { return nil }

func suppressedIn(sups []queue.Suppression, e queue.Event) bool {
	for _, s := range sups {
		if s.QueueID == e.QueueID && strings.EqualFold(s.Address, e.Recipient) {
			return true
		}
	}
	return false
}

// feedback turns what rep says about t's message into events and
// suppressions.
func feedback(t target, rep *Report, log *zap.Logger) ([]queue.Event, []queue.Suppression) {
	tr := t.trace
	base := queue.Event{QueueID: tr.QueueID, MessageID: tr.MessageID, User: tr.User, Tags: tr.Tags, Metadata: tr.Metadata}
	var evs []queue.Event
	var sups []queue.Suppression
	if rep.Feedback != nil {
		rcpt := recipientOf(t, rep.Feedback.OriginalRcptTo...)
		e := base
		e.Type, e.Recipient, e.FeedbackType = queue.EventComplained, rcpt, rep.Feedback.Type
		evs = append(evs, e)
		// not-spam undoes nothing here and auth-failure is about the
		// sender's DKIM or SPF, not the recipient's wishes.
		if rcpt != "" && rep.Feedback.Type != "not-spam" && rep.Feedback.Type != "auth-failure" {
			sups = append(sups, queue.Suppression{User: tr.User, Address: rcpt, Reason: queue.SuppressComplaint, QueueID: tr.QueueID})
		}
		return evs, sups
	}
	for _, rs := range rep.DSN {
		if rs.Action != "failed" {
			continue // delayed, delivered, relayed, expanded: nothing has failed
		}
		rcpt := recipientOf(t, rs.FinalRecipient, rs.OriginalRecipient)
		if rcpt == "" {
			log.Info("mx: failed recipient not among the message's", zap.String("id", tr.QueueID),
				zap.String("final_recipient", rs.FinalRecipient))
			continue
		}
		e := base
		e.Type, e.Recipient, e.Reply, e.RemoteMTA = queue.EventBounced, rcpt, rs.Reply, rs.RemoteMTA
		evs = append(evs, e)
		if queue.AddressGone(rs.Reply) {
			sups = append(sups, queue.Suppression{User: tr.User, Address: rcpt, Reason: queue.SuppressBounce,
				Reply: rs.Reply, QueueID: tr.QueueID})
		}
		if t.tok.Rcpt >= 0 {
			break // the token names one recipient: one failure is all it can have
		}
	}
	return evs, sups
}

// recipientOf is the recipient of t's message a report is about: the
// one the token names, else the first of named (addresses from the
// report) that is one of the message's recipients; "" when none is. A
// single-recipient message needs no name.
func recipientOf(t target, named ...string) string {
	rcpts := t.trace.Rcpts
	if t.tok.Rcpt >= 0 && t.tok.Rcpt < len(rcpts) {
		return rcpts[t.tok.Rcpt]
	}
	for _, n := range named {
		for _, r := range rcpts {
			if n != "" && strings.EqualFold(n, r) {
				return r
			}
		}
	}
	if len(rcpts) == 1 {
		return rcpts[0]
	}
	return ""
}

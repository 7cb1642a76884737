package pickup

import (
	"fmt"
	"io"
	"strings"

	"postern/relay/status"
	"postern/relay/submit"
)

// Limits are the relay listener's rules that a dropped message must pass
// as well, so that the maildrop is no way around them. The zero value
// checks nothing.
type Limits struct {
	// MaxMessageBytes is limits.max_message_size; 0: no limit.
	MaxMessageBytes int64
	// MaxRecipients is limits.max_recipients; 0: no limit.
	MaxRecipients int
	// SenderDomains and RecipientDomains are relay.allowed_sender_domains
	// and relay.allowed_recipient_domains; empty allows any.
	SenderDomains, RecipientDomains []string
}

// Refusals of the pickup, as the relay listener gives them where it has
// the same reason. Each is permanent: a drop is not sent again by anyone,
// so a refusal that waiting cannot cure must not leave it to be tried
// every second.
var (
	// RFC 3463 §3.4 X.3.4: message too big for system.
	ErrTooLarge = status.New(552, 3, 4, "Message size exceeds fixed maximum message size")
	// RFC 3463 §3.6 X.5.3: too many recipients. The relay listener says
	// 452 and lets the client send the rest in another transaction; a
	// drop has no other transaction.
	ErrTooManyRcpts = status.New(554, 5, 3, "Too many recipients")
	// RFC 3463 §3.8 X.7.1, as the relay listener's 553 at MAIL and 550 at
	// RCPT for domains relay.allowed_*_domains leave out.
	ErrSenderNotAllowed = status.New(553, 7, 1, "Sender address not allowed")
	ErrRcptNotAllowed   = status.New(550, 7, 1, "Relay access denied")
	// RFC 5321 §4.5.3.1.6 allows 1,000 octets a line; the relay listener
	// reads up to 2,000 (go-smtp), and so does the pickup. X.6.0: a
	// message content problem.
	ErrLineTooLong = status.New(554, 6, 0, "Message line too long")
)

// maxLine is the longest line, CRLF included, the pickup lets through:
// what go-smtp's DATA reader allows on the relay listener.
const maxLine = 2000

// Check applies the envelope rules to d. Its error holds one of the
// statuses above (status.From finds it) and matches ErrSender or ErrRcpt,
// whichever is to blame.
func (l Limits) Check(d *Drop) error {
	if l.MaxRecipients > 0 && len(d.Rcpts) > l.MaxRecipients {
		return fmt.Errorf("%w: %w", ErrRcpt, ErrTooManyRcpts.With(fmt.Errorf("%d recipients, limits.max_recipients is %d", len(d.Rcpts), l.MaxRecipients)))
	}
	if len(l.SenderDomains) > 0 && d.From != "" {
		if _, dom, _ := strings.Cut(d.From, "@"); !submit.DomainIn(dom, l.SenderDomains) {
			return fmt.Errorf("%w: %w", ErrSender, ErrSenderNotAllowed.With(fmt.Errorf("<%s>: domain not in relay.allowed_sender_domains", d.From)))
		}
	}
	if len(l.RecipientDomains) > 0 {
		for _, r := range d.Rcpts {
			if _, dom, _ := strings.Cut(r, "@"); !submit.DomainIn(dom, l.RecipientDomains) {
				return fmt.Errorf("%w: %w", ErrRcpt, ErrRcptNotAllowed.With(fmt.Errorf("<%s>: domain not in relay.allowed_recipient_domains", r)))
			}
		}
	}
	return nil
}

// CheckMessage reads msg (with CRLF line ends, as the pickup passes it
// on) to its end and returns ErrTooLarge or ErrLineTooLong if the pickup
// would refuse it for its size or a line's length, else msg's read error
// or nil. sendmail calls it before it leaves a message in the maildrop,
// so that what it leaves there is not refused later, unseen.
func (l Limits) CheckMessage(msg io.Reader) error {
	_, err := io.Copy(io.Discard, &guard{r: msg, max: l.MaxMessageBytes})
	return err
}

// guard passes a message through while it holds to the relay listener's
// limits: at most max bytes (0: any) and lines of at most maxLine octets.
type guard struct {
	r    io.Reader
	max  int64
	n    int64
	line int // octets of the current line so far
}

func (g *guard) Read(b []byte) (int, error) {
	n, err := g.r.Read(b)
	for _, c := range b[:n] {
		g.line++
		if g.line > maxLine {
			return 0, ErrLineTooLong.With(fmt.Errorf("a line of more than %d octets", maxLine))
		}
		if c == '\n' {
			g.line = 0
		}
	}
	g.n += int64(n)
	if g.max > 0 && g.n > g.max {
		return 0, ErrTooLarge.With(fmt.Errorf("more than %d bytes, limits.max_message_size", g.max))
	}
	return n, err
}

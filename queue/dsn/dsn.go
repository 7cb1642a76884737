// Package dsn composes delivery status notifications: the bounces, delay
// warnings and success reports of RFC 3461 (SMTP DSN extension), RFC 3462
// (multipart/report, since RFC 6522) and RFC 3464 (message/delivery-status).
//
// It is a pure composer: it knows nothing of queues or SMTP sessions. The
// caller describes what happened in a Report and Compose writes the
// notification as a complete message with CRLF line ends, ready to be
// queued with the null reverse-path (RFC 5321 §4.5.5) and the original
// sender as its only recipient.
//
// Everything a remote server or a submitter wrote (replies, addresses,
// envelope ids) is sanitised before it reaches a header field: no control
// characters, no 8-bit bytes, and lines folded below the 998-octet limit of
// RFC 5322 §2.1.1. Compose may be given anything; it never writes a bare
// CR or LF.
package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"postern/queue/message"
	"postern/queue/reply"
)

// Action is the per-recipient Action field (RFC 3464 §2.3.3).
type Action string

const (
	Failed    Action = "failed"    // could not be delivered; no further attempts
	Delayed   Action = "delayed"   // not delivered yet; still being retried
	Delivered Action = "delivered" // delivered to the recipient's mailbox
	// Relayed means the message was handed to a server that did not take
	// over DSN responsibility (RFC 3461 §6.2.2.2): no further report of
	// success or failure will follow.
	Relayed Action = "relayed"
	// Expanded means delivered to a list or alias that expanded it (§2.3.3).
	Expanded Action = "expanded"
)

// class is the status class digit an action implies (RFC 3464 §2.3.4:
// the status code "MUST" be consistent with the Action).
func (a Action) class() int {
	switch a {
	case Failed:
		return 5
	case Delayed:
		return 4
	}
	return 2
}

// Return says what of the original message goes into the third part
// (RFC 3461 §4.3, the RET parameter).
type Return int

const (
	// Headers returns only the header section as text/rfc822-headers. It
	// is the default, also when RET was not given: a bounce should not
	// carry a second copy of a large message unasked.
	Headers Return = iota
	// Full returns the whole message as message/rfc822 (RET=FULL).
	Full
)

// Report describes one notification: one original message and the
// recipients being reported on in this step. The zero values of Date,
// MessageID and Boundary are filled in by Compose; everything else that is
// empty is left out of the notification.
type Report struct {
	// ReportingMTA is this server's host name: the Reporting-MTA field
	// and the domain of MAILER-DAEMON in From. Required.
	ReportingMTA string
	// Sender is the original envelope sender, the notification's To.
	Sender string
	// Date is when the notification is made (default time.Now).
	Date time.Time
	// MessageID is the notification's Message-ID without angle brackets
	// (default: random, at ReportingMTA).
	MessageID string
	// Boundary separates the MIME parts (default: random). Tests fix it.
	Boundary string

	// EnvelopeID is the ENVID parameter of the original MAIL FROM, decoded
	// (RFC 3461 §4.4); "" leaves Original-Envelope-Id out.
	EnvelopeID string
	// ArrivalDate is when the original message was accepted.
	ArrivalDate time.Time

	// Recipients are the recipients reported on; at least one.
	Recipients []Recipient

	// Return selects how much of the original is returned.
	Return Return
	// Original is the original message as stored, CRLF line ends. Nil
	// leaves the third part out. For Headers only the header section is
	// read.
	Original io.Reader
}

// Recipient is one per-recipient block of the delivery-status part.
type Recipient struct {
	// OriginalRecipient is the ORCPT parameter as "type;address" (RFC 3461
	// §4.2), "" if none was given.
	OriginalRecipient string
	// FinalRecipient is the address the delivery was attempted for.
	FinalRecipient string
	Action         Action
	// Status is the enhanced status code reported. The zero value means
	// derived: the enhanced code of Reply when its class fits Action,
	// otherwise X.0.0 of Action's class (5.0.0, 4.0.0, 2.0.0).
	Status reply.Enhanced
	// RemoteMTA is the host that gave Reply, "" if none did.
	RemoteMTA string
	// Reply is the remote's reply (550, 5.1.1, "<b@x>: no such user"),
	// the Diagnostic-Code of type "smtp"; or, with no reply code, a local
	// explanation (a DNS failure, an expiry), of type "X-Postern". Zero
	// leaves Diagnostic-Code out.
	Reply reply.Reply
	// LastAttempt is the time of the last delivery attempt (zero: none).
	LastAttempt time.Time
	// WillRetryUntil is when attempts stop, for Delayed (zero: left out).
	WillRetryUntil time.Time
}

// Errors for a Report that cannot be composed. Nothing in a remote reply or
// an address leads to one: those are sanitised instead.
var (
	ErrNoRecipients = errors.New("dsn: report has no recipients")
	ErrNoHostname   = errors.New("dsn: report has no ReportingMTA")
	ErrBadStatus    = errors.New("dsn: malformed status code")
	ErrBadAction    = errors.New("dsn: unknown action")
	ErrBadBoundary  = errors.New("dsn: unusable boundary")
)

const (
	// foldAt is where header lines are folded when a space allows it: the
	// 78 characters RFC 5322 §2.1.1 recommends.
	foldAt = 78
	// hardLimit bounds any line we write, below the 998 octets RFC 5322
	// §2.1.1 allows: a longer word is split with a folding space.
	hardLimit = 900
	// maxDiagnostic bounds a quoted reply. A remote can send a reply of
	// any length; a bounce does not need more than this of it.
	maxDiagnostic = 4096
	// maxHeaderSection bounds the returned header section for RET=HDRS.
	maxHeaderSection = 256 << 10
)

// status returns the status code Compose uses for rc.
func (rc *Recipient) status() (string, error) {
	if !rc.Status.IsZero() {
		if !rc.Status.Valid() {
			return "", fmt.Errorf("%w: %d.%d.%d", ErrBadStatus, rc.Status.Class, rc.Status.Subject, rc.Status.Detail)
		}
		return rc.Status.String(), nil
	}
	cls := rc.Action.class()
	if e := rc.Reply.Enhanced; e.Valid() && e.Class == cls {
		return e.String(), nil
	}
	return reply.Enhanced{Class: cls}.String(), nil
}

func validAction(a Action) bool {
	switch a {
	case Failed, Delayed, Delivered, Relayed, Expanded:
		return true
	}
	return false
}

// Compose writes the notification r describes to w. It reads r.Original
// (only its header section for Headers) and returns the first error of
// reading or writing.
func Compose(w io.Writer, r *Report) error {
	if len(r.Recipients) == 0 {
		return ErrNoRecipients
	}
	host := sanitize(r.ReportingMTA)
	if host == "" || strings.ContainsAny(host, " <>@") {
		return fmt.Errorf("%w: %q", ErrNoHostname, r.ReportingMTA)
	}
	statuses := make([]string, len(r.Recipients))
	for i := range r.Recipients {
		rc := &r.Recipients[i]
		if !validAction(rc.Action) {
			return fmt.Errorf("%w: %q", ErrBadAction, rc.Action)
		}
		s, err := rc.status()
		if err != nil {
			return err
		}
		statuses[i] = s
	}
	boundary := r.Boundary
	if boundary == "" {
		// The host only makes a collision with another system's
		// boundary less likely: cut to RFC 2046's 70 characters, not
		// refused (a host name may be 253).
		boundary = "=_" + random(12) + "/" + host
		boundary = boundary[:min(len(boundary), 70)]
	}
	if !validBoundary(boundary) {
		return fmt.Errorf("%w: %q", ErrBadBoundary, boundary)
	}
	date := r.Date
	if date.IsZero() {
		date = time.Now()
	}
	msgID := sanitize(r.MessageID)
	if msgID == "" || strings.ContainsAny(msgID, " <>") || !strings.Contains(msgID, "@") {
		msgID = random(12) + "@" + host
	}

	bw := bufio.NewWriter(w)
	h := &header{w: bw}

	// Top-level header. The notification comes from the mail system, not
	// from a person: RFC 3834 §5 Auto-Submitted keeps responders quiet,
	// and the null envelope sender (the caller's) stops loops.
	h.field("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	h.field("To", mailbox(r.Sender))
	h.field("Subject", subject(r.Recipients))
	h.field("Date", date.Format(time.RFC1123Z))
	h.field("Message-ID", "<"+msgID+">")
	h.field("Auto-Submitted", "auto-replied")
	h.field("MIME-Version", "1.0")
	h.field("Content-Type", `multipart/report; report-type=delivery-status;`+
		` boundary="`+boundary+`"`)
	h.end()
	bw.WriteString("This is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: for people (RFC 6522 §3: "the first body part ... is a
	// human-readable explanation").
	bw.WriteString("--" + boundary + "\r\n")
	h.field("Content-Description", "Notification")
	h.field("Content-Type", "text/plain; charset=us-ascii")
	h.end()
	writeExplanation(bw, host, r, statuses)

	// Part 2: for machines (RFC 3464 §2).
	bw.WriteString("\r\n--" + boundary + "\r\n")
	h.field("Content-Description", "Delivery report")
	h.field("Content-Type", "message/delivery-status")
	h.end()
	h.field("Reporting-MTA", "dns; "+host)
	if id := sanitize(r.EnvelopeID); id != "" {
		h.field("Original-Envelope-Id", id)
	}
	if !r.ArrivalDate.IsZero() {
		h.field("Arrival-Date", r.ArrivalDate.Format(time.RFC1123Z))
	}
	for i, rc := range r.Recipients {
		h.end() // blank line before each per-recipient block
		if rc.OriginalRecipient != "" {
			h.field("Original-Recipient", typedAddress(rc.OriginalRecipient))
		}
		h.field("Final-Recipient", address(rc.FinalRecipient))
		h.field("Action", string(rc.Action))
		h.field("Status", statuses[i])
		if mta := sanitize(rc.RemoteMTA); mta != "" {
			h.field("Remote-MTA", "dns; "+mta)
		}
		if d := diagnostic(rc.Reply); d != "" {
			// "smtp" only for a reply a server gave, with its code;
			// our own words (a DNS failure, an expiry) are
			// "X-Postern" (RFC 3464 §2.3.6: the type names the
			// system the diagnostic comes from).
			typ := "X-Postern"
			if rc.Reply.Code != 0 {
				typ = "smtp"
			}
			h.field("Diagnostic-Code", typ+"; "+d)
		}
		if !rc.LastAttempt.IsZero() {
			h.field("Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z))
		}
		if rc.Action == Delayed && !rc.WillRetryUntil.IsZero() {
			h.field("Will-Retry-Until", rc.WillRetryUntil.Format(time.RFC1123Z))
		}
	}

	// Part 3: the original, or its header section.
	if r.Original != nil {
		bw.WriteString("\r\n--" + boundary + "\r\n")
		if r.Return == Full {
			h.field("Content-Description", "Undelivered message")
			h.field("Content-Type", "message/rfc822")
		} else {
			h.field("Content-Description", "Undelivered message headers")
			h.field("Content-Type", "text/rfc822-headers")
		}
		h.end()
		if err := writeOriginal(bw, r.Original, r.Return == Full); err != nil {
			return err
		}
	}
	bw.WriteString("\r\n--" + boundary + "--\r\n")
	return bw.Flush()
}

// subject is the Subject for the most serious action reported.
func subject(rcpts []Recipient) string {
	worst := Action("")
	for _, rc := range rcpts {
		switch {
		case rc.Action == Failed:
			worst = Failed
		case rc.Action == Delayed && worst != Failed:
			worst = Delayed
		}
	}
	switch worst {
	case Failed:
		return "Undelivered Mail Returned to Sender"
	case Delayed:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

func writeExplanation(w *bufio.Writer, host string, r *Report, statuses []string) {
	var failed, delayed, done []int
	for i, rc := range r.Recipients {
		switch rc.Action {
		case Failed:
			failed = append(failed, i)
		case Delayed:
			delayed = append(delayed, i)
		default:
			done = append(done, i)
		}
	}
	// Blocks (paragraphs and recipient entries) are separated by one
	// empty line.
	first := true
	block := func() {
		if !first {
			w.WriteString("\r\n")
		}
		first = false
	}
	para := func(s string) { block(); writeWrapped(w, s, "") }
	list := func(idx []int) {
		for _, i := range idx {
			rc := r.Recipients[i]
			block()
			_, addr, _ := strings.Cut(address(rc.FinalRecipient), "; ")
			line := "<" + addr + "> (status " + statuses[i] + ")"
			if mta := sanitize(rc.RemoteMTA); mta != "" {
				line += ": host " + mta + " said:"
			} else {
				line += ":"
			}
			writeWrapped(w, line, "")
			if d := diagnostic(rc.Reply); d != "" {
				writeWrapped(w, d, "    ")
			}
		}
	}
	para("This is the mail system at host " + host + ".")
	if len(failed) > 0 {
		para("Your message could not be delivered to the recipients below. " +
			"This is a permanent error; the mail system has given up.")
		list(failed)
	}
	if len(delayed) > 0 {
		msg := "Your message has not been delivered yet to the recipients below. " +
			"The mail system will keep trying"
		if until := r.Recipients[delayed[0]].WillRetryUntil; !until.IsZero() {
			msg += " until " + until.Format(time.RFC1123Z)
		}
		para(msg + ". You do not need to send it again.")
		list(delayed)
	}
	if len(done) > 0 {
		para("Your message was delivered to the recipients below, " +
			"or handed on to a system that sends no further reports.")
		list(done)
	}
}

// writeOriginal copies the original: all of it, or its header section
// (as queue/message reads every header section in postern, without the
// line that ends it). Line ends are made CRLF on the way by the one
// line-end fixer (message.CRLFReader), so a damaged original cannot put a
// bare CR or LF into the report, and lines longer than hardLimit are
// broken (see lineBreaker).
func writeOriginal(w *bufio.Writer, orig io.Reader, full bool) error {
	cr := message.NewCRLFReader(orig)
	defer cr.Release()
	lb := &lineBreaker{w: w, bol: true}
	if full {
		if _, err := io.Copy(lb, cr); err != nil {
			return fmt.Errorf("dsn: read original: %w", err)
		}
	} else {
		// A section over maxHeaderSection is returned up to its last
		// whole line before the limit: that much is quoted.
		h, err := message.ReadHeader(bufio.NewReader(cr), maxHeaderSection)
		if err != nil && !errors.Is(err, message.ErrHeaderTooLarge) {
			return fmt.Errorf("dsn: read original: %w", err)
		}
		lb.Write(h.Raw[:h.End])
	}
	if !lb.bol {
		w.WriteString("\r\n")
	}
	return nil
}

// lineBreaker writes CRLF-terminated text, breaking a line longer than
// hardLimit octets (a sender's program can write up to go-smtp's 2,000)
// with CRLF and a space, as Postfix's smtp_line_length_limit does: RFC
// 5322 §2.1.1 allows no more than 998 in the report, and in a header that
// is a fold, so the field stays one field. bol says the output is at the
// beginning of a line, col is the length of the line so far.
type lineBreaker struct {
	w   *bufio.Writer
	bol bool
	col int
}

func (l *lineBreaker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		// Line ends (CRLF, whose halves may come in separate writes)
		// pass as they are; the text between them is counted.
		i := bytes.IndexAny(p, "\r\n")
		text := p
		if i >= 0 {
			text = p[:i]
		}
		for len(text) > 0 {
			if l.col == hardLimit {
				l.w.WriteString("\r\n ")
				l.col = 1
			}
			k := min(len(text), hardLimit-l.col)
			l.w.Write(text[:k])
			l.col += k
			l.bol = false
			text = text[k:]
		}
		if i < 0 {
			break
		}
		l.w.WriteByte(p[i])
		l.col, l.bol = 0, p[i] == '\n'
		p = p[i+1:]
	}
	return n, nil
}

// header writes header fields, folding each (RFC 5322 §2.2.3).
type header struct{ w *bufio.Writer }

func (h *header) end() { h.w.WriteString("\r\n") }

// field writes "name: value" with value already sanitised, folded at
// spaces to stay near foldAt (unfolding gives the value back exactly). A
// word too long for hardLimit is split by a folding space: the only case in
// which folding changes the value.
func (h *header) field(name, value string) {
	h.w.WriteString(name)
	h.w.WriteByte(':')
	col := len(name) + 1
	first := true
	for _, word := range strings.Split(value, " ") {
		for len(word) > 0 {
			chunk := word[:min(len(word), hardLimit)]
			word = word[len(chunk):]
			if !first && col+1+len(chunk) > foldAt {
				h.w.WriteString("\r\n")
				col = 0
			}
			h.w.WriteByte(' ')
			h.w.WriteString(chunk)
			col += 1 + len(chunk)
			first = false
		}
	}
	h.w.WriteString("\r\n")
}

// writeWrapped writes s as lines of at most about 76 characters, each
// starting with indent, breaking at spaces and splitting longer words.
func writeWrapped(w *bufio.Writer, s, indent string) {
	const width = 76
	col := 0
	for _, word := range strings.Fields(s) {
		for len(word) > 0 {
			chunk := word[:min(len(word), width-len(indent))]
			word = word[len(chunk):]
			if col > 0 && col+1+len(chunk) > width {
				w.WriteString("\r\n")
				col = 0
			}
			if col == 0 {
				w.WriteString(indent)
				col = len(indent)
			} else {
				w.WriteByte(' ')
				col++
			}
			w.WriteString(chunk)
			col += len(chunk)
		}
	}
	if col > 0 {
		w.WriteString("\r\n")
	}
}

// sanitize makes s safe for a header field body: every control character
// (CR and LF included) and every run of spaces becomes one space, every
// byte outside printable ASCII becomes '?', and the ends are trimmed.
func sanitize(s string) string {
	var b strings.Builder
	space := false
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r <= ' ' || r == 0x7f:
			space = true
			continue
		case r >= 0x80:
			r = '?'
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}

// diagnostic is the sanitised, length-bounded text of a reply: as a
// server sent it (code, enhanced code, text), or, for postern's own words,
// the text alone (the enhanced code is the Status field).
func diagnostic(r reply.Reply) string {
	s := r.Text
	if r.Code != 0 {
		s = r.String()
	}
	d := sanitize(s)
	if len(d) > maxDiagnostic {
		d = d[:maxDiagnostic] + " [...]"
	}
	return d
}

// address renders an address as the Final-Recipient value: "rfc822; addr"
// for ASCII, and for an internationalised address the "utf-8" type of RFC
// 6533 §3 with non-ASCII characters as \x{HHHH}, so the field stays 7-bit.
func address(addr string) string {
	addr = strings.Trim(strings.TrimSpace(addr), "<>")
	typ := "rfc822"
	var b strings.Builder
	space := false
	for i := 0; i < len(addr); {
		r, size := utf8.DecodeRuneInString(addr[i:])
		i += size
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteByte('?')
		case r <= ' ' || r == 0x7f:
			space = true
			continue
		case r >= 0x80:
			typ = "utf-8"
			fmt.Fprintf(&b, `\x{%X}`, r)
		case r == '\\' && typ == "utf-8":
			b.WriteString(`\x{5C}`)
		default:
			if space {
				b.WriteByte('?') // an address holds no spaces
			}
			b.WriteRune(r)
		}
		space = false
	}
	return typ + "; " + b.String()
}

// typedAddress renders an ORCPT value ("rfc822;addr") as
// "type; address", sanitised; a value without a type is taken as rfc822.
func typedAddress(orcpt string) string {
	typ, addr, ok := strings.Cut(orcpt, ";")
	if !ok {
		typ, addr = "rfc822", orcpt
	}
	typ = strings.ToLower(sanitize(typ))
	if typ == "" || strings.ContainsAny(typ, " ;") {
		typ = "unknown"
	}
	return typ + "; " + sanitize(addr)
}

// mailbox is the To value for the original sender: the address in angle
// brackets when it is plain ASCII, otherwise a group with no members (RFC
// 5322 §3.4): a header cannot carry 8-bit text without SMTPUTF8, and the
// envelope, not this field, routes the report.
func mailbox(addr string) string {
	addr = strings.Trim(strings.TrimSpace(addr), "<>")
	ok := addr != "" && len(addr) < hardLimit-10
	for i := 0; ok && i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			ok = false
		}
	}
	if !ok {
		return "undisclosed-recipients:;"
	}
	return "<" + addr + ">"
}

// validBoundary checks RFC 2046 §5.1.1: 1 to 70 characters from bchars. The
// space, which bchars allows inside, is refused too so that folding can
// never touch the boundary.
func validBoundary(b string) bool {
	if len(b) == 0 || len(b) > 70 || b[len(b)-1] == ' ' {
		return false
	}
	for _, c := range []byte(b) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' ||
			strings.IndexByte("'()+_,-./:=?", c) >= 0) {
			return false
		}
	}
	return true
}

func random(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand docs, Go 1.24+)
	return hex.EncodeToString(b)
}

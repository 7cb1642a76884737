// Package reply is the typed SMTP reply: a reply code (RFC 5321 §4.2), an
// enhanced status code (RFC 3463) and the text, as a remote server sent
// them, or as postern words a failure of its own.
//
// Delivery (relay/outbound) makes a Reply from what it reads on the wire,
// once; from there it travels as these typed fields into the queue's
// records, the delivery status notifications, the admin API and the logs,
// and is never rendered to a string and parsed back. Rendering (String,
// Wire) is for people and for the wire only.
//
// It is a leaf: it imports nothing of postern, so that every room that
// handles delivery results (the queue, its DSN composer, delivery, the
// HTTP surface) can share it.
package reply

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
)

// Enhanced is an enhanced status code of RFC 3463 §2:
// class.subject.detail. The zero value means none.
type Enhanced struct {
	// Class is 2 (success), 4 (persistent transient failure) or 5
	// (permanent failure).
	Class int
	// Subject and Detail are 0 to 999 (RFC 3463 §2: 1 to 3 digits).
	Subject, Detail int
}

// IsZero reports whether e is the zero value: no enhanced code.
func (e Enhanced) IsZero() bool { return e == Enhanced{} }

// Valid reports whether e is a well-formed enhanced code.
func (e Enhanced) Valid() bool {
	return (e.Class == 2 || e.Class == 4 || e.Class == 5) &&
		0 <= e.Subject && e.Subject <= 999 && 0 <= e.Detail && e.Detail <= 999
}

// String is "c.s.d", or "" for the zero value.
func (e Enhanced) String() string {
	if e.IsZero() {
		return ""
	}
	return strconv.Itoa(e.Class) + "." + strconv.Itoa(e.Subject) + "." + strconv.Itoa(e.Detail)
}

// ErrBadEnhanced is the error of ParseEnhanced.
var ErrBadEnhanced = errors.New("reply: malformed enhanced status code")

// ParseEnhanced parses "c.s.d" as RFC 3463 §2 writes it: class 2, 4 or 5,
// subject and detail of 1 to 3 digits each, nothing else.
func ParseEnhanced(s string) (Enhanced, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 {
		return Enhanced{}, fmt.Errorf("%w: %q", ErrBadEnhanced, s)
	}
	var n [3]int
	for i, p := range parts {
		if len(p) < 1 || len(p) > 3 {
			return Enhanced{}, fmt.Errorf("%w: %q", ErrBadEnhanced, s)
		}
		for _, c := range []byte(p) {
			if c < '0' || c > '9' {
				return Enhanced{}, fmt.Errorf("%w: %q", ErrBadEnhanced, s)
			}
			n[i] = n[i]*10 + int(c-'0')
		}
	}
	e := Enhanced{n[0], n[1], n[2]}
	if !e.Valid() {
		return Enhanced{}, fmt.Errorf("%w: %q", ErrBadEnhanced, s)
	}
	return e, nil
}

// MustEnhanced is ParseEnhanced for a code written in the source, as
// regexp.MustCompile is for patterns: it panics on a malformed one. "" is
// the zero value.
func MustEnhanced(s string) Enhanced {
	if s == "" {
		return Enhanced{}
	}
	e, err := ParseEnhanced(s)
	if err != nil {
		panic(err)
	}
	return e
}

// MarshalText writes String: JSON keeps the code as people write it.
func (e Enhanced) MarshalText() ([]byte, error) {
	if !e.IsZero() && !e.Valid() {
		return nil, fmt.Errorf("%w: %d.%d.%d", ErrBadEnhanced, e.Class, e.Subject, e.Detail)
	}
	return []byte(e.String()), nil
}

// UnmarshalText reads what MarshalText writes; "" is the zero value.
func (e *Enhanced) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*e = Enhanced{}
		return nil
	}
	v, err := ParseEnhanced(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// Reply is one SMTP reply, or postern's own words in place of one.
//
// Code is 0 when no server gave a reply code: a connection that failed, a
// DNS lookup that timed out, a decision of the queue (an expired retry
// lifetime, an administrator's bounce). Such a reply may still carry an
// enhanced code that classifies it. Its JSON form is the one the admin API
// and webhooks show: {"code", "enhanced_code", "text"}.
type Reply struct {
	// Code is the three-digit reply code, 0 for none.
	Code int `json:"code,omitempty"`
	// Enhanced is the enhanced status code; zero when the reply had none
	// (or one whose class contradicted Code, which then stays in Text).
	Enhanced Enhanced `json:"enhanced_code,omitzero"`
	// Text is the reply's text without the codes: the lines of a
	// multi-line reply joined by "\n".
	Text string `json:"text,omitempty"`
}

// IsZero reports whether r is empty: no result has been recorded.
func (r Reply) IsZero() bool { return r == Reply{} }

// Lines returns the text's lines (one at least).
func (r Reply) Lines() []string { return strings.Split(r.Text, "\n") }

// String is the reply on one line, as bounces, logs and `postern queue
// show` quote it: "550 5.1.1 no such user". The lines of a multi-line reply
// keep their codes and are joined by spaces, as Postfix quotes them:
// "550-5.7.1 first line 550 5.7.1 second line". Without a reply code it is
// the enhanced code, if any, and the text: "5.4.7 retry lifetime expired".
func (r Reply) String() string {
	var b strings.Builder
	for i, l := range r.Lines() {
		if i > 0 {
			b.WriteByte(' ')
		}
		r.line(&b, i, l)
	}
	return b.String()
}

// Wire is the reply as a server sends it: one CRLF-terminated line per
// line of text, each with the reply code, "-" before all but the last, and
// the enhanced code repeated on every line (RFC 2034 §4). Only for replies
// with a Code.
func (r Reply) Wire() string {
	var b strings.Builder
	for i, l := range r.Lines() {
		r.line(&b, i, l)
		b.WriteString("\r\n")
	}
	return b.String()
}

func (r Reply) line(b *strings.Builder, i int, text string) {
	sep := false // a space is due before the next part
	if r.Code != 0 {
		b.WriteString(strconv.Itoa(r.Code))
		if i < strings.Count(r.Text, "\n") {
			b.WriteByte('-')
		} else {
			sep = true
		}
	}
	if !r.Enhanced.IsZero() {
		if sep {
			b.WriteByte(' ')
		}
		b.WriteString(r.Enhanced.String())
		sep = true
	}
	if text != "" {
		if sep {
			b.WriteByte(' ')
		}
		b.WriteString(text)
	}
}

// Class is the reply's class digit: the first digit of Code, or, without
// a Code, the class of the enhanced code; 0 when it has neither.
func (r Reply) Class() int {
	if r.Code != 0 {
		return r.Code / 100
	}
	return r.Enhanced.Class
}

// LogValue logs a reply as a group of its typed fields, so that log
// readers get the code and the enhanced code without parsing the text.
func (r Reply) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 3)
	if r.Code != 0 {
		attrs = append(attrs, slog.Int("code", r.Code))
	}
	if !r.Enhanced.IsZero() {
		attrs = append(attrs, slog.String("enhanced_code", r.Enhanced.String()))
	}
	attrs = append(attrs, slog.String("text", r.Text))
	return slog.GroupValue(attrs...)
}

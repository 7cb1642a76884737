// Package status is postern's one SMTP status type: a reply code, an
// enhanced status code (RFC 3463), a message that is safe to show the client,
// and the wrapped cause that only the log sees.
//
// Every error that reaches an SMTP client passes through ToSMTP, the single
// place where internal errors become replies. Unknown errors become the
// temporary 451 4.3.0: a bug or an I/O failure must make the client retry,
// never bounce a message with our internal error text in it.
package status

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"postern/queue/reply"
)

// Error is an SMTP status with a client-safe message and an internal cause.
type Error struct {
	// Code is the three-digit SMTP reply code (RFC 5321 §4.2).
	Code int
	// Subject and Detail are the second and third parts of the enhanced
	// status code (RFC 3463 §2). The class digit is derived from Code, so a
	// mismatch such as "450 5.x.x" cannot be built.
	Subject, Detail int
	// Message is what the client sees. It never contains the cause.
	Message string
	// Err is the internal cause, for logs only. May be nil.
	Err error
}

// New returns an Error for code and enhanced code x.subject.detail.
func New(code, subject, detail int, msg string) *Error {
	return &Error{Code: code, Subject: subject, Detail: detail, Message: msg}
}

// Wrap returns an Error with cause err attached for the log.
func Wrap(err error, code, subject, detail int, msg string) *Error {
	return &Error{Code: code, Subject: subject, Detail: detail, Message: msg, Err: err}
}

// With returns a copy of e carrying cause for the log: the same reply,
// with the reason it was given.
func (e *Error) With(cause error) *Error {
	c := *e
	c.Err = cause
	return &c
}

// Class is the class digit of the enhanced code, derived from the reply
// code: 2 for success, 4 for temporary, 5 for permanent (RFC 3463 §3.1).
func (e *Error) Class() int {
	switch c := e.Code / 100; c {
	case 2, 4, 5:
		return c
	case 3:
		return 2 // intermediate replies carry no enhanced code; treat as success
	default:
		return 4
	}
}

// Enhanced returns the enhanced status code as "c.s.d".
func (e *Error) Enhanced() string {
	return fmt.Sprintf("%d.%d.%d", e.Class(), e.Subject, e.Detail)
}

// Temporary reports whether the status is a transient (4xx) failure.
func (e *Error) Temporary() bool { return e.Code/100 == 4 }

// Permanent reports whether the status is a permanent (5xx) failure.
func (e *Error) Permanent() bool { return e.Code/100 == 5 }

func (e *Error) Error() string {
	s := fmt.Sprintf("%d %s %s", e.Code, e.Enhanced(), e.Message)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Reply is the status as a typed reply, for delivery results: the code,
// the enhanced code and, because a bounce or `postern queue show` must say
// why, the message followed by the cause. (To an SMTP client the session
// sends SMTP, which never carries the cause.)
func (e *Error) Reply() reply.Reply {
	text := e.Message
	if e.Err != nil {
		text += ": " + e.Err.Error()
	}
	return reply.Reply{Code: e.Code, Enhanced: reply.Enhanced{Class: e.Class(), Subject: e.Subject, Detail: e.Detail}, Text: text}
}

// SMTP returns the bare *smtp.SMTPError that go-smtp writes as a reply.
// go-smtp recognises only a bare *smtp.SMTPError (a type assertion, not
// errors.As), so this conversion must be the last step before returning.
func (e *Error) SMTP() *smtp.SMTPError {
	return &smtp.SMTPError{
		Code:         e.Code,
		EnhancedCode: smtp.EnhancedCode{e.Class(), e.Subject, e.Detail},
		Message:      e.Message,
	}
}

// Internal is the reply for any error that carries no status of its own.
// RFC 3463 §3.4: X.3.0 "Other or undefined mail system status".
var Internal = New(451, 3, 0, "Local error in processing, try again later")

// From finds the *Error in err's chain, or returns Internal wrapping err.
func From(err error) *Error {
	if err == nil {
		return nil
	}
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	var ge *smtp.SMTPError
	if errors.As(err, &ge) {
		e := &Error{Code: ge.Code, Message: ge.Message, Err: err}
		e.Subject, e.Detail = ge.EnhancedCode[1], ge.EnhancedCode[2]
		if ge.EnhancedCode == smtp.NoEnhancedCode || ge.EnhancedCode == (smtp.EnhancedCode{}) {
			e.Subject, e.Detail = 0, 0
		}
		return e
	}
	return &Error{Code: Internal.Code, Subject: Internal.Subject, Detail: Internal.Detail, Message: Internal.Message, Err: err}
}

// ToSMTP is the choke point: it turns any error into the bare
// *smtp.SMTPError that go-smtp needs, or nil for nil.
func ToSMTP(err error) error {
	if err == nil {
		return nil
	}
	return From(err).SMTP()
}

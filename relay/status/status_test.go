package status_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"postern/relay/status"
)

func TestClass(t *testing.T) {
	tests := []struct {
		code, subject, detail int
		want                  string
		temporary, permanent  bool
	}{
		{250, 0, 0, "2.0.0", false, false},
		{354, 0, 0, "2.0.0", false, false}, // intermediate: no class of its own
		{450, 1, 1, "4.1.1", true, false},  // the class follows the code,
		{550, 1, 1, "5.1.1", false, true},  // never the caller
		{452, 3, 1, "4.3.1", true, false},
		{554, 7, 1, "5.7.1", false, true},
		{999, 0, 0, "4.0.0", false, false}, // nonsense is treated as temporary
		{0, 0, 0, "4.0.0", false, false},
	}
	for _, tt := range tests {
		e := status.New(tt.code, tt.subject, tt.detail, "msg")
		if got := e.Enhanced(); got != tt.want {
			t.Errorf("New(%d, %d, %d).Enhanced() = %q, want %q", tt.code, tt.subject, tt.detail, got, tt.want)
		}
		if got := e.Class(); fmt.Sprint(got) != tt.want[:1] {
			t.Errorf("New(%d, …).Class() = %d, want %s", tt.code, got, tt.want[:1])
		}
		if e.Temporary() != tt.temporary || e.Permanent() != tt.permanent {
			t.Errorf("New(%d, …): Temporary %v Permanent %v, want %v %v", tt.code, e.Temporary(), e.Permanent(), tt.temporary, tt.permanent)
		}
		se := e.SMTP()
		if se.Code != tt.code || fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]) != tt.want || se.Message != "msg" {
			t.Errorf("New(%d, …).SMTP() = %+v", tt.code, se)
		}
	}
}

func TestError(t *testing.T) {
	cause := errors.New("bbolt: disk I/O")
	e := status.Wrap(cause, 451, 3, 0, "Try again later")
	if got, want := e.Error(), "451 4.3.0 Try again later: bbolt: disk I/O"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, cause) {
		t.Error("Wrap does not unwrap to its cause")
	}
	if got, want := status.New(550, 1, 1, "No such user").Error(), "550 5.1.1 No such user"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if strings.Contains(e.SMTP().Message, "bbolt") {
		t.Errorf("SMTP() shows the cause: %q", e.SMTP().Message)
	}
}

func TestFrom(t *testing.T) {
	known := status.New(553, 7, 1, "Sender address not allowed")
	cause := errors.New("open /var/lib/postern/queue.db: input/output error")

	tests := []struct {
		name string
		err  error
		want string // "code enhanced message"
		same *status.Error
	}{
		{"status error", known, "553 5.7.1 Sender address not allowed", known},
		{"wrapped status error", fmt.Errorf("mail: %w", known), "553 5.7.1 Sender address not allowed", known},
		{"wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", known)), "553 5.7.1 Sender address not allowed", known},
		{"joined", errors.Join(cause, known), "553 5.7.1 Sender address not allowed", known},
		{"go-smtp error", &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Maximum message size exceeded"},
			"552 5.3.4 Maximum message size exceeded", nil},
		{"go-smtp ErrDataTooLarge wrapped", fmt.Errorf("reading: %w", smtp.ErrDataTooLarge), "552 5.3.4 Maximum message size exceeded", nil},
		{"go-smtp error with a mismatched class", &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{5, 2, 1}, Message: "busy"},
			"450 4.2.1 busy", nil},
		{"go-smtp error without enhanced code", &smtp.SMTPError{Code: 421, EnhancedCode: smtp.NoEnhancedCode, Message: "bye"},
			"421 4.0.0 bye", nil},
		{"go-smtp error with unset enhanced code", &smtp.SMTPError{Code: 554, Message: "no"}, "554 5.0.0 no", nil},
		{"plain error", cause, "451 4.3.0 Local error in processing, try again later", nil},
		{"EOF", io.ErrUnexpectedEOF, "451 4.3.0 Local error in processing, try again later", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := status.From(tt.err)
			if got := fmt.Sprintf("%d %s %s", e.Code, e.Enhanced(), e.Message); got != tt.want {
				t.Errorf("From = %q, want %q", got, tt.want)
			}
			if tt.same != nil && e != tt.same {
				t.Errorf("From returned %p, want the *Error in the chain %p", e, tt.same)
			}
			if tt.same == nil && !errors.Is(e, tt.err) {
				t.Errorf("From(%v) loses the cause: %v", tt.err, e)
			}
			if strings.Contains(e.Message, "queue.db") || strings.Contains(e.Message, "EOF") {
				t.Errorf("client message %q shows the cause", e.Message)
			}
		})
	}

	if e := status.From(nil); e != nil {
		t.Errorf("From(nil) = %v, want nil", e)
	}
	// The shared Internal value must not be handed out for mutation.
	if e := status.From(cause); e == status.Internal {
		t.Error("From returned the shared Internal value")
	}
}

func TestToSMTP(t *testing.T) {
	if err := status.ToSMTP(nil); err != nil {
		t.Errorf("ToSMTP(nil) = %v", err)
	}
	for _, err := range []error{
		status.New(530, 7, 0, "Authentication required"),
		fmt.Errorf("wrapped: %w", status.New(530, 7, 0, "Authentication required")),
		fmt.Errorf("wrapped: %w", &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}),
	} {
		got := status.ToSMTP(err)
		// go-smtp uses a type assertion, not errors.As: the result must
		// be a bare *smtp.SMTPError.
		se, ok := got.(*smtp.SMTPError)
		if !ok {
			t.Fatalf("ToSMTP(%v) = %T, want *smtp.SMTPError", err, got)
		}
		want := smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
		if *se != want {
			t.Errorf("ToSMTP(%v) = %+v, want %+v", err, *se, want)
		}
	}
	se, ok := status.ToSMTP(errors.New("secret internal detail")).(*smtp.SMTPError)
	if !ok || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) || strings.Contains(se.Message, "secret") {
		t.Errorf("ToSMTP(plain error) = %+v", se)
	}
}

func TestWithKeepsTheReply(t *testing.T) {
	cause := errors.New("disk on fire")
	e := status.New(452, 3, 1, "Insufficient system storage")
	w := e.With(cause)
	if w.Code != 452 || w.Enhanced() != "4.3.1" || w.Message != e.Message || !errors.Is(w, cause) {
		t.Fatalf("With = %+v", w)
	}
	if e.Err != nil {
		t.Fatal("With changed the shared reply")
	}
}

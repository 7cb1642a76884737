package bounces

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"postern/queue/reply"
)

func rep(code int, enh, text string) reply.Reply {
	return reply.Reply{Code: code, Enhanced: reply.MustEnhanced(enh), Text: text}
}

// TestParseReport: real-world-shaped reports (testdata/*.eml), each read
// with LF and with CRLF line ends.
func TestParseReport(t *testing.T) {
	for _, tc := range []struct {
		file string
		want *Report
		err  error
	}{
		{"postfix-remote.eml", &Report{DSN: []RecipientStatus{{
			FinalRecipient: "nobody@dest.example", OriginalRecipient: "nobody@dest.example", Action: "failed",
			Reply:     rep(550, "5.1.1", "<nobody@dest.example>: Recipient address rejected: User unknown in local recipient table"),
			RemoteMTA: "mx.dest.example",
		}}}, nil},
		// Postfix's own local delivery: no SMTP code, the Status decides.
		{"postfix-local.eml", &Report{DSN: []RecipientStatus{{
			FinalRecipient: "nobody@dest.example", OriginalRecipient: "nobody@dest.example", Action: "failed",
			Reply: rep(0, "5.1.1", `unknown user: "nobody"`),
		}}}, nil},
		{"exchange.eml", &Report{DSN: []RecipientStatus{{
			FinalRecipient: "Gone.User@contoso.example", Action: "failed",
			Reply: rep(550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
		}}}, nil},
		// A folded multi-line reply: the words, once each code.
		{"gmail.eml", &Report{DSN: []RecipientStatus{{
			FinalRecipient: "missing@gmail.example", Action: "failed",
			Reply: rep(550, "5.1.1", "The email account that you tried to reach does not exist. Please try "+
				"double-checking the recipient's email address for typos or unnecessary spaces. "+
				"For more information, go to https://support.google.example/mail/?p=NoSuchUser a1si2 - gsmtp"),
			RemoteMTA: "gmail-smtp-in.l.google.example. (2001:db8::1b, the server for the domain gmail.example.)",
		}}}, nil},
		{"delayed-two.eml", &Report{DSN: []RecipientStatus{
			{FinalRecipient: "slow@dest.example", Action: "delayed", Reply: rep(451, "4.4.1", "try again later")},
			{FinalRecipient: "full@dest.example", OriginalRecipient: "Full@Dest.Example", Action: "failed", Reply: rep(552, "5.2.2", "Mailbox full")},
		}}, nil},
		{"arf-rfc5965.eml", &Report{Feedback: &Feedback{
			Type: "abuse", OriginalMailFrom: "somespammer@example.net", OriginalRcptTo: []string{"user@example.com"},
			MessageID: "8787KJKJ3K4J3K4J3K4J3.mail@example.net",
		}}, nil},
		{"autoreply.eml", nil, ErrNotReport},
	} {
		data, err := os.ReadFile(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		for _, eol := range []string{"LF", "CRLF"} {
			t.Run(tc.file+"/"+eol, func(t *testing.T) {
				in := data
				if eol == "CRLF" {
					in = bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n"))
				}
				got, err := ParseReport(bytes.NewReader(in))
				if tc.err != nil {
					if !errors.Is(err, tc.err) {
						t.Fatalf("err = %v, want %v", err, tc.err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got  %#v\nwant %#v", got.DSN, tc.want.DSN)
					if got.Feedback != nil {
						t.Errorf("feedback %+v", *got.Feedback)
					}
				}
			})
		}
	}
}

// TestParseReportMalformed: a message that claims to be a report but
// says nothing usable is an error, not an empty report.
func TestParseReportMalformed(t *testing.T) {
	for name, msg := range map[string]string{
		"DSN without recipients": "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\n" +
			"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n--B--\r\n",
		"ARF without a type": "Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n--B\r\n" +
			"Content-Type: message/feedback-report\r\n\r\nVersion: 1\r\n\r\n--B--\r\n",
		"no parts": "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\nnothing\r\n",
	} {
		if r, err := ParseReport(bytes.NewReader([]byte(msg))); err == nil || errors.Is(err, ErrNotReport) {
			t.Errorf("%s: %+v, %v; want a malformed-report error", name, r, err)
		}
	}
	if _, err := ParseReport(bytes.NewReader([]byte("Content-Type: multipart/report; report-type=disposition-notification; boundary=B\r\n\r\n--B--\r\n"))); !errors.Is(err, ErrNotReport) {
		t.Errorf("a read receipt (MDN): %v, want ErrNotReport", err)
	}
}

// FuzzParseReport: no input makes the parser panic, and what it returns
// for a report is a report (DSN or Feedback).
func FuzzParseReport(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.eml"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseReport(bytes.NewReader(data))
		if err != nil {
			return
		}
		if (len(r.DSN) == 0) == (r.Feedback == nil) {
			t.Fatalf("a report with %d DSN recipients and feedback %v", len(r.DSN), r.Feedback)
		}
		for _, rs := range r.DSN {
			if !rs.Reply.Enhanced.IsZero() && !rs.Reply.Enhanced.Valid() {
				t.Fatalf("invalid enhanced code %+v", rs.Reply.Enhanced)
			}
		}
	})
}

package dsn_test

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"postern/queue/dsn"
	"postern/queue/reply"
)

// A bounce for one recipient whose server answered 550, returning the
// original's header section (RET=HDRS, the default). Date, MessageID and
// Boundary are fixed here only to make the output stable; the output is
// shown with LF line ends, the message itself has CRLF.
func Example() {
	var b bytes.Buffer
	err := dsn.Compose(&b, &dsn.Report{
		ReportingMTA: "mail.example.org",
		Sender:       "alice@example.org",
		Date:         time.Date(2026, 11, 24, 10, 5, 0, 0, time.UTC),
		MessageID:    "dsn-1@mail.example.org",
		Boundary:     "=_b/mail.example.org",
		ArrivalDate:  time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
		Recipients: []dsn.Recipient{{
			FinalRecipient: "bob@example.net",
			Action:         dsn.Failed,
			RemoteMTA:      "mx.example.net",
			Reply:          reply.Reply{Code: 550, Enhanced: reply.Enhanced{Class: 5, Subject: 1, Detail: 1}, Text: "<bob@example.net>: no such user"},
			LastAttempt:    time.Date(2026, 11, 24, 10, 4, 0, 0, time.UTC),
		}},
		Original: strings.NewReader("Subject: lunch?\r\n\r\nTwelve thirty?\r\n"),
	})
	if err != nil {
		panic(err)
	}
	fmt.Print(strings.ReplaceAll(b.String(), "\r\n", "\n"))
	// Output:
	// From: Mail Delivery System <MAILER-DAEMON@mail.example.org>
	// To: <alice@example.org>
	// Subject: Undelivered Mail Returned to Sender
	// Date: Tue, 24 Nov 2026 10:05:00 +0000
	// Message-ID: <dsn-1@mail.example.org>
	// Auto-Submitted: auto-replied
	// MIME-Version: 1.0
	// Content-Type: multipart/report; report-type=delivery-status;
	//  boundary="=_b/mail.example.org"
	//
	// This is a MIME-encapsulated message.
	//
	// --=_b/mail.example.org
	// Content-Description: Notification
	// Content-Type: text/plain; charset=us-ascii
	//
	// This is the mail system at host mail.example.org.
	//
	// Your message could not be delivered to the recipients below. This is a
	// permanent error; the mail system has given up.
	//
	// <bob@example.net> (status 5.1.1): host mx.example.net said:
	//     550 5.1.1 <bob@example.net>: no such user
	//
	// --=_b/mail.example.org
	// Content-Description: Delivery report
	// Content-Type: message/delivery-status
	//
	// Reporting-MTA: dns; mail.example.org
	// Arrival-Date: Tue, 24 Nov 2026 10:00:00 +0000
	//
	// Final-Recipient: rfc822; bob@example.net
	// Action: failed
	// Status: 5.1.1
	// Remote-MTA: dns; mx.example.net
	// Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user
	// Last-Attempt-Date: Tue, 24 Nov 2026 10:04:00 +0000
	//
	// --=_b/mail.example.org
	// Content-Description: Undelivered message headers
	// Content-Type: text/rfc822-headers
	//
	// Subject: lunch?
	//
	// --=_b/mail.example.org--
}

package submit

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"postern/auth"
	"postern/queue/message"
)

var testNow = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func testMsgID() string { return "<fixed@postern.test>" }

// editMsg applies the header rules to a whole message in memory, as data
// does to the stream: what follows the header section's last line goes on
// as it is.
func editMsg(in []byte, fix bool) *editedMessage {
	h := message.ParseHeader(in)
	e := editHeader(h, fix, testNow, testMsgID)
	e.parts = append(e.parts, in[len(h.Raw):])
	return e
}

func edited(t *testing.T, e *editedMessage) string {
	t.Helper()
	b, err := io.ReadAll(e.Reader())
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != e.Len() {
		t.Errorf("Len() = %d, Reader gives %d bytes", e.Len(), len(b))
	}
	return string(b)
}

func TestEditHeader(t *testing.T) {
	const date = "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
	const id = "Message-ID: <fixed@postern.test>\r\n"
	tests := []struct {
		name, in, want string
		fix            bool
	}{
		{"complete message is untouched",
			"From: a@x.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n",
			"From: a@x.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", true},
		{"missing Date and Message-ID are added at the top",
			"From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n",
			date + id + "From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n", true},
		{"missing Message-ID only",
			"date: x\r\n\r\nb\r\n", id + "date: x\r\n\r\nb\r\n", true},
		{"Bcc is removed, folded lines included, the rest byte for byte",
			"From:  a@x.test \r\nBcc: secret@y.test,\r\n\tother@y.test\r\nDate: x\r\nMessage-ID: <1@x>\r\nX-Odd:\tkeep  me\r\n\r\nBcc: in the body stays\r\n",
			"From:  a@x.test \r\nDate: x\r\nMessage-ID: <1@x>\r\nX-Odd:\tkeep  me\r\n\r\nBcc: in the body stays\r\n", true},
		{"Resent-Bcc and odd case BCC are removed",
			"BCC: a@b.test\r\nResent-Bcc: c@d.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n",
			"Date: x\r\nMessage-ID: <1@x>\r\n\r\n", true},
		{"Bcc as the last field before the body",
			"Date: x\r\nMessage-ID: <1@x>\r\nBcc: a@b.test\r\n\r\nbody\r\n",
			"Date: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", true},
		{"without fix nothing changes",
			"Bcc: a@b.test\r\n\r\nbody\r\n", "Bcc: a@b.test\r\n\r\nbody\r\n", false},
		{"no header at all",
			"just a body line\r\n", date + id + "\r\njust a body line\r\n", true},
		{"empty header",
			"\r\nbody\r\n", date + id + "\r\nbody\r\n", true},
		{"a Bcc after a non-field line is body, and the empty line says so",
			"Date: x\r\nMessage-ID: <1@x>\r\nnot a field\r\nBcc: a@b.test\r\n",
			"Date: x\r\nMessage-ID: <1@x>\r\n\r\nnot a field\r\nBcc: a@b.test\r\n", true},
		{"the same without fix",
			"From: a@x.test\r\nnot a field\r\nFrom: ceo@x.test\r\n\r\nbody\r\n",
			"From: a@x.test\r\n\r\nnot a field\r\nFrom: ceo@x.test\r\n\r\nbody\r\n", false},
		{"obsolete white space before the colon",
			"Bcc : a@b.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n",
			"Date: x\r\nMessage-ID: <1@x>\r\n\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := editMsg([]byte(tt.in), tt.fix)
			if got := edited(t, e); got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestEditHeaderCounts(t *testing.T) {
	msg := strings.Repeat("Received: from a\r\n\tby b; x\r\n", 51) +
		"From: \"A\" <a@x.test>\r\nSender: s@x.test\r\n\r\nReceived: in the body\r\n"
	e := editMsg([]byte(msg), true)
	if e.received != 51 {
		t.Errorf("received = %d, want 51", e.received)
	}
	if len(e.from) != 1 || e.from[0] != `"A" <a@x.test>` || len(e.sender) != 1 || e.sender[0] != "s@x.test" {
		t.Errorf("from %q sender %q", e.from, e.sender)
	}
	if e.messageID != "<fixed@postern.test>" {
		t.Errorf("added messageID = %q", e.messageID)
	}
	if e := editMsg([]byte("Message-ID:  <a@x.test> \r\nMessage-ID: <b@x.test>\r\n\r\n"), true); e.messageID != "<a@x.test>" {
		t.Errorf("messageID of the first field = %q", e.messageID)
	}
}

// TestCheckHeaderFrom: a valid baseline, one change per case.
func TestCheckHeaderFrom(t *testing.T) {
	u := auth.NewUser("alice", []auth.Pattern{auth.MustParsePattern("alice@example.test"), auth.MustParsePattern("@team.example.test")})
	tests := []struct {
		name   string
		header string
		want   error
	}{
		{"own address", "From: alice@example.test\r\n", nil},
		{"display name and case", "From: \"Alice A.\" <Alice@EXAMPLE.test>\r\n", nil},
		{"domain pattern", "From: bob@team.example.test\r\n", nil},
		{"encoded display name", "From: =?utf-8?q?Al=C3=AFce?= <alice@example.test>\r\n", nil},
		{"display name in a charset net/mail does not know", "From: =?windows-1252?Q?J=F6rg?= <alice@example.test>\r\n", nil},
		{"someone else behind such a display name", "From: =?koi8-r?B?8MXU0Q==?= <ceo@example.test>\r\n", errFromForbidden},
		{"Sender allowed too", "From: alice@example.test\r\nSender: x@team.example.test\r\n", nil},
		{"folded From", "From: Alice\r\n <alice@example.test>\r\n", nil},
		{"someone else", "From: ceo@example.test\r\n", errFromForbidden},
		{"one of two is someone else", "From: alice@example.test, ceo@example.test\r\n", errFromForbidden},
		{"Sender is someone else", "From: alice@example.test\r\nSender: ceo@example.test\r\n", errFromForbidden},
		{"display name that looks like an address", "From: \"alice@example.test\" <ceo@example.test>\r\n", errFromForbidden},
		{"no From", "Subject: x\r\n", errNoFrom},
		{"two From fields", "From: alice@example.test\r\nFrom: alice@example.test\r\n", errManyFrom},
		{"two Sender fields", "From: alice@example.test\r\nSender: alice@example.test\r\nSender: alice@example.test\r\n", errManySender},
		{"quoted local part with @", "From: \"ceo@evil.test\"@example.test\r\n", errFromSyntax},
		{"address literal", "From: alice@[192.0.2.1]\r\n", errFromSyntax},
		{"garbage", "From: <<<\r\n", errFromSyntax},
		{"empty", "From: \r\n", errFromSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := editMsg([]byte(tt.header+"\r\nbody\r\n"), true)
			if err := checkHeaderFrom(e, u); !errors.Is(err, tt.want) {
				t.Errorf("checkHeaderFrom = %v, want %v", err, tt.want)
			}
		})
	}
}

var fuzzUser = auth.NewUser("alice", []auth.Pattern{auth.MustParsePattern("alice@example.test")})

// FuzzEditHeader checks the header rules on any input: the output is the
// input with only Bcc fields taken out and at most Date and Message-ID
// put on top; it has no Bcc field left; and applying the rules again
// changes nothing.
func FuzzEditHeader(f *testing.F) {
	for _, s := range []string{
		"From: a@b.test\r\nBcc: x@y.test\r\n\r\nbody\r\n",
		"From: Alice <alice@example.test>\r\nSender: =?utf-8?q?x?= <alice@EXAMPLE.test>\r\n\r\n",
		"Bcc:\r\n \r\n\r\n", "\r\n", "", "x", "Bcc: a\nDate: b\n\nc", "Received: a\r\n\tb\r\n\r\n",
		": no name\r\n\r\n", " leading space\r\n",
		"From: alice@example.test\r\nnot a field\r\nFrom: ceo@example.test\r\nBcc: s@x.test\r\n\r\n",
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, fix bool) {
		h := message.ParseHeader(in)
		end := h.End
		pos := 0
		for _, fl := range h.Fields {
			if fl.Start != pos || fl.End <= fl.Start || fl.End > len(in) || fl.Name == "" {
				t.Fatalf("%q: bad field %+v after %d", in, fl, pos)
			}
			pos = fl.End
		}
		if end != pos {
			t.Fatalf("%q: header ends at %d, fields at %d", in, end, pos)
		}
		e := editMsg(in, fix)
		// The From check takes any header without panicking, and passes
		// only addresses the envelope rules would.
		if checkHeaderFrom(e, fuzzUser) == nil {
			for _, v := range append(e.from, e.sender...) {
				if !strings.Contains(strings.ToLower(v), "@example.test") {
					t.Fatalf("From %q Sender %q passed for alice@example.test", e.from, e.sender)
				}
			}
		}
		out := edited(t, e)
		// Where the header section did not end with an empty line, one is
		// put there; nothing else is added but Date and Message-ID.
		sep := ""
		if rest := in[end:]; len(rest) > 0 && !bytes.HasPrefix(rest, []byte("\r\n")) && !bytes.HasPrefix(rest, []byte("\n")) {
			sep = "\r\n"
		}
		if !fix {
			if want := string(in[:end]) + sep + string(in[end:]); out != want {
				t.Fatalf("without fix %q became %q, want %q", in, out, want)
			}
		} else {
			rest := strings.TrimPrefix(out, string(e.parts[0]))
			// rest is in with whole fields removed: a subsequence made of
			// ranges of in, and the separator.
			if len(rest) > len(in)+len(sep) {
				t.Fatalf("%q grew to %q", in, rest)
			}
			for _, fl := range message.ParseHeader([]byte(out)).Fields {
				if n := strings.ToLower(fl.Name); n == "bcc" || n == "resent-bcc" {
					t.Fatalf("%q: Bcc left in %q", in, out)
				}
			}
		}
		// A reader that takes every line up to the first empty one as
		// header (a DKIM signer, a mail program) finds exactly the From
		// and Bcc fields the rules looked at.
		var from, bcc int
		for _, line := range strings.SplitAfter(out, "\n") {
			if strings.TrimRight(line, "\r\n") == "" {
				break
			}
			switch name, _ := message.FieldName([]byte(line)); strings.ToLower(name) {
			case "from":
				from++
			case "bcc", "resent-bcc":
				bcc++
			}
		}
		if from != len(e.from) || fix && bcc > 0 {
			t.Fatalf("%q: a reader to the empty line of %q finds %d From (the rules saw %d) and %d Bcc", in, out, from, len(e.from), bcc)
		}
		if !fix {
			return
		}
		again := edited(t, editMsg([]byte(out), true))
		if again != out {
			t.Fatalf("not idempotent: %q then %q", out, again)
		}
	})
}

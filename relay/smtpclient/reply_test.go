package smtpclient

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"postern/queue/reply"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		in       string
		code     int
		enhanced string
		lines    []string
		reply    string
	}{
		{"550 5.1.1 no such user", 550, "5.1.1", []string{"no such user"}, "550 5.1.1 no such user"},
		{"550 5.1.1 no such user\r\n", 550, "5.1.1", []string{"no such user"}, "550 5.1.1 no such user"},
		{"451 try later", 451, "", []string{"try later"}, "451 try later"},
		{"250", 250, "", []string{""}, "250"},
		{"250 2.0.0", 250, "2.0.0", []string{""}, "250 2.0.0"},
		// The class of the enhanced code contradicts the reply code: the
		// words stay in the text.
		{"550 4.1.1 odd", 550, "", []string{"4.1.1 odd"}, "550 4.1.1 odd"},
		{"550 5.1.1234 long detail", 550, "", []string{"5.1.1234 long detail"}, "550 5.1.1234 long detail"},
		{"550 5.123.456 x", 550, "5.123.456", []string{"x"}, "550 5.123.456 x"},
		// Multi-line, enhanced code repeated on every line (RFC 2034 §4).
		{"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n", 550, "5.7.1",
			[]string{"first", "second", "third"}, "550-5.7.1 first 550-5.7.1 second 550 5.7.1 third"},
		// Multi-line, code only on the first line, LF line ends.
		{"421-4.3.2 busy\n421 come back later", 421, "4.3.2",
			[]string{"busy", "come back later"}, "421-4.3.2 busy 421 4.3.2 come back later"},
	}
	for _, tt := range tests {
		e, err := ParseReply(CmdRCPT, tt.in)
		if err != nil {
			t.Errorf("ParseReply(%q): %v", tt.in, err)
			continue
		}
		if e.Code != tt.code || e.Enhanced.String() != tt.enhanced || !reflect.DeepEqual(e.Lines(), tt.lines) || e.Reply.String() != tt.reply {
			t.Errorf("ParseReply(%q) = %d %q %q %q, want %d %q %q %q", tt.in,
				e.Code, e.Enhanced, e.Lines(), e.Reply.String(), tt.code, tt.enhanced, tt.lines, tt.reply)
		}
		if e.Command != CmdRCPT || e.Error() != e.Reply.String() {
			t.Errorf("ParseReply(%q): command %q, Error %q", tt.in, e.Command, e.Error())
		}
	}
}

func TestParseReplyErrors(t *testing.T) {
	for _, in := range []string{
		"", "55", "abc def", "650 x", "160 x", "5x0 x", "550x", "550-only continuation",
		"550 a\r\n550 b", // a final line before the end
		"550-a\r\n451 b", // codes differ
		"550-a\r\n",      // continuation without a last line
	} {
		if e, err := ParseReply(CmdMAIL, in); !errors.Is(err, ErrBadReply) {
			t.Errorf("ParseReply(%q) = %+v, %v; want ErrBadReply", in, e, err)
		}
	}
}

func TestPermanent(t *testing.T) {
	tests := []struct {
		cmd  string
		code int
		perm bool
	}{
		{CmdRCPT, 550, true},
		{CmdRCPT, 552, false}, // RFC 5321 §4.5.3.1.10
		{CmdMAIL, 552, true},
		{CmdEOD, 552, true},
		{CmdRCPT, 451, false},
		{CmdConnect, 354, false},
	}
	for _, tt := range tests {
		e := &Error{Command: tt.cmd, Reply: reply.Reply{Code: tt.code, Text: "x"}}
		if e.Permanent() != tt.perm || e.Temporary() == tt.perm {
			t.Errorf("%s %d: Permanent %v, Temporary %v", tt.cmd, tt.code, e.Permanent(), e.Temporary())
		}
	}
}

// FuzzParseReply checks that ParseReply never panics, that what it accepts
// is well formed, and that an Error survives a trip through Wire.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"550 5.1.1 no such user", "250", "250-x\r\n250 y", "421-4.3.2 a\n421 b\n",
		"550 4.1.1 odd", "550-5.7.1\r\n550 5.7.1", "550 5.1.1 5.1.1 x", "550 a\r\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		e, err := ParseReply(CmdRCPT, in)
		if err != nil {
			return
		}
		if e.Code < 200 || e.Code > 559 || len(e.Lines()) == 0 {
			t.Fatalf("ParseReply(%q): code %d, %d lines", in, e.Code, len(e.Lines()))
		}
		if !e.Enhanced.IsZero() && (!e.Enhanced.Valid() || e.Enhanced.Class != e.Code/100) {
			t.Fatalf("ParseReply(%q): enhanced %q with code %d", in, e.Enhanced, e.Code)
		}
		if !strings.HasPrefix(e.Reply.String(), strconv.Itoa(e.Code)) {
			t.Fatalf("ParseReply(%q): reply %q", in, e.Reply.String())
		}
		again, err := ParseReply(CmdRCPT, e.Reply.Wire())
		if err != nil {
			t.Fatalf("ParseReply(%q).Wire() = %q does not parse: %v", in, e.Reply.Wire(), err)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip of %q: %+v, then %+v", in, e, again)
		}
	})
}

// TestReadReply reads replies off a stream as a connection delivers them:
// one after the other, multi-line ones whole, and refuses what is not a
// reply without reading past it.
func TestReadReply(t *testing.T) {
	in := "250-mx.example greets you\r\n250-PIPELINING\r\n250 SIZE 1000\r\n" +
		"550 5.1.1 no such user\n" +
		"354 go ahead\r\n" +
		"250\r\n" +
		"hello\r\n"
	br := bufio.NewReader(strings.NewReader(in))
	for _, want := range []string{
		"250-mx.example greets you 250-PIPELINING 250 SIZE 1000",
		"550 5.1.1 no such user",
		"354 go ahead",
		"250",
	} {
		re, err := readReply(br, CmdRCPT)
		if err != nil {
			t.Fatalf("want %q: %v", want, err)
		}
		if re.Reply.String() != want {
			t.Errorf("got %q, want %q", re.Reply.String(), want)
		}
	}
	if _, err := readReply(br, CmdRCPT); !errors.Is(err, ErrBadReply) {
		t.Errorf("a line that is no reply: %v", err)
	}
	if _, err := readReply(br, CmdRCPT); err != io.EOF {
		t.Errorf("at the end: %v, want EOF", err)
	}
	long := "250 " + strings.Repeat("x", maxReplyLine) + "\r\n"
	if _, err := readReply(bufio.NewReader(strings.NewReader(long)), CmdRCPT); !errors.Is(err, ErrBadReply) {
		t.Errorf("a line of %d octets: %v", len(long), err)
	}
	many := strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 y\r\n"
	if _, err := readReply(bufio.NewReader(strings.NewReader(many)), CmdRCPT); !errors.Is(err, ErrBadReply) {
		t.Errorf("a reply of %d lines: %v", maxReplyLines+2, err)
	}
}

// FuzzReadReply: whatever a server sends, readReply returns a reply, an
// I/O error or ErrBadReply, never panics or reads without bound; and what
// it accepts reads back the same from its Wire form.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 ok\r\n", "250-a\r\n250 b\r\n", "550-5.1.1 a\n550 5.1.1 b\n", "421", "250-x\r\n",
		"354 go\r\n250 2.0.0 ok\r\n", "2", "250 \xff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(strings.NewReader(string(in)), 16)
		for range 10 {
			re, err := readReply(br, CmdMAIL)
			if err != nil {
				if !errors.Is(err, ErrBadReply) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("error %v", err)
				}
				return
			}
			again, err := readReply(bufio.NewReader(strings.NewReader(re.Reply.Wire())), CmdMAIL)
			if err != nil || !reflect.DeepEqual(again, re) {
				t.Fatalf("%+v: Wire %q reads back as %+v, %v", re, re.Reply.Wire(), again, err)
			}
		}
	})
}

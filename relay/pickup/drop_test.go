package pickup

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

const validLine = `{"v":1,"from":"app@example.org","rcpts":["bob@example.org","carol@example.net"],"notify":["SUCCESS","DELAY"],"ret":"HDRS","envid":"job-42"}`

const testMsg = "From: <app@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"

func parseString(s string) (*Drop, string, error) {
	br := bufio.NewReader(strings.NewReader(s))
	d, err := Parse(br)
	if err != nil {
		return nil, "", err
	}
	rest, _ := io.ReadAll(br)
	return d, string(rest), nil
}

func TestParseValid(t *testing.T) {
	d, rest, err := parseString(validLine + "\n" + testMsg)
	if err != nil {
		t.Fatal(err)
	}
	want := &Drop{From: "app@example.org", Rcpts: []string{"bob@example.org", "carol@example.net"},
		Notify: []string{"SUCCESS", "DELAY"}, Ret: "HDRS", EnvID: "job-42"}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("Parse = %+v, want %+v", d, want)
	}
	if rest != testMsg {
		t.Errorf("the message after the line: %q, want %q", rest, testMsg)
	}
	// The least a drop holds: the null sender, one recipient, no message.
	d, rest, err = parseString(`{"v":1,"from":"","rcpts":["b@example.org"]}` + "\n")
	if err != nil || d.From != "" || len(d.Rcpts) != 1 || rest != "" {
		t.Errorf("minimal drop: %+v, %q, %v", d, rest, err)
	}
	// Addresses come out as the relay listener writes them.
	d, _, err = parseString(`{"v":1,"from":"App@Example.ORG","rcpts":["b@EXAMPLE.org"]}` + "\n")
	if err != nil || d.From != "App@example.org" || d.Rcpts[0] != "b@example.org" {
		t.Errorf("case: %+v, %v", d, err)
	}
}

// TestParseRefuses starts from a valid envelope line and changes one
// thing in each case (STYLE: valid baseline, change one thing), checking
// the part blamed with errors.Is.
func TestParseRefuses(t *testing.T) {
	change := func(old, new string) string {
		if !strings.Contains(validLine, old) {
			t.Fatalf("%q is not in the valid line", old)
		}
		return strings.Replace(validLine, old, new, 1) + "\n" + testMsg
	}
	for _, tt := range []struct {
		name, in string
		want     error
	}{
		{"empty file", "", ErrEnvelope},
		{"no line end", validLine, ErrEnvelope},
		{"CRLF line end", validLine + "\r\n" + testMsg, ErrEnvelope},
		{"space before", " " + validLine + "\n", ErrEnvelope},
		{"space after", validLine + " \n", ErrEnvelope},
		{"two objects", validLine + "{}\n", ErrEnvelope},
		{"not an object", `[1]` + "\n", ErrEnvelope},
		{"not JSON", "From: a@b\r\n\r\nhi\r\n", ErrEnvelope},
		{"truncated", validLine[:40] + "\n", ErrEnvelope},
		{"unknown key", change(`"v":1,`, `"v":1,"uid":0,`), ErrEnvelope},
		{"key in other case", change(`"from"`, `"FROM"`), ErrEnvelope},
		{"key twice", change(`"v":1,`, `"v":1,"v":1,`), ErrEnvelope},
		{"not UTF-8", change(`job-42`, "job-\xff"), ErrEnvelope},
		{"version 2", change(`"v":1`, `"v":2`), ErrVersion},
		{"version missing", change(`"v":1,`, ``), ErrVersion},
		{"version as string", change(`"v":1`, `"v":"1"`), ErrEnvelope},
		{"version 1.0", change(`"v":1`, `"v":1.0`), ErrEnvelope},
		{"sender missing", change(`"from":"app@example.org",`, ``), ErrSender},
		{"sender null", change(`"from":"app@example.org"`, `"from":null`), ErrSender},
		{"sender with two @", change(`app@example.org`, `a@b@example.org`), ErrSender},
		{"sender with a line break", change(`app@example.org`, `app@example.org\r\nBcc: x@y.org`), ErrSender},
		{"sender literal", change(`app@example.org`, `app@[127.0.0.1]`), ErrSender},
		{"recipients missing", change(`"rcpts":["bob@example.org","carol@example.net"],`, ``), ErrRcpt},
		{"recipients empty", change(`["bob@example.org","carol@example.net"]`, `[]`), ErrRcpt},
		{"recipients not a list", change(`["bob@example.org","carol@example.net"]`, `"bob@example.org"`), ErrEnvelope},
		{"recipient bad", change(`bob@example.org`, `bob`), ErrRcpt},
		{"recipient percent hack", change(`bob@example.org`, `bob%evil.org@example.org`), ErrRcpt},
		{"recipient twice", change(`carol@example.net`, `BOB@example.org`), ErrRcpt},
		{"notify unknown", change(`"DELAY"`, `"LATER"`), ErrDSN},
		{"notify lower case", change(`"DELAY"`, `"delay"`), ErrDSN},
		{"notify twice", change(`"DELAY"`, `"SUCCESS"`), ErrDSN},
		{"notify never with another", change(`"DELAY"`, `"NEVER"`), ErrDSN},
		{"ret unknown", change(`"HDRS"`, `"BODY"`), ErrDSN},
		{"envid with a control character", change(`job-42`, `job\u0000`), ErrDSN},
		{"envid too long", change(`job-42`, strings.Repeat("x", 101)), ErrDSN},
		{"line too long", `{"v":1,"from":"` + strings.Repeat("x", MaxEnvelopeLine) + `"}` + "\n", ErrEnvelope},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, _, err := parseString(tt.in)
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse = %+v, %v; want an error matching %v and ErrMalformed", d, err, tt.want)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	d := &Drop{From: "", Rcpts: []string{"Bob@Example.ORG"}, Notify: []string{"NEVER"}}
	data, err := d.Encode([]byte(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"from":"","rcpts":["Bob@example.org"],"notify":["NEVER"]}` + "\n" + testMsg
	if string(data) != want {
		t.Errorf("Encode:\n%s\nwant\n%s", data, want)
	}
	// Encode refuses what Parse would.
	if _, err := (&Drop{From: "a@b@c.org", Rcpts: []string{"b@example.org"}}).Encode(nil); !errors.Is(err, ErrSender) {
		t.Errorf("Encode with a bad sender: %v", err)
	}
	if _, err := (&Drop{}).Encode(nil); !errors.Is(err, ErrRcpt) {
		t.Errorf("Encode without recipients: %v", err)
	}
}

// FuzzParse: whatever a local user writes into the maildrop, Parse does
// not panic; what it accepts holds addresses without line breaks, and
// encoding it again gives a drop that parses to the same envelope and the
// same message.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		validLine + "\n" + testMsg,
		`{"v":1,"from":"","rcpts":["b@example.org"]}` + "\n",
		`{"v":1,"from":"a@example.org","rcpts":["b@example.org"],"notify":["NEVER"],"ret":"FULL","envid":"x"}` + "\nSubject: s\n\nbody",
		`{"v":1,"v":1,"from":"","rcpts":["b@example.org"]}` + "\n",
		`{"v":1,"From":"","rcpts":["b@example.org"]}` + "\n",
		`{"v":1,"from":"\u0061@example.org","rcpts":["b@example.org"]}` + "\n",
		"{\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		d, err := Parse(br)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse(%q): error %v matches no ErrMalformed", in, err)
			}
			return
		}
		msg, _ := io.ReadAll(br)
		if len(d.Rcpts) == 0 {
			t.Fatalf("Parse(%q) accepted a drop without recipients", in)
		}
		for _, a := range append([]string{d.From}, d.Rcpts...) {
			if strings.ContainsAny(a, "\r\n<> ") {
				t.Fatalf("Parse(%q) accepted the address %q", in, a)
			}
		}
		again, err := d.Encode(msg)
		if err != nil {
			t.Fatalf("Encode of a parsed drop: %v", err)
		}
		br = bufio.NewReader(bytes.NewReader(again))
		d2, err := Parse(br)
		if err != nil {
			t.Fatalf("Parse(Encode(Parse(%q))): %v", in, err)
		}
		msg2, _ := io.ReadAll(br)
		if !reflect.DeepEqual(d, d2) || !bytes.Equal(msg, msg2) {
			t.Fatalf("round trip of %q: %+v %q, then %+v %q", in, d, msg, d2, msg2)
		}
	})
}

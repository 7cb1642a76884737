package message_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"

	"postern/queue/message"
)

func to7(t testing.TB, in string) (string, message.Conversion) {
	t.Helper()
	var out bytes.Buffer
	conv, err := message.To7Bit(&out, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), conv
}

func TestTo7Bit(t *testing.T) {
	crlf := func(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }
	for _, tt := range []struct {
		name, in, want string
		changed, stuck bool
	}{
		{name: "7-bit stays as it is",
			in: crlf("Subject: hi\n\nplain\n.\n"), want: crlf("Subject: hi\n\nplain\n.\n")},
		{name: "not MIME: becomes MIME, quoted-printable",
			in:      crlf("Subject: hi\n\ncaf\xc3\xa9 = ok \nbye\n"),
			want:    crlf("Subject: hi\nMIME-Version: 1.0\nContent-Type: text/plain; charset=unknown-8bit\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =3D ok=20\nbye\n"),
			changed: true},
		{name: "one part labelled 8bit",
			in:      crlf("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9\n"),
			want:    crlf("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n=C3=A9\n"),
			changed: true},
		{name: "labelled 8bit, 7-bit content: unchanged",
			in:   crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\n\nascii\n"),
			want: crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\n\nascii\n")},
		{name: "multipart: only the 8-bit part changes",
			in: crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\npreamble\n--b1\n" +
				"Content-Type: text/plain\n\nascii\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9t\xc3\xa9\n--b1\n" +
				"Content-Type: application/octet-stream\n\n\x00\xff\xfe\n--b1\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw==\n--b1--\nepilogue\n"),
			want: crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\npreamble\n--b1\n" +
				"Content-Type: text/plain\n\nascii\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n=C3=A9t=C3=A9\n--b1\n" +
				"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAP/+\n--b1\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw==\n--b1--\nepilogue\n"),
			changed: true},
		{name: "message/rfc822: the inner message is converted",
			in: crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n" +
				"Subject: inner\nContent-Type: text/plain\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9\n--b--\n"),
			want: crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n" +
				"Subject: inner\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n=C3=A9\n--b--\n"),
			changed: true},
		{name: "8-bit header: unconvertible, unchanged",
			in: crlf("Subject: caf\xc3\xa9\n\nbody\n"), want: crlf("Subject: caf\xc3\xa9\n\nbody\n"), stuck: true},
		{name: "message/global: unconvertible",
			in:    crlf("MIME-Version: 1.0\nContent-Type: message/global\n\nSubject: \xc3\xa9\n\nx\n"),
			want:  crlf("MIME-Version: 1.0\nContent-Type: message/global\n\nSubject: \xc3\xa9\n\nx\n"),
			stuck: true},
		{name: "8-bit preamble: unconvertible",
			in:    crlf("Content-Type: multipart/mixed; boundary=b\n\n\xc3\xa9\n--b\n\nx\n--b--\n"),
			want:  crlf("Content-Type: multipart/mixed; boundary=b\n\n\xc3\xa9\n--b\n\nx\n--b--\n"),
			stuck: true},
		{name: "base64 with 8-bit damage: unconvertible",
			in:    crlf("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n\xff\n"),
			want:  crlf("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n\xff\n"),
			stuck: true},
		{name: "multipart without a boundary: unconvertible",
			in:    crlf("Content-Type: multipart/mixed\n\n\xc3\xa9\n"),
			want:  crlf("Content-Type: multipart/mixed\n\n\xc3\xa9\n"),
			stuck: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, conv := to7(t, tt.in)
			if got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			if conv.Changed != tt.changed || conv.Unconvertible != tt.stuck {
				t.Errorf("conversion %+v, want changed %v, unconvertible %v", conv, tt.changed, tt.stuck)
			}
		})
	}
}

// TestTo7BitLookahead: a part labelled 7bit whose first 8-bit octet comes
// after Lookahead octets cannot be converted any more; one labelled 8bit
// is converted from there on whatever it holds.
func TestTo7BitLookahead(t *testing.T) {
	long := strings.Repeat(strings.Repeat("a", 70)+"\r\n", message.Lookahead/70+10)
	late := "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + long + "\xc3\xa9\r\n"
	if _, conv := to7(t, late); conv.Changed || !conv.Unconvertible {
		t.Errorf("late 8-bit in a 7bit part: %+v", conv)
	}
	labelled := "MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + long + "\xc3\xa9\r\n"
	out, conv := to7(t, labelled)
	if !conv.Changed || conv.Unconvertible || !strings.Contains(out, "=C3=A9") {
		t.Errorf("late 8-bit in an 8bit part: %+v", conv)
	}
}

// FuzzTo7Bit: any input. Unless it says some 8-bit content was left, the
// output is 7-bit; what it did not change comes out byte for byte; and
// converting the output again changes nothing.
func FuzzTo7Bit(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\n\xc3\xa9\r\n",
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/x\r\n\r\n\xff\r\n--b--\r\n",
		"Content-Type: multipart/alternative; boundary=\"x\"\r\n\r\n--x\r\n\r\n\xe9\r\n--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n\r\n\x80\r\n--y--\r\n--x--\r\n",
		"Content-Type: message/rfc822\r\n\r\nSubject: a\r\n\r\n\xe9",
		"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: a\r\n\r\n\xe9\r\n--d--",
		"\xe9", "", "\r\n\xe9 ", "A: b\r\n c\r\n\r\n=\xe9\t\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in, err := io.ReadAll(message.NewCRLFReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		conv, err := message.To7Bit(&out, bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if !conv.Unconvertible && bytes.ContainsFunc(out.Bytes(), func(r rune) bool { return r >= 0x80 }) {
			t.Fatalf("8-bit output %q", out.Bytes())
		}
		if !conv.Changed && !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("unchanged, yet %q became %q", in, out.Bytes())
		}
		var again bytes.Buffer
		conv2, err := message.To7Bit(&again, bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		if !conv.Unconvertible && (conv2.Changed || !bytes.Equal(again.Bytes(), out.Bytes())) {
			t.Fatalf("converting %q again changed it to %q", out.Bytes(), again.Bytes())
		}
	})
}

// FuzzTo7BitDecodes: a well-formed multipart message with a text part and
// a binary part of any content: the output parses with the standard
// library's MIME readers, is 7-bit, and each part decodes back to what
// was put in (text line ends made CRLF).
func FuzzTo7BitDecodes(f *testing.F) {
	f.Add([]byte("caf\xc3\xa9\r\nline"), []byte{0, 1, 0xff, '\r', '\n'}, false)
	f.Add([]byte("plain"), []byte("also plain"), true)
	f.Add([]byte("trailing space \r\n=3D\r\n.\r\n"), []byte("\x80"), false)
	f.Fuzz(func(t *testing.T, text, bin []byte, single bool) {
		text, _ = io.ReadAll(message.NewCRLFReader(bytes.NewReader(text)))
		const boundary = "=_postern_fuzz_boundary"
		if bytes.Contains(text, []byte(boundary)) || bytes.Contains(bin, []byte(boundary)) {
			return
		}
		var in bytes.Buffer
		if single {
			in.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
			in.Write(text)
		} else {
			in.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n\r\n")
			in.WriteString("--" + boundary + "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
			in.Write(text)
			in.WriteString("\r\n--" + boundary + "\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n")
			in.Write(bin)
			in.WriteString("\r\n--" + boundary + "--\r\n")
		}
		var out bytes.Buffer
		conv, err := message.To7Bit(&out, bytes.NewReader(in.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		if conv.Unconvertible || bytes.ContainsFunc(out.Bytes(), func(r rune) bool { return r >= 0x80 }) {
			t.Fatalf("%+v, output %q", conv, out.Bytes())
		}
		msg, err := mail.ReadMessage(bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatalf("output %q does not parse: %v", out.Bytes(), err)
		}
		if single {
			got := decode(t, msg.Header.Get("Content-Transfer-Encoding"), msg.Body)
			// The message's last line break is added when missing.
			want := text
			if !bytes.HasSuffix(want, []byte("\r\n")) && conv.Changed {
				want = append(append([]byte(nil), want...), "\r\n"...)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("text %q came back as %q from %q", want, got, out.Bytes())
			}
			return
		}
		_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		mr := multipart.NewReader(msg.Body, params["boundary"])
		for i, want := range [][]byte{text, bin} {
			p, err := mr.NextRawPart()
			if err != nil {
				t.Fatalf("part %d of %q: %v", i, out.Bytes(), err)
			}
			if got := decode(t, p.Header.Get("Content-Transfer-Encoding"), p); !bytes.Equal(got, want) {
				t.Fatalf("part %d: %q came back as %q from %q", i, want, got, out.Bytes())
			}
		}
	})
}

func decode(t *testing.T, cte string, r io.Reader) []byte {
	t.Helper()
	switch strings.ToLower(cte) {
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, r)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decoding %s: %v", cte, err)
	}
	return b
}

// TestReader7Bit: the stream is To7Bit's output, done tells the
// conversion at the end, and Close in the middle stops the goroutine.
func TestReader7Bit(t *testing.T) {
	in := "Subject: x\r\n\r\ncaf\xc3\xa9\r\n"
	want, _ := to7(t, in)
	r, done := message.Reader7Bit(strings.NewReader(in))
	got, err := io.ReadAll(r)
	if err != nil || string(got) != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	r.Close()
	if c := done(); c == nil || !c.Changed {
		t.Errorf("done() = %+v", c)
	}
	r, _ = message.Reader7Bit(strings.NewReader(in + strings.Repeat("x\r\n", 100000)))
	if _, err := r.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	r.Close()
}

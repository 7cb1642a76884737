package smtpclient

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"

	"postern/queue/message"
)

// viaTextproto is the reference: the content written through
// textproto.DotWriter alone, terminator included.
func viaTextproto(content []byte) []byte {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	dw := textproto.NewWriter(w).DotWriter()
	dw.Write(content)
	dw.Close()
	return b.Bytes()
}

// viaStuffData is what a transaction sends after the 354: the content's
// line ends made CRLF by the one line-end fixer, then writeData. The
// reader hands out one byte per Read when oneByte is set, so that every
// line break and dot falls on a read boundary somewhere.
func viaStuffData(t testing.TB, content []byte, oneByte bool) []byte {
	var b bytes.Buffer
	var src io.Reader = bytes.NewReader(content)
	if oneByte {
		src = iotest.OneByteReader(src)
	}
	cr := message.NewCRLFReader(src)
	defer cr.Release()
	if err := writeData(&b, cr); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestStuffData(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", stuffBufSize/16) // a buffer's worth
	for _, tt := range []struct{ name, in, want string }{
		{"empty", "", "\r\n.\r\n"},
		{"one line", "a\r\n", "a\r\n.\r\n"},
		{"no final line break", "a\r\nb", "a\r\nb\r\n.\r\n"},
		{"leading dots", ".a\r\n..b\r\nc.\r\n.\r\n", "..a\r\n...b\r\nc.\r\n..\r\n.\r\n"},
		{"bare LF", "a\nb\n", "a\r\nb\r\n.\r\n"},
		{"bare LF dot", "a\n.b\n", "a\r\n..b\r\n.\r\n"},
		// The one line-end fixer makes a lone CR a line end before
		// anything is stuffed: no bare CR reaches the wire.
		{"lone CR made a line end", "a\rb\r\n", "a\r\nb\r\n.\r\n"},
		{"lone CR dot", "a\r.b\r\n", "a\r\n..b\r\n.\r\n"},
		{"final lone CR", "a\r", "a\r\n.\r\n"},
		{"dot after buffer", big + "\r\n.x\r\n", big + "\r\n..x\r\n.\r\n"},
		{"CRLF across buffers", big[:len(big)-1] + "\r\n.\r\n", big[:len(big)-1] + "\r\n..\r\n.\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, oneByte := range []bool{false, true} {
				if got := viaStuffData(t, []byte(tt.in), oneByte); string(got) != tt.want {
					t.Errorf("oneByte %v: got %q, want %q", oneByte, trim(got), trim([]byte(tt.want)))
				}
			}
		})
	}
}

func trim(b []byte) []byte {
	if len(b) > 80 {
		return append(append(b[:40:40], "..."...), b[len(b)-40:]...)
	}
	return b
}

// FuzzStuffData: the wire bytes are exactly those of textproto.DotWriter
// given the content with its line ends made CRLF, for any content, in one
// read or a byte per read; and a server decodes them to that content.
func FuzzStuffData(f *testing.F) {
	for _, s := range []string{"", "a\r\n", ".\r\n", "a\nb", "\r", "\r\n.\r\n", "x\r\r\n", ".", "..\n.\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		got := viaStuffData(t, content, false)
		if one := viaStuffData(t, content, true); !bytes.Equal(one, got) {
			t.Fatalf("read boundaries change the output: %q vs %q", one, got)
		}
		crlf, err := io.ReadAll(message.NewCRLFReader(bytes.NewReader(content)))
		if err != nil {
			t.Fatal(err)
		}
		if want := viaTextproto(crlf); !bytes.Equal(got, want) {
			t.Fatalf("content %q: got %q, textproto %q", content, got, want)
		}
		// Decoded as a server would, the content comes back with its line
		// breaks as CRLF and a line break at the end.
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(got)))
		dec, err := io.ReadAll(r.DotReader())
		if err != nil {
			t.Fatalf("decoding %q: %v", got, err)
		}
		if n := bytes.Count(got, []byte("\r\n.\r\n")); n != 1 && !(n == 0 && bytes.HasPrefix(got, []byte(".\r\n"))) {
			t.Fatalf("%q has %d terminators", got, n)
		}
		// DotReader turns CRLF into LF; compare in that form.
		norm := bytes.ReplaceAll(crlf, []byte("\r\n"), []byte("\n"))
		if len(norm) == 0 || norm[len(norm)-1] != '\n' {
			norm = append(norm, '\n')
		}
		if !bytes.Equal(dec, norm) {
			t.Fatalf("content %q decodes to %q, want %q", content, dec, norm)
		}
	})
}

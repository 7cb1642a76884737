package message

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCRLFReader(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", ""},
		{"no line end", "abc", "abc"},
		{"CRLF kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"LF", "a\nb\n", "a\r\nb\r\n"},
		{"CR", "a\rb\r", "a\r\nb\r\n"},
		{"CR at EOF", "a\r", "a\r\n"},
		{"only CR", "\r", "\r\n"},
		{"only LF", "\n", "\r\n"},
		{"CRCR", "\r\r", "\r\n\r\n"},
		{"LFLF", "\n\n", "\r\n\r\n"},
		{"LFCR", "\n\r", "\r\n\r\n"},
		{"CR CRLF", "a\r\r\nb", "a\r\n\r\nb"},
		{"CRLF CR", "a\r\n\rb", "a\r\n\r\nb"},
		{"mixed", "a\nb\rc\r\nd", "a\r\nb\r\nc\r\nd"},
		// The SMTP smuggling shapes: after this reader, the only line
		// end left is CRLF, so no receiver can see a different dot line.
		{"smuggling LF dot LF", "x\n.\ny", "x\r\n.\r\ny"},
		{"smuggling CR dot CR", "x\r.\ry", "x\r\n.\r\ny"},
		{"long", strings.Repeat("ab\n", 40000), strings.Repeat("ab\r\n", 40000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := io.ReadAll(NewCRLFReader(strings.NewReader(tt.in)))
			if err != nil || string(got) != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
			// One byte at a time from below and from above.
			got, err = io.ReadAll(iotest.OneByteReader(NewCRLFReader(iotest.OneByteReader(strings.NewReader(tt.in)))))
			if err != nil || string(got) != tt.want {
				t.Errorf("one byte at a time: got %q, %v; want %q", got, err, tt.want)
			}
			// Reads of every size, and reads after EOF.
			if err := iotest.TestReader(NewCRLFReader(strings.NewReader(tt.in)), []byte(tt.want)); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestCRLFReaderError checks that an error from below reaches the caller
// after the bytes read before it.
func TestCRLFReaderError(t *testing.T) {
	boom := errors.New("boom")
	for _, in := range []string{"", "abc", "a\n", "a\r\n"} {
		got, err := io.ReadAll(NewCRLFReader(io.MultiReader(strings.NewReader(in), iotest.ErrReader(boom))))
		want := strings.ReplaceAll(strings.ReplaceAll(in, "\r\n", "\n"), "\n", "\r\n")
		if !errors.Is(err, boom) || string(got) != want {
			t.Errorf("%q then error: got %q, %v; want %q, %v", in, got, err, want, boom)
		}
	}
}

// TestCRLFReaderErrorAfterCR: an error that follows a bare CR must not be
// lost. It is (see the report): CRLFReader emits the LF for the pending CR
// and then reads again, and bufio.Reader hands out an error only once, so
// a reader whose error is not sticky gets its error swallowed and the
// stream continues as if nothing had happened.
func TestCRLFReaderErrorAfterCR(t *testing.T) {
	// TimeoutReader fails its second read only; the third read succeeds.
	r := iotest.TimeoutReader(io.MultiReader(strings.NewReader("a\r"), strings.NewReader("b")))
	got, err := io.ReadAll(NewCRLFReader(r))
	if !errors.Is(err, iotest.ErrTimeout) {
		t.Errorf("got %q, %v; want error %v", got, err, iotest.ErrTimeout)
	}
}

// normalize is the specification CRLFReader implements, written the
// obvious way: CRLF is one line end, and so is any other CR or LF.
func normalize(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

func FuzzCRLFReader(f *testing.F) {
	for _, s := range []string{"", "a\nb", "a\rb", "a\r\nb", "a\r", "\r\r", "\n\r\n\r", "x\n.\ny\r.\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(NewCRLFReader(bytes.NewReader(in)))
		if err != nil {
			t.Fatal(err)
		}
		// 1. No bare CR or LF: every CR is followed by LF, every LF
		// follows a CR.
		for i, c := range out {
			if c == '\r' && (i+1 == len(out) || out[i+1] != '\n') {
				t.Fatalf("%q: bare CR at %d of %q", in, i, out)
			}
			if c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("%q: bare LF at %d of %q", in, i, out)
			}
		}
		// 2. Nothing but line ends changes: without CR and LF, output
		// and input are the same bytes.
		strip := func(b []byte) []byte {
			return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r"), nil), []byte("\n"), nil)
		}
		if !bytes.Equal(strip(out), strip(in)) {
			t.Fatalf("%q: content changed: %q", in, out)
		}
		// 3. The line structure is kept: the output's CRLFs are exactly
		// the input's line ends, where CRLF counts once and any other CR
		// or LF counts once. Equivalently, the output is normalize(in).
		if want := normalize(string(in)); string(out) != want {
			t.Fatalf("%q: got %q, want %q", in, out, want)
		}
		// 4. The size of the reads, above and below, changes nothing.
		small, err := io.ReadAll(iotest.OneByteReader(NewCRLFReader(iotest.HalfReader(bytes.NewReader(in)))))
		if err != nil || !bytes.Equal(small, out) {
			t.Fatalf("%q: with one-byte reads got %q, %v; want %q", in, small, err, out)
		}
	})
}

// TestCRLFReaderReuse: a reader given back to the pool mid-stream (a bare
// CR pending, an error kept, output not drained) starts the next message
// clean.
func TestCRLFReaderReuse(t *testing.T) {
	c := NewCRLFReader(io.MultiReader(strings.NewReader("a\r"), iotest.ErrReader(errors.New("cut"))))
	p := make([]byte, 1)
	c.Read(p)
	c.Release()
	for range 3 { // whichever reader the pool hands out
		c := NewCRLFReader(strings.NewReader("b\nc\r\n"))
		got, err := io.ReadAll(c)
		c.Release()
		if err != nil || string(got) != "b\r\nc\r\n" {
			t.Fatalf("after reuse: %q, %v", got, err)
		}
	}
}

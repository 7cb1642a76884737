package message

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// TestReadHeaderPieces: where the header section read from the client
// stops, with reads small enough that long lines come in pieces: the rest
// of a long line (even one that is just its CRLF) never counts as a new
// line.
func TestReadHeaderPieces(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"empty line", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\n"},
		{"continuation", "A: 1\r\n  more\r\n\r\nbody\r\n", "A: 1\r\n  more\r\n\r\n"},
		{"a line that is not a field", "A: 1\r\nnot a field\r\nFrom: x\r\n\r\n", "A: 1\r\nnot a field\r\n"},
		{"no header", "body\r\nmore\r\n", "body\r\n"},
		{"a long line whose last piece is its CRLF", "X-Pad: " + strings.Repeat("p", 9) + "\r\nBcc: s@x.test\r\n\r\nbody\r\n",
			"X-Pad: " + strings.Repeat("p", 9) + "\r\nBcc: s@x.test\r\n\r\n"},
		{"a long line whose next piece starts like a body", "X-Pad: " + strings.Repeat("p", 9) + " x y z\r\nB: 2\r\n\r\n",
			"X-Pad: " + strings.Repeat("p", 9) + " x y z\r\nB: 2\r\n\r\n"},
		{"ends without an empty line", "A: 1\r\n", "A: 1\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// 16 bytes: "X-Pad: ppppppppp" fills the buffer exactly,
			// leaving "\r\n" (or the rest of the line) as the next piece.
			h, err := ReadHeader(bufio.NewReaderSize(strings.NewReader(tt.in), 16), 1<<20)
			if err != nil || string(h.Raw) != tt.want {
				t.Errorf("got %q, %v; want %q", h.Raw, err, tt.want)
			}
		})
	}
}

func TestParseHeader(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		fields   []string // names
		end      int
		ending   Ending
		raw      string
	}{
		{"empty line", "From: a\r\nTo: b\r\n\r\nbody\r\n", []string{"From", "To"}, 16, AtEmptyLine, "From: a\r\nTo: b\r\n\r\n"},
		{"folded", "Subject: a\r\n\tb\r\nX: 1\r\n\r\n", []string{"Subject", "X"}, 22, AtEmptyLine, "Subject: a\r\n\tb\r\nX: 1\r\n\r\n"},
		{"obsolete space before the colon", "From : a\r\n\r\n", []string{"From"}, 10, AtEmptyLine, "From : a\r\n\r\n"},
		{"a line that is not a field", "A: 1\r\nnot a field\r\nFrom: x\r\n", []string{"A"}, 6, AtBody, "A: 1\r\nnot a field\r\n"},
		{"no header", "body\r\n", nil, 0, AtBody, "body\r\n"},
		{"first line folded", " From: a\r\n\r\n", nil, 0, AtBody, " From: a\r\n"},
		{"no body", "A: 1\r\nB: 2", []string{"A", "B"}, 10, AtEOF, "A: 1\r\nB: 2"},
		{"empty", "", nil, 0, AtEOF, ""},
		{"bare LF", "A: 1\nB: 2\n\nbody", []string{"A", "B"}, 10, AtEmptyLine, "A: 1\nB: 2\n\n"},
		{"colon first", ": x\r\n\r\n", nil, 0, AtBody, ": x\r\n"},
		{"8-bit name", "Fr\xc3\xb6m: x\r\n\r\n", nil, 0, AtBody, "Fr\xc3\xb6m: x\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := ParseHeader([]byte(tt.in))
			var names []string
			for _, f := range h.Fields {
				names = append(names, f.Name)
			}
			if !slices.Equal(names, tt.fields) || h.End != tt.end || h.Ending != tt.ending || string(h.Raw) != tt.raw {
				t.Errorf("ParseHeader = fields %q, end %d, ending %d, raw %q; want %q, %d, %d, %q",
					names, h.End, h.Ending, h.Raw, tt.fields, tt.end, tt.ending, tt.raw)
			}
		})
	}
}

func TestValue(t *testing.T) {
	h := ParseHeader([]byte("Subject:  Hello,\r\n  world \r\nFrom:x@y\r\n\r\n"))
	if got := h.Value(h.Fields[0]); got != "Hello,  world" {
		t.Errorf("folded value %q", got)
	}
	if got := h.Value(h.Fields[1]); got != "x@y" {
		t.Errorf("value %q", got)
	}
	if n := h.Count("subject"); n != 1 {
		t.Errorf("Count(subject) = %d", n)
	}
}

func TestMaxFields(t *testing.T) {
	in := strings.Repeat("X: 1\r\n", MaxFields+1) + "\r\nbody"
	h := ParseHeader([]byte(in))
	if len(h.Fields) != MaxFields || h.Ending != AtBody || h.End != 6*MaxFields {
		t.Errorf("%d fields, ending %d, end %d; want %d, AtBody, %d", len(h.Fields), h.Ending, h.End, MaxFields, 6*MaxFields)
	}
}

// TestReadHeaderTooLarge: over the limit, the error, and the whole lines
// read before it.
func TestReadHeaderTooLarge(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		max      int
		raw      string
		fields   int
	}{
		{"at a line start", "A: 1\r\nB: 2\r\n\r\n", 8, "A: 1\r\n", 1},
		{"inside a field", "A: 1\r\nB: 22222222\r\n\r\n", 12, "A: 1\r\n", 1},
		{"inside a continuation", "A: 1\r\n 2222222222\r\n\r\n", 12, "A: 1\r\n", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bufio.NewReaderSize(strings.NewReader(tt.in), 16), tt.max)
			if !errors.Is(err, ErrHeaderTooLarge) {
				t.Fatalf("err %v, want ErrHeaderTooLarge", err)
			}
			if string(h.Raw) != tt.raw || h.End != len(tt.raw) || len(h.Fields) != tt.fields {
				t.Errorf("raw %q end %d fields %d; want %q, %d fields", h.Raw, h.End, len(h.Fields), tt.raw, tt.fields)
			}
		})
	}
	// Exactly at the limit is allowed.
	in := "A: 1\r\n\r\nbody"
	if _, err := ReadHeader(bufio.NewReader(strings.NewReader(in)), 8); err != nil {
		t.Errorf("a section of exactly the limit: %v", err)
	}
}

// FuzzParseHeader: reading from a stream in pieces of any size finds what
// parsing the message in memory finds; the fields tile the section; Raw is
// the start of the message; and what follows the section is untouched in
// the stream.
func FuzzParseHeader(f *testing.F) {
	for _, s := range []string{
		"From: a\r\nTo: b\r\n\r\nbody\r\n", "Subject: a\r\n\tb\r\n\r\n", "A: 1\r\nnot a field\r\n",
		" x\r\n", "", "\r\n", "A: 1", "X-Long: " + strings.Repeat("p", 40) + "\r\n\r\n", "A: 1\n\nb\r", ": \r\n",
	} {
		f.Add([]byte(s), uint8(16))
	}
	f.Fuzz(func(t *testing.T, in []byte, size uint8) {
		h := ParseHeader(in)
		if !bytes.HasPrefix(in, h.Raw) || h.End > len(h.Raw) {
			t.Fatalf("%q: raw %q, end %d", in, h.Raw, h.End)
		}
		pos := 0
		for _, fl := range h.Fields {
			if fl.Start != pos || fl.End <= fl.Start || fl.Name == "" {
				t.Fatalf("%q: field %+v after %d", in, fl, pos)
			}
			if name, ok := FieldName(h.Raw[fl.Start:fl.End]); !ok || name != fl.Name {
				t.Fatalf("%q: field %+v does not start with its name", in, fl)
			}
			pos = fl.End
		}
		if pos != h.End {
			t.Fatalf("%q: fields end at %d, the section at %d", in, pos, h.End)
		}
		br := bufio.NewReaderSize(iotest.HalfReader(bytes.NewReader(in)), 16+int(size))
		r, err := ReadHeader(br, len(in)+1)
		if err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(br)
		// A long line's later pieces are in the stream, not in Raw.
		if !bytes.Equal(append(bytes.Clone(r.Raw), rest...), in) || r.End != h.End || r.Ending != h.Ending || !slices.Equal(r.Fields, h.Fields) {
			t.Fatalf("%q: read %+v, parsed %+v", in, r, h)
		}
	})
}

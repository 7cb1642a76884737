package smtpd

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestBareNewlineGuard(t *testing.T) {
	for name, p := range smugglingPayloads {
		t.Run(name, func(t *testing.T) {
			in := "Subject: x\r\n\r\nbefore" + p + "MAIL FROM:<evil@x.test>\r\n"
			_, err := io.ReadAll(&bareNewlineGuard{r: strings.NewReader(in)})
			if !errors.Is(err, errBareFound) {
				t.Errorf("%q: err = %v, want errBareFound", in, err)
			}
			// One byte at a time: the state crosses reads.
			_, err = io.ReadAll(&bareNewlineGuard{r: iotest.OneByteReader(strings.NewReader(in))})
			if !errors.Is(err, errBareFound) {
				t.Errorf("%q one byte at a time: err = %v", in, err)
			}
		})
	}
	clean := "a\r\nb\r\n\r\n..\r\n"
	got, err := io.ReadAll(&bareNewlineGuard{r: iotest.OneByteReader(strings.NewReader(clean))})
	if err != nil || string(got) != clean {
		t.Errorf("clean input: %q, %v", got, err)
	}
}

// hasBare is the specification of bareNewlineGuard, written plainly.
func hasBare(b []byte) bool {
	s := bytes.ReplaceAll(b, []byte("\r\n"), nil)
	return bytes.ContainsAny(s, "\r\n")
}

func FuzzBareNewlineGuard(f *testing.F) {
	for _, p := range smugglingPayloads {
		f.Add([]byte("x" + p + "y"))
	}
	f.Add([]byte("a\r\nb\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := io.ReadAll(&bareNewlineGuard{r: iotest.HalfReader(bytes.NewReader(in))})
		if hasBare(in) != (err != nil) {
			t.Fatalf("%q: err = %v, want bare = %v", in, err, hasBare(in))
		}
		if err == nil && !bytes.Equal(got, in) {
			t.Fatalf("%q passed as %q", in, got)
		}
		// What passed before the error is clean, but for a last CR whose
		// fate the next byte decided.
		if err != nil && (hasBare(bytes.TrimSuffix(got, []byte("\r"))) || !bytes.HasPrefix(in, got)) {
			t.Fatalf("%q: passed %q before the error", in, got)
		}
	})
}

// The smuggling payloads of CVE-2023-51764 and its kin, as the session
// sees them (after go-smtp's DATA reader).
var smugglingPayloads = map[string]string{
	"<LF>.<LF>":          "\n.\n",
	"<CR>.<CR>":          "\r.\r",
	"<CR><LF>.<LF>":      "\r\n.\n",
	"<LF>.<CR><LF>":      "\n.\r\n",
	"<CR>.<CR><LF>":      "\r.\r\n",
	"<CR><LF>.<CR>X":     "\r\n.\rX",
	"<LF>.<CR>":          "\n.\r",
	"<CR>.<LF>":          "\r.\n",
	"bare LF":            "\n",
	"bare CR":            "\r",
	"CR at the end":      "\r",
	"<CR><CR><LF>":       "\r\r\n",
	"<LF><CR>":           "\n\r",
	"<CR><LF>.<NUL><LF>": "\r\n.\x00\n",
}

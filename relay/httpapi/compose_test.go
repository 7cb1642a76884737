package httpapi

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"mime"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/compose")

var composeNow = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

// boundaryRE finds MIME boundaries, which are random: the golden files
// hold them numbered in order of appearance.
var boundaryRE = regexp.MustCompile(`boundary=([0-9a-f]{20,})`)

func stableBoundaries(msg []byte) []byte {
	out := msg
	for i, m := range boundaryRE.FindAllSubmatch(msg, -1) {
		out = bytes.ReplaceAll(out, m[1], []byte("BOUNDARY"+string(rune('1'+i))))
	}
	return out
}

// TestCompose: each request shape against its golden message; the message
// is read back with go-message's reader (an independent parser of the
// result) and every line ends in CRLF and is 7-bit.
func TestCompose(t *testing.T) {
	for _, name := range []string{"text", "html", "alternative", "attachments", "international"} {
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", "compose", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var req SendRequest
			if err := json.Unmarshal(in, &req); err != nil {
				t.Fatal(err)
			}
			c, errs := compose(&req, composeNow)
			if errs != nil {
				t.Fatalf("compose: %v", errs)
			}
			got := stableBoundaries(c.msg)
			golden := filepath.Join("testdata", "compose", name+".eml")
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("message differs from %s:\n%s", golden, got)
			}
			for i, line := range bytes.SplitAfter(c.msg, []byte("\n")) {
				if len(line) > 0 && !bytes.HasSuffix(line, []byte("\r\n")) {
					t.Errorf("line %d does not end in CRLF: %q", i+1, line)
				}
				if len(line) > 1000 {
					t.Errorf("line %d is %d octets long", i+1, len(line))
				}
				for _, b := range line {
					if b >= 0x80 {
						t.Fatalf("line %d is not 7-bit: %q", i+1, line)
					}
				}
			}
			readBack(t, &req, c)
		})
	}
}

// readBack parses the built message and compares it with the request.
func readBack(t *testing.T, req *SendRequest, c *composed) {
	t.Helper()
	mr, err := gomail.CreateReader(bytes.NewReader(c.msg))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := mr.Header.Subject(); s != req.Subject {
		t.Errorf("Subject read back %q, want %q", s, req.Subject)
	}
	if mr.Header.Get("Bcc") != "" {
		t.Errorf("Bcc field in the message")
	}
	var texts []string
	var files []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		switch h := p.Header.(type) {
		case *gomail.InlineHeader:
			texts = append(texts, string(b))
		case *gomail.AttachmentHeader:
			fn, _ := h.Filename()
			files = append(files, fn+"="+string(b))
		}
	}
	var want []string
	if req.Text != "" || req.HTML == "" {
		want = append(want, strings.ReplaceAll(req.Text, "\n", "\r\n"))
	}
	if req.HTML != "" {
		want = append(want, strings.ReplaceAll(req.HTML, "\n", "\r\n"))
	}
	for i := range texts {
		texts[i] = strings.TrimSuffix(texts[i], "\r\n") // a single part's last line end
	}
	for i := range want {
		want[i] = strings.TrimSuffix(want[i], "\r\n")
	}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Errorf("text parts read back %q, want %q", texts, want)
	}
	var wantFiles []string
	for _, a := range req.Attachments {
		wantFiles = append(wantFiles, a.Filename+"="+string(a.Content))
	}
	if strings.Join(files, "|") != strings.Join(wantFiles, "|") {
		t.Errorf("attachments read back %q, want %q", files, wantFiles)
	}
}

// TestComposeRefusals: every problem of a request, by field, at once.
func TestComposeRefusals(t *testing.T) {
	req := &SendRequest{
		From:    "not an address",
		To:      []string{"ok@example.org", "bad@@example.org", "user%relay@example.org"},
		Bcc:     []string{"[192.0.2.1]"},
		Subject: "two\r\nlines",
		Headers: map[string]string{"Bcc": "x@y.test", "X-Ok": "fine", "X Bad": "v", "X-Inject": "a\r\nBcc: evil@x.test",
			"Content-Type": "text/evil", "Message-ID": "no-brackets"},
		Attachments: []Attachment{{Filename: "../etc/passwd", Content: []byte("x")}, {Filename: "a.bin", ContentType: "multipart/mixed"}},
		Tags:        []string{""},
		Metadata:    map[string]string{"": "v"},
	}
	_, errs := compose(req, composeNow)
	got := map[string]bool{}
	for _, e := range errs {
		got[e.Field] = true
	}
	for _, f := range []string{"from", "to[1]", "to[2]", "bcc[0]", "subject", `headers["Bcc"]`, `headers["X Bad"]`,
		`headers["X-Inject"]`, `headers["Content-Type"]`, `headers["Message-ID"]`, "attachments[0].filename",
		"attachments[1].content_type", "tags[0]", `metadata[""]`} {
		if !got[f] {
			t.Errorf("no error for %s; got %+v", f, errs)
		}
	}
	if got[`headers["X-Ok"]`] || got["to[0]"] {
		t.Errorf("a valid member refused: %+v", errs)
	}
	if _, errs := compose(&SendRequest{From: "a@example.org"}, composeNow); len(errs) != 2 {
		t.Errorf("no recipient and no body: %+v, want 2 errors", errs)
	}
}

// FuzzCompose: no request makes compose panic, and whatever it accepts is
// a message go-message can read, 7-bit, with CRLF line ends.
func FuzzCompose(f *testing.F) {
	for _, name := range []string{"text", "attachments", "international"} {
		b, err := os.ReadFile(filepath.Join("testdata", "compose", name+".json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"from":"a@b.example","to":["\"x\\\"y\" <c@d.example>"],"subject":"=?utf-8?q?x?=","text":"."}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var req SendRequest
		if json.Unmarshal(in, &req) != nil {
			return
		}
		c, errs := compose(&req, composeNow)
		if errs != nil {
			return
		}
		if _, err := gomessage.Read(bytes.NewReader(c.msg)); err != nil {
			t.Fatalf("built an unreadable message: %v\n%q", err, c.msg)
		}
		for _, b := range c.msg {
			if b >= 0x80 {
				t.Fatalf("8-bit message: %q", c.msg)
			}
		}
		if bytes.Contains(bytes.ReplaceAll(c.msg, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("bare LF: %q", c.msg)
		}
	})
}

// FuzzEncodeText: an encoded unstructured value decodes back to itself,
// is 7-bit, and folded after its field name has no line over 76
// characters unless a single character's word needs more.
func FuzzEncodeText(f *testing.F) {
	for _, s := range []string{"Grüße aus Köln — ☕ und 日本語 in a subject line that is long enough to need folding", "plain", "a_b=c?d", " lead and trail ", "日本語日本語日本語日本語日本語日本語日本語日本語"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !validText(s) {
			return
		}
		enc := encodeText(s, len("Subject: "))
		var dec mime.WordDecoder
		got, err := dec.DecodeHeader(enc)
		if err != nil || got != s {
			t.Fatalf("encodeText(%q) = %q, decodes to %q, %v", s, enc, got, err)
		}
		raw := fold("Subject", enc)
		for i, line := range strings.Split(strings.TrimSuffix(string(raw), "\r\n"), "\r\n") {
			if enc != s && len(line) > 76 {
				t.Errorf("line %d of %q is %d long", i, raw, len(line))
			}
			for _, c := range []byte(line) {
				if c >= 0x80 {
					t.Fatalf("8-bit line %q", line)
				}
			}
		}
	})
}

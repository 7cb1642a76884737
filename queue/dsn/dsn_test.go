package dsn

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern/queue/reply"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// loadCase reads testdata/<name>/report.json and, if present, original.eml.
func loadCase(t *testing.T, dir string) *Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := new(Report)
	if err := json.Unmarshal(data, r); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	if orig, err := os.ReadFile(filepath.Join(dir, "original.eml")); err == nil {
		r.Original = bytes.NewReader(orig)
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return r
}

// TestGolden composes each testdata case and compares it with want.eml
// byte for byte (house style, habit 8). go test -update rewrites them.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/report.json")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, p := range dirs {
		dir := filepath.Dir(p)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var out bytes.Buffer
			if err := Compose(&out, loadCase(t, dir)); err != nil {
				t.Fatal(err)
			}
			checkWire(t, out.Bytes())
			golden := filepath.Join(dir, "want.eml")
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("output differs from %s (go test -update rewrites it):\n%s", golden, out.Bytes())
			}
		})
	}
}

// checkWire asserts what every notification must satisfy on the wire: CRLF
// only, lines within RFC 5322's 998 octets, and 7-bit headers in the
// message header and in the delivery-status part.
func checkWire(t *testing.T, msg []byte) {
	t.Helper()
	for i, c := range msg {
		switch {
		case c == '\r' && (i+1 >= len(msg) || msg[i+1] != '\n'):
			t.Fatalf("bare CR at %d: %q", i, context(msg, i))
		case c == '\n' && (i == 0 || msg[i-1] != '\r'):
			t.Fatalf("bare LF at %d: %q", i, context(msg, i))
		}
	}
	for _, line := range bytes.Split(msg, []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("line of %d octets: %.80q...", len(line), line)
		}
	}
	// The top header and the second part (up to the third boundary) are
	// 7-bit; only a returned original may carry 8-bit text.
	end := len(msg)
	if i := bytes.Index(msg, []byte("\r\nContent-Description: Undelivered message")); i >= 0 {
		end = i
	}
	for i, c := range msg[:end] {
		if c >= 0x80 || (c < ' ' && c != '\r' && c != '\n' && c != '\t') || c == 0x7f {
			t.Fatalf("byte %#x at %d in header or report: %q", c, i, context(msg, i))
		}
	}
}

func context(b []byte, i int) []byte { return b[max(0, i-30):min(len(b), i+30)] }

// parsed is a notification taken apart with the standard library only.
type parsed struct {
	header  mail.Header
	text    string
	perMsg  textproto.MIMEHeader
	perRcpt []textproto.MIMEHeader
	third   string // Content-Type of the third part, "" if none
	orig    []byte
}

func parse(t *testing.T, msg []byte) *parsed {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	p := &parsed{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			if i < 2 {
				t.Fatalf("%d parts", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(part)
		if err != nil {
			t.Fatal(err)
		}
		ct := part.Header.Get("Content-Type")
		switch i {
		case 0:
			if ct != "text/plain; charset=us-ascii" {
				t.Errorf("part 1 is %q", ct)
			}
			p.text = string(body)
		case 1:
			if ct != "message/delivery-status" {
				t.Errorf("part 2 is %q", ct)
			}
			tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			if p.perMsg, err = tr.ReadMIMEHeader(); err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			for {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					p.perRcpt = append(p.perRcpt, h)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("per-recipient fields: %v", err)
				}
			}
		case 2:
			p.third, p.orig = ct, body
		default:
			t.Fatalf("unexpected part %d: %s", i+1, ct)
		}
	}
	return p
}

// valid is a baseline report; tests change one thing at a time.
func valid() *Report {
	return &Report{
		ReportingMTA: "mail.example.org",
		Sender:       "alice@example.org",
		Date:         time.Date(2026, 11, 24, 10, 5, 0, 0, time.UTC),
		MessageID:    "x1@mail.example.org",
		Boundary:     "b0undary",
		EnvelopeID:   "ENV-1",
		ArrivalDate:  time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
		Recipients: []Recipient{{
			OriginalRecipient: "rfc822;Bob@example.net",
			FinalRecipient:    "bob@example.net",
			Action:            Failed,
			RemoteMTA:         "mx.example.net",
			Reply:             rep(550, "5.1.1", "<bob@example.net>: no such user"),
			LastAttempt:       time.Date(2026, 11, 24, 10, 4, 0, 0, time.UTC),
		}},
		Original: strings.NewReader("Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody\r\n"),
	}
}

func compose(t *testing.T, r *Report) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Compose(&b, r); err != nil {
		t.Fatal(err)
	}
	checkWire(t, b.Bytes())
	return b.Bytes()
}

// TestParse reads a notification back with mime/multipart and
// net/textproto and checks every field.
func TestParse(t *testing.T) {
	p := parse(t, compose(t, valid()))
	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@mail.example.org>",
		"To":             "<alice@example.org>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Date":           "Tue, 24 Nov 2026 10:05:00 +0000",
		"Message-Id":     "<x1@mail.example.org>",
		"Auto-Submitted": "auto-replied",
		"Mime-Version":   "1.0",
	} {
		if got := p.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if addrs, err := p.header.AddressList("To"); err != nil || addrs[0].Address != "alice@example.org" {
		t.Errorf("To does not parse: %v %v", addrs, err)
	}
	for k, want := range map[string]string{
		"Reporting-Mta":        "dns; mail.example.org",
		"Original-Envelope-Id": "ENV-1",
		"Arrival-Date":         "Tue, 24 Nov 2026 10:00:00 +0000",
	} {
		if got := p.perMsg.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if len(p.perRcpt) != 1 {
		t.Fatalf("%d recipient blocks", len(p.perRcpt))
	}
	for k, want := range map[string]string{
		"Original-Recipient": "rfc822; Bob@example.net",
		"Final-Recipient":    "rfc822; bob@example.net",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx.example.net",
		"Diagnostic-Code":    "smtp; 550 5.1.1 <bob@example.net>: no such user",
		"Last-Attempt-Date":  "Tue, 24 Nov 2026 10:04:00 +0000",
		"Will-Retry-Until":   "",
	} {
		if got := p.perRcpt[0].Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(p.text, "550 5.1.1 <bob@example.net>: no such user") || !strings.Contains(p.text, "mx.example.net") {
		t.Errorf("explanation does not quote the reply:\n%s", p.text)
	}
	if p.third != "text/rfc822-headers" || string(p.orig) != "Subject: hi\r\nFrom: alice@example.org\r\n" {
		t.Errorf("third part %q: %q", p.third, p.orig)
	}
}

// TestVariants: a valid baseline, one change per case (house style,
// habit 9).
func TestVariants(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Report)
		check  func(*testing.T, *parsed)
	}{
		{"RET=FULL returns the whole message", func(r *Report) { r.Return = Full }, func(t *testing.T, p *parsed) {
			if p.third != "message/rfc822" || !strings.HasSuffix(string(p.orig), "\r\n\r\nbody\r\n") {
				t.Errorf("third part %q: %q", p.third, p.orig)
			}
		}},
		{"no original, no third part", func(r *Report) { r.Original = nil }, func(t *testing.T, p *parsed) {
			if p.third != "" {
				t.Errorf("third part %q", p.third)
			}
		}},
		{"no ENVID, no ORCPT", func(r *Report) { r.EnvelopeID = ""; r.Recipients[0].OriginalRecipient = "" }, func(t *testing.T, p *parsed) {
			if _, ok := p.perMsg["Original-Envelope-Id"]; ok {
				t.Error("Original-Envelope-Id present")
			}
			if _, ok := p.perRcpt[0]["Original-Recipient"]; ok {
				t.Error("Original-Recipient present")
			}
		}},
		{"status derived without an enhanced code", func(r *Report) { r.Recipients[0].Reply = rep(550, "", "no") }, func(t *testing.T, p *parsed) {
			if got := p.perRcpt[0].Get("Status"); got != "5.0.0" {
				t.Errorf("Status = %q", got)
			}
		}},
		{"status class must fit the action", func(r *Report) { r.Recipients[0].Reply = rep(452, "4.2.2", "full") }, func(t *testing.T, p *parsed) {
			if got := p.perRcpt[0].Get("Status"); got != "5.0.0" {
				t.Errorf("Status = %q", got)
			}
		}},
		{"explicit status wins", func(r *Report) { r.Recipients[0].Status = enh(5, 4, 7) }, func(t *testing.T, p *parsed) {
			if got := p.perRcpt[0].Get("Status"); got != "5.4.7" {
				t.Errorf("Status = %q", got)
			}
		}},
		{"local failure is not an smtp diagnostic", func(r *Report) {
			r.Recipients[0].Reply = rep(0, "", "lookup example.net: no such host")
			r.Recipients[0].RemoteMTA = ""
		}, func(t *testing.T, p *parsed) {
			if got := p.perRcpt[0].Get("Diagnostic-Code"); got != "X-Postern; lookup example.net: no such host" {
				t.Errorf("Diagnostic-Code = %q", got)
			}
			if _, ok := p.perRcpt[0]["Remote-Mta"]; ok {
				t.Error("Remote-MTA present")
			}
		}},
		{"delayed", func(r *Report) {
			r.Recipients[0].Action = Delayed
			r.Recipients[0].Reply = rep(451, "4.3.0", "later")
			r.Recipients[0].WillRetryUntil = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
		}, func(t *testing.T, p *parsed) {
			if got := p.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
				t.Errorf("Subject = %q", got)
			}
			if got := p.perRcpt[0].Get("Will-Retry-Until"); got != "Sun, 29 Nov 2026 10:00:00 +0000" {
				t.Errorf("Will-Retry-Until = %q", got)
			}
			if got := p.perRcpt[0].Get("Status"); got != "4.3.0" {
				t.Errorf("Status = %q", got)
			}
		}},
		{"delivered", func(r *Report) {
			r.Recipients[0].Action = Delivered
			r.Recipients[0].Reply = rep(250, "2.0.0", "ok")
		}, func(t *testing.T, p *parsed) {
			if got := p.header.Get("Subject"); got != "Successful Mail Delivery Report" {
				t.Errorf("Subject = %q", got)
			}
			if got := p.perRcpt[0].Get("Status"); got != "2.0.0" {
				t.Errorf("Status = %q", got)
			}
		}},
		{"long reply folded, not cut", func(r *Report) {
			r.Recipients[0].Reply = rep(550, "5.7.1", strings.Repeat("word ", 100)+"end")
		}, func(t *testing.T, p *parsed) {
			want := "smtp; 550 5.7.1 " + strings.Repeat("word ", 100) + "end"
			if got := p.perRcpt[0].Get("Diagnostic-Code"); got != want {
				t.Errorf("Diagnostic-Code after unfolding = %q", got)
			}
		}},
		{"header injection through a reply", func(r *Report) {
			r.Recipients[0].Reply = rep(550, "", "no\r\nX-Injected: yes\nAction: delivered")
		}, func(t *testing.T, p *parsed) {
			if _, ok := p.perRcpt[0]["X-Injected"]; ok || p.perRcpt[0].Get("Action") != "failed" {
				t.Errorf("injected: %v", p.perRcpt[0])
			}
		}},
		{"non-ASCII sender", func(r *Report) { r.Sender = "josé@example.org" }, func(t *testing.T, p *parsed) {
			if got := p.header.Get("To"); got != "undisclosed-recipients:;" {
				t.Errorf("To = %q", got)
			}
		}},
		{"non-ASCII recipient", func(r *Report) { r.Recipients[0].FinalRecipient = "josé@example.org" }, func(t *testing.T, p *parsed) {
			if got := p.perRcpt[0].Get("Final-Recipient"); got != `utf-8; jos\x{E9}@example.org` {
				t.Errorf("Final-Recipient = %q", got)
			}
		}},
		{"several recipients, in order", func(r *Report) {
			r.Recipients = append(r.Recipients, Recipient{FinalRecipient: "c@example.com", Action: Failed, Reply: rep(554, "5.7.1", "spam")})
		}, func(t *testing.T, p *parsed) {
			if len(p.perRcpt) != 2 || p.perRcpt[1].Get("Final-Recipient") != "rfc822; c@example.com" || p.perRcpt[1].Get("Status") != "5.7.1" {
				t.Errorf("blocks: %v", p.perRcpt)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.change(r)
			tt.check(t, parse(t, compose(t, r)))
		})
	}
}

func TestErrors(t *testing.T) {
	errRead := errors.New("disk on fire")
	tests := []struct {
		name   string
		change func(*Report)
		want   error
	}{
		{"no recipients", func(r *Report) { r.Recipients = nil }, ErrNoRecipients},
		{"no hostname", func(r *Report) { r.ReportingMTA = "" }, ErrNoHostname},
		{"hostname with a space", func(r *Report) { r.ReportingMTA = "a b" }, ErrNoHostname},
		{"status detail over 999", func(r *Report) { r.Recipients[0].Status = enh(5, 1000, 0) }, ErrBadStatus},
		{"status of class 3", func(r *Report) { r.Recipients[0].Status = enh(3, 0, 0) }, ErrBadStatus},
		{"bad action", func(r *Report) { r.Recipients[0].Action = "lost" }, ErrBadAction},
		{"bad boundary", func(r *Report) { r.Boundary = "a\r\nb" }, ErrBadBoundary},
		{"unreadable original", func(r *Report) { r.Original = io.MultiReader(strings.NewReader("Subject: x\r\n"), iotestErr{errRead}) }, errRead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.change(r)
			if err := Compose(io.Discard, r); !errors.Is(err, tt.want) {
				t.Errorf("Compose = %v, want %v", err, tt.want)
			}
		})
	}
}

type iotestErr struct{ err error }

func (r iotestErr) Read([]byte) (int, error) { return 0, r.err }

// TestDefaults: without Date, MessageID and Boundary, Compose makes them,
// and two reports get different boundaries and IDs.
func TestDefaults(t *testing.T) {
	a, b := valid(), valid()
	for _, r := range []*Report{a, b} {
		r.Date, r.MessageID, r.Boundary = time.Time{}, "", ""
		r.Original = nil
	}
	pa, pb := parse(t, compose(t, a)), parse(t, compose(t, b))
	if pa.header.Get("Message-Id") == pb.header.Get("Message-Id") || !strings.HasSuffix(pa.header.Get("Message-Id"), "@mail.example.org>") {
		t.Errorf("Message-IDs %q %q", pa.header.Get("Message-Id"), pb.header.Get("Message-Id"))
	}
	if pa.header.Get("Content-Type") == pb.header.Get("Content-Type") {
		t.Error("same boundary twice")
	}
	if _, err := pa.header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
}

// TestLongOriginalLines: the original comes back whole, with its lines
// (a sender's program may write up to go-smtp's 2,000 octets, and a
// damaged stored message anything) broken every hardLimit octets by CRLF
// and a space, so that no line of the report passes RFC 5322's 998; in the
// header section that is a fold, and the field stays one field.
func TestLongOriginalLines(t *testing.T) {
	// The first piece is hardLimit octets; the space that starts each
	// later one counts, so they carry hardLimit-1 of the line.
	broken := func(line string) string {
		n := min(len(line), hardLimit)
		out := line[:n]
		for line = line[n:]; len(line) > 0; line = line[n:] {
			n = min(len(line), hardLimit-1)
			out += "\r\n " + line[:n]
		}
		return out
	}
	for _, n := range []int{hardLimit - 9, hardLimit - 8, 4095, 4096, 10000} {
		long := strings.Repeat("x", n)
		subject, body := broken("Subject: "+long), broken(long)
		orig := "Subject: " + long + "\r\nX: y\r\n\r\n" + long + "\r\n"
		r := valid()
		r.Return = Full
		r.Original = strings.NewReader(orig)
		var b bytes.Buffer
		if err := Compose(&b, r); err != nil {
			t.Fatal(err)
		}
		checkWire(t, b.Bytes())
		if !bytes.Contains(b.Bytes(), []byte("\r\n\r\n"+subject+"\r\nX: y\r\n\r\n"+body+"\r\n\r\n--b0undary--\r\n")) {
			t.Errorf("n=%d: original not returned with its lines broken at %d", n, hardLimit)
		}
		r.Return = Headers
		r.Original = strings.NewReader(orig)
		b.Reset()
		if err := Compose(&b, r); err != nil {
			t.Fatal(err)
		}
		checkWire(t, b.Bytes())
		if !bytes.Contains(b.Bytes(), []byte("\r\n\r\n"+subject+"\r\nX: y\r\n\r\n--b0undary--\r\n")) {
			t.Errorf("n=%d: header section not returned with its lines broken at %d", n, hardLimit)
		}
	}
}

// FuzzCompose: whatever the remote replies and whatever addresses the
// envelope held, the result is CRLF-only, 7-bit where it must be, within
// line limits, parseable, and Compose does not panic.
func FuzzCompose(f *testing.F) {
	f.Add("550 5.1.1 no such user", "bob@example.net", "alice@example.org", "rfc822;bob@example.net", "mx.example.net", "ENV", "Subject: x\r\n\r\nbody")
	f.Add("550-a\r\n550 b", "用户@例子.测试", "héllo@x", "x", "mx\r\n", "a\rb", "no header end\n")
	f.Add("", "", "", "", "", "", "")
	f.Add("4\xff\xfe\r\r\n\n", "<>", "<<a>>", ";;", " ", "\x00", "\r\n\r\n")
	f.Fuzz(func(t *testing.T, reply, rcpt, sender, orcpt, mta, envid, orig string) {
		for _, ret := range []Return{Headers, Full} {
			r := valid()
			r.Sender, r.EnvelopeID, r.Return = sender, envid, ret
			// The fuzzed text as a remote's reply, and as postern's own words.
			r.Recipients[0].Reply = rep(550, "5.1.1", reply)
			r.Recipients[0].FinalRecipient = rcpt
			r.Recipients[0].OriginalRecipient = orcpt
			r.Recipients[0].RemoteMTA = mta
			r.Recipients = append(r.Recipients, Recipient{FinalRecipient: rcpt, Action: Delayed, Reply: rep(0, "", reply)})
			r.Original = strings.NewReader(orig)
			var b bytes.Buffer
			if err := Compose(&b, r); err != nil {
				t.Fatalf("Compose: %v", err)
			}
			checkWire(t, b.Bytes())
			p := parse(t, b.Bytes())
			if len(p.perRcpt) != 2 || p.perRcpt[0].Get("Action") != "failed" || p.perRcpt[1].Get("Action") != "delayed" {
				t.Fatalf("recipient blocks: %v", p.perRcpt)
			}
		}
	})
}

// TestLongReportingMTA: a host name of any valid length (up to 253
// characters) still gets a DSN: the generated boundary is cut to RFC 2046's
// 70 characters instead of failing every Compose.
func TestLongReportingMTA(t *testing.T) {
	for _, host := range []string{
		strings.Repeat("a", 44) + ".test",
		strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 57) + ".test",
	} {
		r := valid()
		r.ReportingMTA, r.Boundary = host, ""
		var b bytes.Buffer
		if err := Compose(&b, r); err != nil {
			t.Fatalf("host of %d characters: %v", len(host), err)
		}
		checkWire(t, b.Bytes())
		if p := parse(t, b.Bytes()); len(p.perRcpt) != 1 {
			t.Errorf("host of %d characters: %d recipient blocks", len(host), len(p.perRcpt))
		}
	}
}

// rep is a reply: code (0 for none), enhanced code ("" for none), text.
func rep(code int, enhanced, text string) reply.Reply {
	return reply.Reply{Code: code, Enhanced: reply.MustEnhanced(enhanced), Text: text}
}

func enh(class, subject, detail int) reply.Enhanced {
	return reply.Enhanced{Class: class, Subject: subject, Detail: detail}
}

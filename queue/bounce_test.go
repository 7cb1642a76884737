package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBounceOn550: recipients failing with 550 at two domains in the same
// lease get one DSN, queued with the null sender to the original sender,
// reporting both with the remote's words; the delivered one is not in it.
func TestBounceOn550(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "5.1.1", "<b@x.test>: no such user"))
	h.fake.on("d@y.test", 1, Permanent, rp(554, "5.7.1", "rejected as spam"))
	q := h.open()
	const orig = "From: alice@example.org\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody text\r\n"
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test", "c@x.test", "d@y.test"}, EnvID: "E-1",
		DSN: []RcptDSN{{ORcpt: "rfc822;B@x.test"}, {}, {}}}
	id, err := q.Enqueue(context.Background(), env, strings.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	if n := h.step(); n != 2 {
		t.Fatalf("%d jobs, want one per domain", n)
	}

	m, rep := h.onlyDSN()
	if m.Envelope.From != "" || !slices.Equal(m.Envelope.Rcpts, []string{"alice@example.org"}) ||
		m.State != StateQueued || !m.Created.Equal(t0) {
		t.Errorf("DSN envelope = %+v", m)
	}
	if got := rep.header.Get("To"); got != "<alice@example.org>" {
		t.Errorf("To = %q", got)
	}
	if got := rep.header.Get("From"); got != "Mail Delivery System <MAILER-DAEMON@mail.test>" {
		t.Errorf("From = %q", got)
	}
	if got := rep.header.Get("Subject"); got != "Undelivered Mail Returned to Sender" {
		t.Errorf("Subject = %q", got)
	}
	if rep.perMsg.Get("Reporting-Mta") != "dns; mail.test" || rep.perMsg.Get("Original-Envelope-Id") != "E-1" {
		t.Errorf("per-message fields %v", rep.perMsg)
	}
	if len(rep.perRcpt) != 2 {
		t.Fatalf("%d recipient blocks, want 2: %v", len(rep.perRcpt), rep.perRcpt)
	}
	b := rep.rcptBlock(t, "b@x.test")
	for k, want := range map[string]string{
		"Original-Recipient": "rfc822; B@x.test",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx.test",
		"Diagnostic-Code":    "smtp; 550 5.1.1 <b@x.test>: no such user",
		"Last-Attempt-Date":  t0.Format(time.RFC1123Z),
	} {
		if got := b.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := rep.rcptBlock(t, "d@y.test").Get("Status"); got != "5.7.1" {
		t.Errorf("d: Status = %q", got)
	}
	if rep.third != "text/rfc822-headers" || !strings.Contains(string(rep.orig), "Message-ID: <m1@example.org>") ||
		strings.Contains(string(rep.orig), "body text") {
		t.Errorf("returned original (%s): %q", rep.third, rep.orig)
	}
	// The original is final (c delivered, b and d failed): its record is
	// kept, the body is not.
	if got := h.get(id); got.State != StateFailed {
		t.Errorf("original state = %s", got.State)
	}
	if d := q.Depth(); d[StateQueued] != 1 || d[StateFailed] != 1 {
		t.Errorf("Depth = %v", d)
	}
	if o := h.obs.get(); o != [5]int{1, 0, 2, 1, 2} {
		t.Errorf("observer [delivered deferred failed bounced attempts] = %v", o)
	}

	// The DSN is delivered like any message, and never bounced itself.
	h.fake.on("alice@example.org", 1, Permanent, rp(550, "", "gone"))
	if n := h.step(); n != 1 {
		t.Fatalf("DSN not leased: %d jobs", n)
	}
	calls := h.fake.Calls()
	last := calls[len(calls)-1]
	if last.From != "" || !slices.Equal(last.Rcpts, []string{"alice@example.org"}) || !bytes.HasPrefix(last.body, []byte("From: Mail Delivery System")) {
		t.Errorf("DSN delivery = %+v", last.Delivery)
	}
	if ds := h.dsns(); len(ds) != 0 {
		t.Errorf("a DSN bounced: %d DSNs queued", len(ds))
	}
}

// TestBounceSeparateSteps: recipients failing in different attempts get a
// DSN each, and none is reported twice.
func TestBounceSeparateSteps(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no b"))
	h.fake.on("c@y.test", 1, Temporary, rp(451, "", "later"))
	h.fake.on("c@y.test", 2, Permanent, rp(550, "", "no c"))
	q := h.open()
	h.enqueue("alice@example.org", "Subject: x\r\n\r\n", "b@x.test", "c@y.test")
	h.step()
	_, rep := h.onlyDSN()
	if len(rep.perRcpt) != 1 || rep.perRcpt[0].Get("Final-Recipient") != "rfc822; b@x.test" {
		t.Fatalf("first DSN: %v", rep.perRcpt)
	}
	h.fake.on("alice@example.org", 1, Temporary, rp(451, "", "keep the DSN queued"))
	h.clock.Advance(time.Minute)
	h.step() // the first DSN and c's second attempt
	var second *report
	for _, m := range h.dsns() {
		if r := parseReport(t, h.body(m.ID)); r.perRcpt[0].Get("Final-Recipient") == "rfc822; c@y.test" {
			second = r
		}
	}
	if len(h.dsns()) != 2 || second == nil || len(second.perRcpt) != 1 {
		t.Fatalf("want a second DSN for c only; DSNs: %d", len(h.dsns()))
	}
	_ = q
}

func TestNoBounceForNullSender(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	h.open()
	id := h.enqueue("", "Subject: a bounce\r\n\r\n", "b@x.test")
	h.step()
	if ds := h.dsns(); len(ds) != 0 {
		t.Fatalf("bounced a message with the null sender: %d DSNs", len(ds))
	}
	if m := h.get(id); m.State != StateFailed {
		t.Errorf("state %s", m.State)
	}
	if o := h.obs.get(); o[3] != 0 {
		t.Errorf("Bounced called %d times", o[3])
	}
}

// TestNotify: RFC 3461 NOTIFY decides which outcomes are reported.
func TestNotify(t *testing.T) {
	fail := Result{Outcome: Permanent, Reply: rp(550, "5.1.1", "no"), RemoteMTA: "mx.test"}
	ok := Result{Outcome: Delivered, Reply: rp(250, "2.0.0", "ok"), RemoteMTA: "mx.test"}
	okDSN := Result{Outcome: Delivered, Reply: rp(250, "2.0.0", "ok"), RemoteMTA: "mx.test", RemoteDSN: true}
	tests := []struct {
		name       string
		notify     []string
		res        Result
		wantAction string // "" = no DSN
	}{
		{"absent, failure", nil, fail, "failed"},
		{"absent, success", nil, ok, ""},
		{"NEVER, failure", []string{"NEVER"}, fail, ""},
		{"FAILURE, failure", []string{"FAILURE"}, fail, "failed"},
		{"DELAY only, failure", []string{"DELAY"}, fail, ""},
		{"SUCCESS only, failure", []string{"SUCCESS"}, fail, ""},
		{"SUCCESS, relayed to a server without DSN", []string{"SUCCESS"}, ok, "relayed"},
		{"SUCCESS, remote took over DSN", []string{"SUCCESS", "FAILURE"}, okDSN, ""},
		{"lower case", []string{"success"}, ok, "relayed"},
		{"FAILURE, success", []string{"FAILURE"}, ok, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.fake.result("b@x.test", 1, tt.res)
			q := h.open()
			env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, DSN: []RcptDSN{{Notify: tt.notify}}}
			if _, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			h.step()
			calls := h.fake.Calls()
			if d := calls[0].DSN; len(d) != 1 || !slices.Equal(d[0].Notify, tt.notify) {
				t.Errorf("Delivery.DSN = %+v", d)
			}
			ds := h.dsns()
			if tt.wantAction == "" {
				if len(ds) != 0 {
					t.Fatalf("%d DSNs, want none", len(ds))
				}
				return
			}
			_, rep := h.onlyDSN()
			if got := rep.perRcpt[0].Get("Action"); got != tt.wantAction {
				t.Errorf("Action = %q, want %q", got, tt.wantAction)
			}
			if tt.wantAction == "relayed" && rep.header.Get("Subject") != "Successful Mail Delivery Report" {
				t.Errorf("Subject = %q", rep.header.Get("Subject"))
			}
		})
	}
}

// TestDelayWarningOnce: a recipient still deferred DelayWarning after
// acceptance gets one "delayed" DSN, and only one.
func TestDelayWarningOnce(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 24 * time.Hour}
	h.opts = func(o *Options) { o.DelayWarning = 2 * time.Hour }
	for a := 1; a <= 6; a++ {
		h.fake.on("b@x.test", a, Temporary, rp(451, "4.7.1", "greylisted"))
		h.fake.on("n@x.test", a, Temporary, rp(451, "4.7.1", "greylisted"))
		h.fake.on("alice@example.org", a, Temporary, rp(451, "", "keep DSNs queued"))
	}
	q := h.open()
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test", "n@x.test"},
		DSN: []RcptDSN{{}, {Notify: []string{"FAILURE"}}}}
	id, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	h.step()                   // 0h
	h.clock.Advance(time.Hour) // 1h: not yet
	h.step()
	if ds := h.dsns(); len(ds) != 0 {
		t.Fatalf("warned after 1h")
	}
	h.clock.Advance(time.Hour) // 2h: warn
	h.step()
	_, rep := h.onlyDSN()
	if got := rep.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
		t.Errorf("Subject = %q", got)
	}
	// n asked for FAILURE only: no delay warning for it.
	if len(rep.perRcpt) != 1 {
		t.Fatalf("blocks: %v", rep.perRcpt)
	}
	b := rep.rcptBlock(t, "b@x.test")
	if b.Get("Action") != "delayed" || b.Get("Status") != "4.7.1" ||
		b.Get("Will-Retry-Until") != t0.Add(24*time.Hour).Format(time.RFC1123Z) {
		t.Errorf("block %v", b)
	}
	for range 3 {
		h.clock.Advance(time.Hour)
		h.step()
	}
	if n := len(h.dsns()); n != 1 {
		t.Errorf("%d DSNs after more attempts, want the one warning", n)
	}
	if m := h.get(id); m.State != StateDeferred {
		t.Errorf("state %s", m.State)
	}
}

// TestExpiryBounce: the lifetime running out is a failure with status
// 5.4.7, quoting the last reply.
func TestExpiryBounce(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 90 * time.Minute}
	h.fake.on("b@x.test", 1, Temporary, rp(421, "4.4.2", "busy"))
	h.fake.on("b@x.test", 2, Temporary, rp(421, "4.4.2", "busy"))
	h.open()
	h.enqueue("alice@example.org", "Subject: x\r\n\r\n", "b@x.test")
	h.step()
	h.clock.Advance(2 * time.Hour)
	h.step()
	_, rep := h.onlyDSN()
	b := rep.rcptBlock(t, "b@x.test")
	if b.Get("Status") != "5.4.7" || !strings.Contains(b.Get("Diagnostic-Code"), "421 4.4.2 busy") || b.Get("Action") != "failed" {
		t.Errorf("block %v", b)
	}
}

// TestBounceRetFull: RET=FULL of a spooled message returns it whole; the
// DSN is spooled too, and everything is cleaned up once delivered.
func TestBounceRetFull(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	orig := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", inlineMax/16)
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, Ret: "FULL"}
	if _, err := q.Enqueue(context.Background(), env, strings.NewReader(orig)); err != nil {
		t.Fatal(err)
	}
	h.step()
	m, rep := h.onlyDSN()
	if rep.third != "message/rfc822" || string(rep.orig) != orig {
		t.Errorf("returned original: %s, %d bytes (want %d)", rep.third, len(rep.orig), len(orig))
	}
	if files := spoolFiles(t, h.spoolDir()); len(files) != 1 || m.Size <= inlineMax {
		t.Errorf("spool holds %v (the DSN of %d bytes alone expected)", files, m.Size)
	}
	h.step() // deliver the DSN
	if files := spoolFiles(t, h.spoolDir()); len(files) != 0 {
		t.Errorf("spool files left: %v", files)
	}
}

// TestBounceREQUIRETLS: the DSN of a REQUIRETLS message returns only the
// header section, RET=FULL notwithstanding, and is itself sent with
// REQUIRETLS (RFC 8689 §5).
func TestBounceREQUIRETLS(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "5.7.30", "REQUIRETLS support required"))
	q := h.open()
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, Ret: "FULL", RequireTLS: true}
	if _, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: secret\r\n\r\nthe body\r\n")); err != nil {
		t.Fatal(err)
	}
	h.step()
	m, rep := h.onlyDSN()
	if rep.third != "text/rfc822-headers" || strings.Contains(string(rep.orig), "the body") {
		t.Errorf("returned original: %s %q, want the header section only", rep.third, rep.orig)
	}
	if !m.Envelope.RequireTLS {
		t.Error("the DSN goes out without REQUIRETLS")
	}
}

// TestBounceRetFullPrefixed: a spooled message enqueued with a prefix (the
// relay's Received field and DKIM signatures) comes back in its DSN with
// the prefix, as it was delivered and as an inline one does.
func TestBounceRetFullPrefixed(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	const prefix = "Received: from client by postern\r\n"
	orig := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", inlineMax/16)
	env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, Ret: "FULL"}
	if _, err := q.EnqueuePrefixed(context.Background(), env, strings.NewReader(orig),
		func() ([]byte, error) { return []byte(prefix), nil }); err != nil {
		t.Fatal(err)
	}
	h.step()
	if got := h.fake.Calls()[0].body; string(got) != prefix+orig {
		t.Fatalf("delivered %d bytes, want the prefix and the %d of the message", len(got), len(orig))
	}
	_, rep := h.onlyDSN()
	if rep.third != "message/rfc822" || string(rep.orig) != prefix+orig {
		t.Errorf("returned original: %s, %d bytes starting %.40q (want %d starting with the prefix)",
			rep.third, len(rep.orig), rep.orig, len(prefix+orig))
	}
}

// TestBounceOnceAcrossRestart: the DSN is committed with the failure, so a
// restart neither loses nor repeats it.
func TestBounceOnceAcrossRestart(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	h.enqueue("alice@example.org", "Subject: x\r\n\r\n", "b@x.test")
	h.step()
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.fake = newFake()
	h.fake.on("alice@example.org", 1, Temporary, rp(451, "", "later"))
	h.open()
	h.step()
	if n := len(h.dsns()); n != 1 {
		t.Errorf("%d DSNs after restart, want 1", n)
	}
}

// TestDSNWithoutOriginal: an original that cannot be read still gets its
// DSN, without the third part, instead of dropping the results.
func TestDSNWithoutOriginal(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	h.enqueue("alice@example.org", string(randomBody(t, inlineMax+1)), "b@x.test")
	jobs, _, err := q.lease(t0, 10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("lease: %d, %v", len(jobs), err)
	}
	// The spool file turns into something that opens but cannot be read.
	files := spoolFiles(t, h.spoolDir())
	p := filepath.Join(h.spoolDir(), files[0])
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	q.record(jobs[0], []Result{{Outcome: Permanent, Reply: rp(550, "", "no"), RemoteMTA: "mx.test"}})
	<-h.done
	q.release(jobs[0])
	_, rep := h.onlyDSN()
	if rep.third != "" || rep.rcptBlock(t, "b@x.test").Get("Action") != "failed" {
		t.Errorf("DSN: third part %q, blocks %v", rep.third, rep.perRcpt)
	}
	if h.logs.FilterMessage("DSN without the original").Len() != 1 {
		t.Error("no log line for the missing original")
	}
}

// TestBounceWhenSpoolFileIsGone: a failure of a spooled message whose
// file has disappeared (an operator, a disk error) is still recorded and
// reported, without the original, instead of being retried for ever.
func TestBounceWhenSpoolFileIsGone(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "5.1.1", "no such user"))
	q := h.open()
	big := "Subject: big\r\n\r\n" + strings.Repeat("x", inlineMax+1)
	id, err := q.Enqueue(context.Background(), &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}}, strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := os.ReadDir(h.spoolDir())
	if len(files) != 1 {
		t.Fatalf("%d spool files, want the message's one", len(files))
	}
	os.Remove(filepath.Join(h.spoolDir(), files[0].Name()))
	h.step()
	if m := h.get(id); m.State != StateFailed {
		t.Fatalf("message state %s after a 550, want failed", m.State)
	}
	if n := len(h.dsns()); n != 1 {
		t.Fatalf("%d DSNs, want 1", n)
	}
}

// fakeSigner is a Signer that records what it read and prepends a field
// naming how many bytes that was; stopAfter > 0 stops reading there (a
// signer that found nothing to sign), err fails.
type fakeSigner struct {
	mu        sync.Mutex
	read      [][]byte
	stopAfter int
	err       error
}

func (s *fakeSigner) Sign(r io.Reader) ([]byte, error) {
	if s.stopAfter > 0 {
		r = io.LimitReader(r, int64(s.stopAfter))
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.read = append(s.read, b)
	s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	if s.stopAfter > 0 {
		return nil, nil
	}
	return fmt.Appendf(nil, "X-Signed: %d\r\n", len(b)), nil
}

// TestBounceSigned: a DSN goes through Options.Signer as it is composed,
// and is delivered with the signature on top of exactly what was signed:
// a small one (inline) and a large one (RET=FULL of a spooled message,
// spooled itself). A signer that stops reading early holds nothing up,
// and one that fails leaves the DSN unsigned, with a warning.
func TestBounceSigned(t *testing.T) {
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", inlineMax/16)
	for _, tc := range []struct {
		name       string
		orig, ret  string
		signer     *fakeSigner
		wantSigned bool
	}{
		{"inline", "Subject: x\r\n\r\nbody\r\n", "", &fakeSigner{}, true},
		{"spooled", big, "FULL", &fakeSigner{}, true},
		{"signer stops early", big, "FULL", &fakeSigner{stopAfter: 10}, false},
		{"signer fails", "Subject: x\r\n\r\nbody\r\n", "", &fakeSigner{err: errors.New("key gone")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.opts = func(o *Options) { o.Signer = tc.signer }
			h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
			q := h.open()
			env := &Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}, Ret: tc.ret}
			if _, err := q.Enqueue(context.Background(), env, strings.NewReader(tc.orig)); err != nil {
				t.Fatal(err)
			}
			h.step()
			m, _ := h.onlyDSN()
			h.step() // deliver the DSN
			calls := h.fake.Calls()
			got := calls[len(calls)-1].body
			if int64(len(got)) != m.Size {
				t.Errorf("DSN delivered with %d bytes, its record says %d", len(got), m.Size)
			}
			if len(tc.signer.read) != 1 {
				t.Fatalf("the signer was called %d times, want once", len(tc.signer.read))
			}
			signed := tc.signer.read[0]
			if !tc.wantSigned {
				if bytes.HasPrefix(got, []byte("X-Signed")) || !bytes.HasPrefix(got, []byte("From: Mail Delivery System")) {
					t.Errorf("DSN delivered as %.60q, want it unsigned", got)
				}
				if tc.signer.err != nil && h.logs.FilterMessage("DSN sent unsigned: signing failed").Len() != 1 {
					t.Error("no warning that the DSN went unsigned")
				}
				return
			}
			want := fmt.Sprintf("X-Signed: %d\r\n", len(signed)) + string(signed)
			if string(got) != want {
				t.Errorf("DSN delivered as %.80q (%d bytes), want the signature on top of the %d bytes signed", got, len(got), len(signed))
			}
			if !bytes.HasPrefix(signed, []byte("From: Mail Delivery System <MAILER-DAEMON@mail.test>")) {
				t.Errorf("the signer read %.60q, not the DSN", signed)
			}
		})
	}
}

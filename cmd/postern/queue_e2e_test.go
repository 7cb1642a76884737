package main

// End-to-end tests of issue 4: bounces (DSN) that reach the sender's MX,
// and the queue commands against a running binary.

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os/exec"
	"strings"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// report is a parsed multipart/report DSN.
type report struct {
	header   mail.Header
	human    string
	status   string // the message/delivery-status part
	returned string // text/rfc822-headers or message/rfc822
}

func parseDSN(t testing.TB, data []byte) report {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("DSN is not a message: %v\n%s", err, data)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN Content-Type = %q (%v), want multipart/report; report-type=delivery-status", m.Header.Get("Content-Type"), err)
	}
	r := report{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != 3 {
				t.Fatalf("DSN has %d parts, want 3", i)
			}
			return r
		}
		if err != nil {
			t.Fatalf("DSN part %d: %v", i, err)
		}
		b, _ := io.ReadAll(p)
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch i {
		case 0:
			r.human = string(b)
		case 1:
			if ct != "message/delivery-status" {
				t.Fatalf("second DSN part is %q, want message/delivery-status", ct)
			}
			r.status = string(b)
		case 2:
			if ct != "text/rfc822-headers" && ct != "message/rfc822" {
				t.Fatalf("third DSN part is %q", ct)
			}
			r.returned = string(b)
		}
	}
}

// bounceWorld: dest.test's MX (127.0.2.2) refuses nobody@dest.test with a
// 550; sender.test's MX (127.0.2.3) receives the bounces.
func bounceWorld(t *testing.T) (*world, *relaytest.Receiver, *relaytest.Receiver) {
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	w.mx("sender.test", "127.0.2.3")
	dest := w.receiver("127.0.2.2")
	dest.FailRcpt("nobody@dest.test", 550, "5.1.1 <nobody@dest.test>: no such user here")
	return w, dest, w.receiver("127.0.2.3")
}

// startBounceWorld starts postern, with its admin API and extra config
// (YAML), in bounceWorld.
func startBounceWorld(t *testing.T, extra string) (*instance, *relaytest.Receiver, *relaytest.Receiver) {
	w, dest, senderMX := bounceWorld(t)
	cfg := w.config()
	cfg.Admin, cfg.Extra = freeAddr(t), extra
	in := newInstance(t, cfg)
	in.start()
	return in, dest, senderMX
}

func TestBounceReachesSender(t *testing.T) {
	t.Parallel()
	w, _, senderMX := bounceWorld(t)
	in := newInstance(t, w.config())
	in.start()
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@sender.test", "--to", "nobody@dest.test", "--data", swaksData)
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	msgs, err := senderMX.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("no bounce reached the sender's MX: %v\n%s", err, in.logs.String())
	}
	b := msgs[0]
	if b.From != "" || len(b.To) != 1 || b.To[0] != "app@sender.test" {
		t.Fatalf("bounce envelope %q -> %q, want <> -> app@sender.test", b.From, b.To)
	}
	r := parseDSN(t, b.Data)
	for _, want := range []string{
		"Reporting-MTA: dns; postern.test",
		"Final-Recipient: rfc822; nobody@dest.test",
		"Action: failed",
		"Status: 5.1.1",
		"Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.test>: no such user here",
		"Remote-MTA: dns; mx1.dest.test",
		"Arrival-Date: ",
		"Last-Attempt-Date: ",
	} {
		if !strings.Contains(r.status, want) {
			t.Errorf("delivery-status part lacks %q:\n%s", want, r.status)
		}
	}
	if !strings.Contains(r.returned, "Subject: e2e") || strings.Contains(r.returned, "Hello Bob.") {
		t.Errorf("RET default should return the headers only:\n%s", r.returned)
	}
	if !strings.Contains(r.human, "nobody@dest.test") {
		t.Errorf("the human-readable part does not name the recipient:\n%s", r.human)
	}
	if got := r.header.Get("Auto-Submitted"); got != "auto-replied" {
		t.Errorf("Auto-Submitted = %q, want auto-replied (RFC 3834)", got)
	}
}

// pySend submits with Python's smtplib, which (unlike swaks) speaks the
// DSN extension's parameters; every recipient must be accepted.
func pySend(t testing.TB, addr, from, to string, mailOpts, rcptOpts []string) {
	t.Helper()
	if refused := pySMTP(t, addr, from, []string{to}, mailOpts, rcptOpts); len(refused) > 0 {
		t.Fatalf("smtplib: refused %q", refused)
	}
}

// pySMTP submits one message to rcpts with Python's smtplib and returns
// the recipients the server refused, with their replies ("550 5.1.1
// text"); smtplib sends the message to the others.
func pySMTP(t testing.TB, addr, from string, rcpts, mailOpts, rcptOpts []string) map[string]string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	script := `
import smtplib, sys, json
a = json.loads(sys.argv[1])
s = smtplib.SMTP(a["host"], int(a["port"]), timeout=30)
s.ehlo("python.test")
try:
    refused = s.sendmail(a["from"], a["rcpts"], a["msg"].encode(), mail_options=a["mail"], rcpt_options=a["rcpt"])
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
s.quit()
print(json.dumps({r: "%d %s" % (c, m.decode()) for r, (c, m) in refused.items()}))
`
	// smtplib wants lists, not None.
	if mailOpts == nil {
		mailOpts = []string{}
	}
	if rcptOpts == nil {
		rcptOpts = []string{}
	}
	args, _ := json.Marshal(map[string]any{"host": host, "port": port, "from": from, "rcpts": rcpts,
		"msg": testMessage, "mail": mailOpts, "rcpt": rcptOpts})
	var stderr bytes.Buffer
	cmd := exec.Command("python3", "-c", script, string(args))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s%s", err, out, stderr.Bytes())
	}
	var refused map[string]string
	if err := json.Unmarshal(out, &refused); err != nil {
		t.Fatalf("smtplib printed %q: %v", out, err)
	}
	return refused
}

func TestNoBounceForNullSenderOrNotifyNever(t *testing.T) {
	t.Parallel()
	// The suppression list would refuse the second message to
	// nobody@dest.test at RCPT, after the first failed.
	in, dest, senderMX := startBounceWorld(t, "suppression: {enabled: false}\n")

	// A bounce of a bounce would loop: a null-sender message that fails
	// produces nothing.
	pySend(t, in.cfg.Relay, "", "nobody@dest.test", nil, nil)
	// NOTIFY=NEVER: the sender asked not to be told.
	pySend(t, in.cfg.Relay, "app@sender.test", "nobody@dest.test", []string{"RET=FULL", "ENVID=e2e-never"}, []string{"NOTIFY=NEVER"})
	// A control message that does bounce, sent last: once its bounce has
	// arrived, a bounce for the two above would have arrived too (the
	// queue delivers in order and they failed first).
	pySend(t, in.cfg.Relay, "app@sender.test", "nobody@dest.test", nil, []string{"NOTIFY=FAILURE"})

	msgs, err := senderMX.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("the control bounce never arrived: %v\n%s", err, in.logs.String())
	}
	// Let the queue run dry, then count.
	waitQueueEmpty(t, in)
	msgs = senderMX.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sender's MX got %d bounces, want exactly 1 (none for <> and NOTIFY=NEVER)", len(msgs))
	}
	if n := dest.Conns(); n < 3 {
		t.Errorf("dest MX saw %d connections, want 3 attempts", n)
	}
}

// waitQueueEmpty polls `postern queue list --json` until nothing is
// pending (queued, deferred or held).
func waitQueueEmpty(t testing.TB, in *instance) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		items := queueList(t, in)
		pending := 0
		for _, it := range items {
			if it.State != "failed" {
				pending++
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue still holds %d pending messages", pending)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type queueItem struct {
	ID         string `json:"id"`
	From       string `json:"from"`
	Size       int64  `json:"size"`
	CreatedAt  string `json:"created_at"`
	State      string `json:"state"`
	Held       bool   `json:"held"`
	Recipients []struct {
		Address     string `json:"address"`
		State       string `json:"state"`
		Attempts    int    `json:"attempts"`
		NextAttempt string `json:"next_attempt"`
		LastReply   string `json:"last_reply"`
	} `json:"recipients"`
}

func queueList(t testing.TB, in *instance, args ...string) []queueItem {
	t.Helper()
	out, err := in.postern("", append([]string{"queue", "list", "--json"}, args...)...)
	if err != nil {
		t.Fatalf("queue list --json: %v\n%s", err, out)
	}
	var items []queueItem
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("queue list --json is not one JSON array: %v\n%s", err, out)
	}
	return items
}

func TestDelayWarningArrivesOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	// Up, but refusing every recipient for now: a host that answers is
	// retried on the message's own schedule (one that does not is dead,
	// and its messages wait without attempts).
	w.mx("dest.test", "127.0.2.4")
	w.receiver("127.0.2.4").FailNext(relaytest.CmdRCPT, 451, "4.3.0 try again later", -1)
	w.mx("sender.test", "127.0.2.3")
	senderMX := w.receiver("127.0.2.3")
	cfg := w.config()
	cfg.DelayWarning = "1s"
	cfg.RetryInitial, cfg.RetryMax = "200ms", "400ms"
	in := newInstance(t, cfg)
	in.start()
	pySend(t, in.cfg.Relay, "app@sender.test", "bob@dest.test", nil, nil)
	msgs, err := senderMX.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("no delay warning arrived: %v\n%s", err, in.logs.String())
	}
	r := parseDSN(t, msgs[0].Data)
	if !strings.Contains(r.status, "Action: delayed") || !strings.Contains(r.status, "Final-Recipient: rfc822; bob@dest.test") {
		t.Fatalf("delay warning status part:\n%s", r.status)
	}
	// Several more retries: still exactly one warning.
	// (waitLog predicates run under the log's lock: count, don't query.)
	deferred := 0
	in.waitLog(20*time.Second, func(e logEntry) bool {
		if e.isMsg("deferred") {
			deferred++
		}
		return deferred >= 8
	})
	if got := len(senderMX.Messages()); got != 1 {
		t.Fatalf("%d delay warnings arrived, want exactly 1", got)
	}
}

func TestQueueCommands(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.4") // down for now
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	cfg.RetryInitial, cfg.RetryMax = "1h", "1h" // nothing retries unless told to
	in := newInstance(t, cfg)
	in.start()

	held := relayOne(t, in, "held@dest.test")
	retried := relayOne(t, in, "retried@dest.test")
	deleted := relayOne(t, in, "deleted@dest.test")
	// Two attempts whose connection is refused make the destination dead:
	// the third message is deferred without one ("delivery suspended").
	for _, id := range []string{held, retried, deleted} {
		in.waitLog(20*time.Second, func(e logEntry) bool {
			return e.str("id") == id && (e.isMsg("deferred") || e.isMsg("delivery suspended"))
		})
	}

	items := queueList(t, in)
	if len(items) != 3 {
		t.Fatalf("queue list: %d messages, want 3", len(items))
	}
	for _, it := range items {
		if it.From != "app@example.test" || len(it.Recipients) != 1 || it.Recipients[0].State != "deferred" ||
			it.Recipients[0].Attempts > 1 || it.Recipients[0].LastReply == "" || it.CreatedAt == "" || it.Size == 0 {
			t.Errorf("queue list item %+v", it)
		}
	}
	if out, err := in.postern("", "queue", "list"); err != nil || !strings.Contains(out, held) || !strings.Contains(out, "held@dest.test") {
		t.Errorf("queue list (table): %v\n%s", err, out)
	}
	if out, err := in.postern("", "queue", "show", retried); err != nil || !strings.Contains(out, "retried@dest.test") || !strings.Contains(out, "deferred") {
		t.Errorf("queue show: %v\n%s", err, out)
	}

	if out, err := in.postern("", "queue", "hold", held); err != nil {
		t.Fatalf("queue hold: %v\n%s", err, out)
	}
	if got := queueList(t, in, "--state", "held"); len(got) != 1 || got[0].ID != held {
		t.Fatalf("queue list --state held = %+v, want just %s", got, held)
	}
	if out, err := in.postern("", "queue", "delete", deleted); err != nil {
		t.Fatalf("queue delete: %v\n%s", err, out)
	}

	// An operator's retry goes through although the destination is dead
	// (as Postfix's flush forgets dead destinations).
	rcv := w.receiver("127.0.2.4")
	if out, err := in.postern("", "queue", "retry", "--all"); err != nil {
		t.Fatalf("queue retry --all: %v\n%s", err, out)
	}
	in.waitLog(20*time.Second, hasID(retried, "delivered"))
	if got := rcv.Messages(); len(got) != 1 || got[0].To[0] != "retried@dest.test" {
		t.Fatalf("after retry --all the MX has %d messages; the held and the deleted ones must not be sent", len(got))
	}

	if out, err := in.postern("", "queue", "release", held); err != nil {
		t.Fatalf("queue release: %v\n%s", err, out)
	}
	in.waitLog(20*time.Second, hasID(held, "delivered"))
	if got := queueList(t, in); len(got) != 0 {
		t.Errorf("queue not empty at the end: %+v", got)
	}
	if _, err := in.postern("", "queue", "show", deleted); err == nil {
		t.Errorf("queue show of a deleted message succeeded")
	}

	in.stop()
	out, err := in.postern("", "queue", "list")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("queue list with the server stopped: err=%v, want exit 1 and one line:\n%s", err, out)
	}
}

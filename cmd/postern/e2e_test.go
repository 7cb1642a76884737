package main

// End-to-end tests of issue 2's path: authenticated submission over TLS,
// the durable queue, and delivery to MX hosts with retries. Each test runs
// the built binary with its own ports, data directory, DNS server and
// receivers, so tests run in parallel and twice in a row.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"postern/queue"
	"postern/relay/relaytest"
)

// world is a small Internet on loopback: a DNS server and MX receivers at
// 127.0.2.x on one shared port (postern dials every MX on delivery.port).
// The other packages' tests, run in parallel processes by `go test ./...`,
// use 127.0.0.x: a port this package picks early and listens on only later
// (an MX that comes up mid-test) cannot be taken by them. Clients that bind
// their own source address use 127.0.3.x, so that their ephemeral ports
// never land on an MX port picked but not yet listened on.
type world struct {
	t    testing.TB
	dns  *relaytest.DNS
	port int
}

func newWorld(t testing.TB) *world {
	t.Helper()
	return &world{
		t:    t,
		dns:  relaytest.NewDNS(t, relaytest.Zone{}),
		port: relaytest.FreePort(t, "127.0.2.2", "127.0.2.3", "127.0.2.4"),
	}
}

// mx points domain at a host name with one A record per preference level.
func (w *world) mx(domain string, hosts ...string) {
	var mxs []relaytest.MX
	for i, ip := range hosts {
		name := fmt.Sprintf("mx%d.%s", i+1, domain)
		w.dns.SetA(name, ip)
		mxs = append(mxs, relaytest.MX{Pref: uint16(10 * (i + 1)), Host: name})
	}
	w.dns.SetMX(domain, mxs...)
}

// receiver starts an in-process SMTP receiver on ip at the world's port.
func (w *world) receiver(ip string, opts ...relaytest.ReceiverOption) *relaytest.Receiver {
	return relaytest.NewReceiver(w.t, fmt.Sprintf("%s:%d", ip, w.port), opts...)
}

func (w *world) config() testConfig {
	return testConfig{Resolver: w.dns.Addr(), DeliveryPort: w.port}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

const testMessage = "From: Alice <alice@example.test>\r\n" +
	"To: Bob <bob@dest.test>\r\n" +
	"Subject: e2e\r\n" +
	"Message-ID: <e2e-1@example.test>\r\n" +
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n" +
	"\r\n" +
	"Hello Bob.\r\n" +
	".leading dot survives dot-stuffing\r\n" +
	"\tand whitespace stays.\r\n"

// aliceToDest runs postern with the user alice@example.test (password
// "correct horse") and an MX for dest.test at 127.0.2.2, whose receiver it
// returns.
func aliceToDest(t testing.TB) (*instance, *relaytest.Receiver) {
	t.Helper()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, w.config())
	in.addUser("alice@example.test", "correct horse")
	in.start()
	return in, rcv
}

// submit sends testMessage with swaks over STARTTLS + AUTH.
func submit(t testing.TB, in *instance, mech, user, pass, from, to string) (string, error) {
	t.Helper()
	return swaks(t, "--server", in.cfg.Submission, "--tls", "--auth", mech,
		"--auth-user", user, "--auth-password", pass,
		"--from", from, "--to", to, "--ehlo", "client.test",
		"--data", swaksData)
}

// swaksData is testMessage as swaks must be given it: swaks ends the data
// with CRLF . CRLF itself, adding a line end first.
var swaksData = strings.TrimSuffix(testMessage, "\r\n")

var queuedRE = regexp.MustCompile(`OK: queued as ([0-9A-F]+)`) // the queue ID in the 250 reply

func TestSubmitAndDeliverByteForByte(t *testing.T) {
	t.Parallel()
	in, rcv := aliceToDest(t)

	for _, mech := range []string{"PLAIN", "LOGIN"} {
		out, err := submit(t, in, mech, "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test")
		if err != nil {
			t.Fatalf("swaks AUTH %s: %v\n%s", mech, err, out)
		}
		if !queuedRE.MatchString(out) {
			t.Fatalf("AUTH %s: no queue ID in the 250 reply:\n%s", mech, out)
		}
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 2)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	for _, m := range msgs {
		if m.From != "alice@example.test" || len(m.To) != 1 || m.To[0] != "bob@dest.test" {
			t.Errorf("envelope = %q -> %q", m.From, m.To)
		}
		// The message arrives as submitted, with exactly one header added
		// on top: postern's Received.
		rest, ok := bytes.CutPrefix(m.Data, []byte("Received: from client.test ([127.0.0.1])\r\n\tby postern.test (postern) with ESMTPSA"))
		if !ok {
			t.Fatalf("message does not start with postern's Received header:\n%s", m.Data)
		}
		_, body, ok := bytes.Cut(rest, []byte(" +0000\r\n"))
		if !ok || string(body) != testMessage {
			t.Errorf("body after the Received header differs:\n got %q\nwant %q", body, testMessage)
		}
	}
	in.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("delivered") })
}

// TestDeliverToSmtpSink delivers through Postfix's smtp-sink, a real
// receiver that is not ours.
func TestDeliverToSmtpSink(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.3")
	dump := startSmtpSink(t, fmt.Sprintf("127.0.2.3:%d", w.port))

	in := newInstance(t, w.config())
	in.start()
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", "bob@dest.test",
		"--ehlo", "legacy.test", "--data", swaksData)
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	in.waitLog(20*time.Second, func(e logEntry) bool { return e.isMsg("delivered") })
	files, _ := filepath.Glob(filepath.Join(dump, "*"))
	if len(files) != 1 {
		t.Fatalf("smtp-sink dumped %d files, want 1", len(files))
	}
	got, _ := os.ReadFile(files[0])
	// smtp-sink writes LF line ends and its own headers first.
	want := strings.ReplaceAll(testMessage, "\r\n", "\n")
	if !strings.Contains(string(got), "\tby postern.test (postern) with ESMTP\n") || !strings.Contains(string(got), want) {
		t.Errorf("smtp-sink got:\n%s\nwant it to contain:\n%s", got, want)
	}
}

func TestSubmissionRefusals(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	in.addUser("alice@example.test", "correct horse")
	in.start()

	t.Run("wrong password gets 535", func(t *testing.T) {
		out, err := submit(t, in, "PLAIN", "alice@example.test", "wrong", "alice@example.test", "bob@dest.test")
		if err == nil || !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("want 535 5.7.8, got err=%v\n%s", err, out)
		}
	})
	t.Run("unknown user gets 535", func(t *testing.T) {
		out, err := submit(t, in, "LOGIN", "mallory@example.test", "x", "alice@example.test", "bob@dest.test")
		if err == nil || !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("want 535 5.7.8, got err=%v\n%s", err, out)
		}
	})
	t.Run("AUTH before STARTTLS is refused", func(t *testing.T) {
		d := dial(t, in.cfg.Submission)
		ehlo := d.cmd("EHLO client.test")
		if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("EHLO before TLS must offer STARTTLS and no AUTH:\n%s", ehlo)
		}
		ir := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00correct horse"))
		if r := d.cmd("AUTH PLAIN " + ir); !strings.HasPrefix(r, "538 5.7.11") {
			t.Errorf("AUTH before STARTTLS: got %q, want 538 5.7.11", r)
		}
	})
	t.Run("MAIL before AUTH gets 530", func(t *testing.T) {
		out, err := swaks(t, "--server", in.cfg.Submission, "--tls", "--from", "alice@example.test", "--to", "bob@dest.test")
		if err == nil || !strings.Contains(out, "530 5.7.0") {
			t.Fatalf("want 530 5.7.0, got err=%v\n%s", err, out)
		}
	})
	t.Run("forbidden sender gets 553", func(t *testing.T) {
		out, err := submit(t, in, "PLAIN", "alice@example.test", "correct horse", "ceo@example.test", "bob@dest.test")
		if err == nil || !strings.Contains(out, "553 5.7.1") {
			t.Fatalf("want 553 5.7.1, got err=%v\n%s", err, out)
		}
	})
	t.Run("implicit TLS port also requires AUTH", func(t *testing.T) {
		out, err := swaks(t, "--server", in.cfg.Submissions, "--tlsc", "--from", "alice@example.test", "--to", "bob@dest.test")
		if err == nil || !strings.Contains(out, "530 5.7.0") {
			t.Fatalf("want 530 5.7.0, got err=%v\n%s", err, out)
		}
		out, err = swaks(t, "--server", in.cfg.Submissions, "--tlsc", "--auth", "PLAIN",
			"--auth-user", "alice@example.test", "--auth-password", "correct horse",
			"--from", "alice@example.test", "--to", "bob@dest.test")
		if err != nil || !queuedRE.MatchString(out) {
			t.Fatalf("submission on the implicit-TLS port failed: %v\n%s", err, out)
		}
	})
	if n := len(in.logs.all(func(e logEntry) bool { return strings.Contains(fmt.Sprint(e), "correct horse") })); n > 0 {
		t.Errorf("a password appears in %d log lines", n)
	}
}

func TestUntrustedClientCannotRelay(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cfg := w.config()
	cfg.Trusted = []string{"192.0.2.0/24"} // the test client, 127.0.0.1, is outside
	in := newInstance(t, cfg)
	in.start()
	d := dial(t, in.cfg.Relay)
	d.cmd("EHLO client.test")
	if r := d.cmd("MAIL FROM:<app@example.test>"); !strings.HasPrefix(r, "554 5.7.1") {
		t.Errorf("MAIL from an untrusted client: got %q, want 554 5.7.1", r)
	}
	if r := d.cmd("RCPT TO:<victim@dest.test>"); !strings.HasPrefix(r, "5") {
		t.Errorf("RCPT from an untrusted client: got %q, want a 5xx", r)
	}
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", "victim@dest.test")
	if err == nil || !strings.Contains(out, "554 5.7.1") {
		t.Fatalf("swaks through the relay listener: want 554 5.7.1, got err=%v\n%s", err, out)
	}
}

// relayOne sends testMessage through the trusted relay listener.
func relayOne(t testing.TB, in *instance, to string) string {
	t.Helper()
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", to, "--data", swaksData)
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	m := queuedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no queue ID in:\n%s", out)
	}
	return m[1]
}

func hasID(id, msg string) func(logEntry) bool {
	return func(e logEntry) bool { return e.str("id") == id && e.isMsg(msg) }
}

func TestRemote451IsRetriedThenDelivered(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	rcv.FailNext(relaytest.CmdRCPT, 451, "4.3.0 try again later", 1)
	in := newInstance(t, w.config())
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	d := in.waitLog(20*time.Second, hasID(id, "deferred"))
	if !strings.Contains(fmt.Sprint(d), "451") {
		t.Errorf("deferred line does not carry the remote reply: %v", d)
	}
	in.waitLog(20*time.Second, hasID(id, "delivered"))
	if n := len(rcv.Messages()); n != 1 {
		t.Errorf("receiver has %d messages, want 1", n)
	}
}

func TestRemote550IsNotRetried(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	rcv.FailRcpt("nobody@dest.test", 550, "5.1.1 no such user here")
	cfg := w.config()
	cfg.Admin = freeAddr(t) // for queue show
	in := newInstance(t, cfg)
	in.start()
	id := relayOne(t, in, "nobody@dest.test")
	f := in.waitLog(20*time.Second, hasID(id, "failed"))
	if r := f.reply(); r.Code != 550 || r.Enhanced.String() != "5.1.1" || r.Text != "no such user here" {
		t.Errorf("failed line does not carry the remote's words: %v", f)
	}
	// No retry can come: the queue keeps the recipient as failed, a final
	// state that is never leased again, after one attempt, and the MX saw
	// that one connection. (The state is asserted, rather than the absence
	// of a retry over some wait, which a slow machine would pass.)
	m := showJSON(t, in, id)
	if m.State != queue.StateFailed || len(m.Rcpts) != 1 || m.Rcpts[0].State != queue.StateFailed || m.Rcpts[0].Attempts != 1 {
		t.Errorf("after the 550: %+v, want failed after 1 attempt", m)
	}
	if n := rcv.Conns(); n != 1 {
		t.Errorf("the MX saw %d connections, want 1 (a 550 is final)", n)
	}
}

func TestUnreachableMXIsRetried(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.4") // nothing listens there yet
	in := newInstance(t, w.config())
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	in.waitLog(20*time.Second, hasID(id, "deferred"))
	rcv := w.receiver("127.0.2.4")
	if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1); err != nil {
		t.Fatalf("not delivered once the MX came up: %v\n%s", err, in.logs.String())
	}
}

func TestSecondMXUsedWhenFirstIsDown(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.4", "127.0.2.3") // pref 10 down, pref 20 up
	rcv := w.receiver("127.0.2.3")
	in := newInstance(t, w.config())
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	if _, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 1); err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	in.waitLog(10*time.Second, hasID(id, "delivered"))
	if n := len(in.logs.all(hasID(id, "deferred"))); n != 0 {
		t.Errorf("message was deferred %d times; the second MX should take it on the first attempt", n)
	}
}

func TestNullMXFailsAtOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.dns.SetMX("nomail.test", relaytest.MX{Pref: 0, Host: "."})
	in := newInstance(t, w.config())
	in.start()
	id := relayOne(t, in, "bob@nomail.test")
	f := in.waitLog(20*time.Second, hasID(id, "failed"))
	if !strings.Contains(fmt.Sprint(f), "5.1.10") {
		t.Errorf("null MX failure should carry 5.1.10: %v", f)
	}
	if n := len(in.logs.all(hasID(id, "deferred"))); n != 0 {
		t.Errorf("null MX was deferred %d times; it is final", n)
	}
}

func TestQueuedMessageSurvivesRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.4") // down while the message is accepted
	cfg := w.config()
	cfg.RetryInitial, cfg.RetryMax = "1s", "1s"
	in := newInstance(t, cfg)
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	in.waitLog(20*time.Second, hasID(id, "deferred"))
	in.stop()

	rcv := w.receiver("127.0.2.4")
	in.start()
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("not delivered after restart: %v\n%s", err, in.logs.String())
	}
	if !bytes.HasSuffix(msgs[0].Data, []byte(testMessage)) {
		t.Errorf("delivered message differs from the one accepted before the restart")
	}
	in.waitLog(10*time.Second, hasID(id, "delivered"))
}

func TestConfigCheckReportsEveryError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	os.WriteFile(path, []byte("hostname: \"bad host\"\nlisten:\n  submision: 127.0.0.1:1\n  relay: nowhere\ndelivery:\n  tls: maybe\n"), 0o600)
	out, err := exec.Command(binPath, "config", "check", "--config", path).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("config check of a bad file: err=%v, want exit 1\n%s", err, out)
	}
	if strings.Contains(string(out), "warning: hostname") {
		t.Errorf("a hostname reported as invalid is warned about too:\n%s", out)
	}
	for _, want := range []string{
		path + ":1: hostname: ",
		path + ":3: listen.submision: unknown key (did you mean listen.submission?)",
		path + ":4: listen.relay: ",
		path + ":6: delivery.tls: ",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}

	good := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25})
	if out, err := good.postern("", "config", "check"); err != nil || !strings.Contains(out, ": OK") || strings.Contains(out, "warning: hostname") {
		t.Errorf("config check of a good file: %v\n%s", err, out)
	}
	// The built-in config's hostname, localhost, is fine on loopback and
	// wrong for delivering mail: a warning, not a problem.
	out, err = exec.Command(binPath, "config", "check", "--config", "builtin").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `warning: hostname: "localhost" is not a fully qualified name`) {
		t.Errorf("config check of the built-in config: %v\n%s", err, out)
	}
}

package main

// The 7-bit downgrade end to end (issue 13, RFC 6152 §3): 8-bit mail
// submitted to the binary reaches servers without 8BITMIME (smtp-sink -8,
// and an in-process receiver that hides it) 7-bit; a signed one is
// converted before it is signed, so dkimpy verifies what arrives; one that
// cannot be converted fails with 5.6.3.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// eightBitMessage is a MIME message with a UTF-8 text part sent as 8bit.
func eightBitMessage(from, subject string) string {
	return "From: " + from + "\r\nTo: bob@dest.test\r\nSubject: " + subject + "\r\n" +
		"Date: Sun, 06 Dec 2026 07:00:00 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@postern.test>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln, caf\xc3\xa9 cr\xc3\xa8me.\r\n.a line with a dot\r\n"
}

// submitRaw sends msg (raw bytes, 8-bit included) through the relay
// listener and fails the test unless it is queued.
func submitRaw(t *testing.T, addr, from, to, msg string) {
	t.Helper()
	d := dial(t, addr)
	for _, c := range []string{"EHLO app.test", "MAIL FROM:<" + from + "> BODY=8BITMIME", "RCPT TO:<" + to + ">", "DATA"} {
		if r := d.cmd(c); r[0] != '2' && r[0] != '3' {
			t.Fatalf("%s: %s", c, r)
		}
	}
	io.WriteString(d.conn, strings.ReplaceAll(msg, "\r\n.", "\r\n..")+".\r\n")
	if r := d.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("end of data: %s", r)
	}
	d.cmd("QUIT")
}

func is7Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func TestDowngradeTo7BitServers(t *testing.T) {
	t.Parallel()
	keyDir := t.TempDir()
	file, name, value := keygen(t, keyDir, "signed.test", "s1", "ed25519")
	records := map[string]string{name: value}

	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2", relaytest.WithoutExtensions("8BITMIME"))
	w.mx("sink.test", "127.0.2.3")
	dump := startSmtpSink(t, fmt.Sprintf("127.0.2.3:%d", w.port), "-8")
	cfg := w.config()
	cfg.Extra = fmt.Sprintf("dkim:\n  keys:\n    - {domain: signed.test, selector: s1, key_file: %s}\n", file)
	in := newInstance(t, cfg)
	in.start()

	submitRaw(t, in.cfg.Relay, "alice@signed.test", "bob@dest.test", eightBitMessage("alice@signed.test", "signed"))
	submitRaw(t, in.cfg.Relay, "alice@nokey.test", "bob@dest.test", eightBitMessage("alice@nokey.test", "unsigned"))
	submitRaw(t, in.cfg.Relay, "alice@signed.test", "bob@sink.test", eightBitMessage("alice@signed.test", "to the sink"))
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 2)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	for _, m := range msgs {
		if !is7Bit(m.Data) || !strings.Contains(string(m.Data), "Content-Transfer-Encoding: quoted-printable") ||
			!strings.Contains(string(m.Data), "Gr=C3=BC=C3=9Fe aus K=C3=B6ln") {
			t.Errorf("arrived not converted:\n%s", m.Data)
		}
		if m.Opts.Body != "" {
			t.Errorf("BODY=%s declared to a server without 8BITMIME", m.Opts.Body)
		}
		signed := strings.Contains(string(m.Data), "Subject: signed")
		verdicts := strings.Join(dkimpy(t, records, m.Data), " ")
		if signed && verdicts != "pass" || !signed && verdicts != "" {
			t.Errorf("dkimpy says %q of:\n%s", verdicts, m.Data)
		}
	}

	var files []string
	for deadline := time.Now().Add(30 * time.Second); len(files) == 0 && time.Now().Before(deadline); {
		files, _ = filepath.Glob(filepath.Join(dump, "*"))
		time.Sleep(50 * time.Millisecond)
	}
	if len(files) != 1 {
		t.Fatalf("smtp-sink -8 dumped %d files, want 1\n%s", len(files), in.logs.String())
	}
	got, _ := os.ReadFile(files[0])
	if !is7Bit(got) || !strings.Contains(string(got), "Gr=C3=BC=C3=9Fe") || !strings.Contains(string(got), "DKIM-Signature:") {
		t.Errorf("smtp-sink -8 got:\n%s", got)
	}

	// An 8-bit header cannot be converted: the recipient fails for good.
	submitRaw(t, in.cfg.Relay, "alice@nokey.test", "carol@dest.test",
		"From: alice@nokey.test\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbody\r\n")
	e := in.waitLog(30*time.Second, func(e logEntry) bool { return e.isMsg("failed") })
	if r := e.reply(); r.Code != 554 || r.Enhanced.String() != "5.6.3" {
		t.Errorf("failed with %+v, want 554 5.6.3", r)
	}
}

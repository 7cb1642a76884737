package main

// End-to-end DKIM (issue 3): keys made with `postern dkim keygen`, a message
// submitted to the binary, and the copy that reaches the MX checked by
// dkimpy, an independent verifier, with the key records the test gives it
// (no DNS query leaves the machine).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dkimpyVerify reads a message on stdin and prints, for each DKIM-Signature
// (top first), "pass" or "fail". Key records come from argv[1] (JSON: name
// -> TXT value), served by dnsfunc instead of DNS.
const dkimpyVerify = `
import sys, json, dkim
recs = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = recs.get(n.rstrip("."))
    return v.encode() if v is not None else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = sum(1 for (k, v) in d.headers if k.lower() == b"dkim-signature")
print(" ".join("pass" if d.verify(idx=i, dnsfunc=dnsfunc) else "fail" for i in range(n)))
`

// dkimpy runs the verifier and returns one verdict per signature.
func dkimpy(t testing.TB, records map[string]string, msg []byte) []string {
	t.Helper()
	const py = "/usr/bin/python3" // Debian's, which has python3-dkim
	if err := exec.Command(py, "-c", "import dkim, nacl").Run(); err != nil {
		t.Fatal("dkimpy is not installed: run `make deps` (python3-dkim, python3-nacl)")
	}
	recJSON, _ := json.Marshal(records)
	cmd := exec.Command(py, "-c", dkimpyVerify, string(recJSON))
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy: %v\n%s", err, stderr.String())
	}
	return strings.Fields(string(out))
}

var txtRE = regexp.MustCompile(`(?m)^(\S+)\. IN TXT \( (.*) \)$`)

// keygen makes a key with the CLI and returns the DNS record it printed.
func keygen(t testing.TB, dir, domain, selector, alg string) (file, name, value string) {
	t.Helper()
	file = filepath.Join(dir, domain+"."+selector+".key")
	out, err := exec.Command(binPath, "dkim", "keygen", "--domain", domain, "--selector", selector,
		"--algorithm", alg, "--out", file).CombinedOutput()
	if err != nil {
		t.Fatalf("dkim keygen: %v\n%s", err, out)
	}
	m := txtRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("dkim keygen printed no TXT record:\n%s", out)
	}
	// Join the quoted 255-byte strings back into one value.
	var parts []string
	for _, q := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[2], -1) {
		parts = append(parts, q[1])
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v, mode %v; want mode 0600", file, err, fi.Mode())
	}
	return file, m[1], strings.Join(parts, "")
}

// withKey makes an Ed25519 key for domain with the CLI, and returns a
// world and a config that sign with it, the key file and its DNS record.
func withKey(t testing.TB, domain, selector string) (w *world, cfg testConfig, file, name, record string) {
	t.Helper()
	file, name, record = keygen(t, t.TempDir(), domain, selector, "ed25519")
	w = newWorld(t)
	cfg = w.config()
	cfg.Extra = fmt.Sprintf("dkim:\n  keys:\n    - {domain: %s, selector: %s, key_file: %s}\n", domain, selector, file)
	return w, cfg, file, name, record
}

func TestDKIMSignedMailVerifiesWithDkimpy(t *testing.T) {
	t.Parallel()
	keyDir := t.TempDir()
	records := map[string]string{}
	type key struct{ domain, selector, alg string }
	keys := []key{
		{"rsa.test", "s2026r", "rsa"},
		{"ed.test", "s2026e", "ed25519"},
		{"both.test", "s2026r", "rsa"},
		{"both.test", "s2026e", "ed25519"},
	}
	var yamlKeys strings.Builder
	yamlKeys.WriteString("dkim:\n  keys:\n")
	for _, k := range keys {
		file, name, value := keygen(t, keyDir, k.domain, k.selector, k.alg)
		records[name] = value
		fmt.Fprintf(&yamlKeys, "    - {domain: %s, selector: %s, key_file: %s}\n", k.domain, k.selector, file)
	}

	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	cfg := w.config()
	cfg.Extra = yamlKeys.String()
	in := newInstance(t, cfg)
	in.start()

	if out, err := in.postern("", "dkim", "dns"); err != nil || strings.Count(out, "IN TXT") != len(keys) {
		t.Errorf("dkim dns: %v\n%s", err, out)
	}

	cases := []struct {
		from string
		want string // dkimpy's verdicts, top signature first
	}{
		{"rsa.test", "pass"},
		{"ed.test", "pass"},
		{"both.test", "pass pass"},
		{"nokey.test", ""}, // no key: arrives unsigned
	}
	for i, c := range cases {
		msg := strings.Replace(swaksData, "alice@example.test", "alice@"+c.from, 1)
		msg = strings.Replace(msg, "Subject: e2e", fmt.Sprintf("Subject: case %d", i), 1)
		out, err := swaks(t, "--server", in.cfg.Relay, "--from", "alice@"+c.from, "--to", "bob@dest.test", "--data", msg)
		if err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), len(cases))
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	bySubject := map[string][]byte{}
	for _, m := range msgs {
		s := regexp.MustCompile(`Subject: case (\d+)`).FindSubmatch(m.Data)
		if s != nil {
			bySubject[string(s[1])] = m.Data
		}
	}
	for i, c := range cases {
		t.Run(c.from, func(t *testing.T) {
			data := bySubject[fmt.Sprint(i)]
			if data == nil {
				t.Fatal("message not received")
			}
			got := strings.Join(dkimpy(t, records, data), " ")
			if got != c.want {
				t.Fatalf("dkimpy verdicts %q, want %q\n%s", got, c.want, data)
			}
			if c.want == "" {
				return
			}
			// Change one signed header on the received copy: every
			// signature must now fail.
			tampered := bytes.Replace(data, []byte("Subject: case"), []byte("Subject: Case"), 1)
			if got := strings.Join(dkimpy(t, records, tampered), " "); strings.Contains(got, "pass") {
				t.Fatalf("dkimpy accepts a message whose Subject changed: %q", got)
			}
			// A From added below the signatures is caught by oversigning.
			added := bytes.Replace(data, []byte("\r\n\r\n"), []byte("\r\nFrom: mallory@evil.test\r\n\r\n"), 1)
			if got := strings.Join(dkimpy(t, records, added), " "); strings.Contains(got, "pass") {
				t.Fatalf("dkimpy accepts a message with a From header added: %q", got)
			}
		})
	}
}

func TestDKIMKeygenRefusesToOverwrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file, _, _ := keygen(t, dir, "example.test", "s1", "ed25519")
	before, _ := os.ReadFile(file)
	out, err := exec.Command(binPath, "dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--out", file).CombinedOutput()
	if err == nil {
		t.Fatalf("keygen over an existing file succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), file) {
		t.Errorf("the refusal does not name the file:\n%s", out)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Error("the existing key file was changed")
	}
}

func TestConfigCheckNamesBrokenDKIMKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "broken.key")
	os.WriteFile(bad, []byte("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"), 0o600)
	in := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25,
		Extra: fmt.Sprintf("dkim:\n  keys:\n    - {domain: example.test, selector: s1, key_file: %s}\n    - {domain: example.test, selector: s2, key_file: %s}\n",
			bad, filepath.Join(dir, "missing.key"))})
	out, err := in.postern("", "config", "check")
	if err == nil {
		t.Fatalf("config check passed with a broken key:\n%s", out)
	}
	for _, want := range []string{"broken.key", "missing.key", `selector "s1"`, `selector "s2"`} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output does not mention %s:\n%s", want, out)
		}
	}
	// serve refuses to start with it, too.
	if out, err := exec.CommandContext(ctxTimeout(t, 20*time.Second), binPath, "serve", "--config", in.cfgPath).CombinedOutput(); err == nil || !strings.Contains(string(out), "broken.key") {
		t.Errorf("serve with a broken key: err=%v\n%s", err, out)
	}
}

// TestDKIMReloadKeepsOldKeyOnError: SIGHUP with a broken key file keeps
// the old key in service (and says why); SIGHUP with a good new key swaps
// it in.
func TestDKIMReloadKeepsOldKeyOnError(t *testing.T) {
	t.Parallel()
	w, cfg, file, name, oldRecord := withKey(t, "reload.test", "s1")
	keyDir := filepath.Dir(file)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, cfg)
	in.start()

	send := func(subject string) []byte {
		t.Helper()
		msg := strings.Replace(swaksData, "alice@example.test", "alice@reload.test", 1)
		msg = strings.Replace(msg, "Subject: e2e", "Subject: "+subject, 1)
		n := len(rcv.Messages())
		if out, err := swaks(t, "--server", in.cfg.Relay, "--from", "alice@reload.test", "--to", "bob@dest.test", "--data", msg); err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), n+1)
		if err != nil {
			t.Fatalf("%v\n%s", err, in.logs.String())
		}
		return msgs[n].Data
	}

	// A broken key file: the reload fails, the old key keeps signing.
	os.Remove(file)
	os.WriteFile(file, []byte("not a key\n"), 0o600)
	in.cmd.Process.Signal(syscall.SIGHUP)
	in.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("keeping the old DKIM keys") })
	if got := dkimpy(t, map[string]string{name: oldRecord}, send("after bad reload")); strings.Join(got, " ") != "pass" {
		t.Fatalf("after a failed reload the old key should still sign: dkimpy %q", got)
	}

	// A good new key: the reload swaps it in.
	os.Remove(file)
	_, _, newRecord := keygen(t, keyDir, "reload.test", "s1", "ed25519")
	in.cmd.Process.Signal(syscall.SIGHUP)
	// The first "dkim key loaded" is from the start; wait for the second.
	loaded := 0
	in.waitLog(10*time.Second, func(e logEntry) bool {
		if e.isMsg("dkim key loaded") {
			loaded++
		}
		return loaded == 2
	})
	if got := dkimpy(t, map[string]string{name: newRecord}, send("after good reload")); strings.Join(got, " ") != "pass" {
		t.Fatalf("after a good reload the new key should sign: dkimpy %q", got)
	}
}

// TestBounceIsDKIMSigned: a bounce from MAILER-DAEMON@postern.test reaches
// the sender's MX signed by the key of the hostname's domain, and dkimpy
// verifies it; mail of a domain without a key next to it is unaffected.
func TestBounceIsDKIMSigned(t *testing.T) {
	t.Parallel()
	w, cfg, _, name, value := withKey(t, "postern.test", "bounces")
	w.mx("dest.test", "127.0.2.2")
	w.mx("sender.test", "127.0.2.3")
	dest := w.receiver("127.0.2.2")
	dest.FailRcpt("nobody@dest.test", 550, "5.1.1 no such user")
	home := w.receiver("127.0.2.3")
	in := newInstance(t, cfg)
	in.start()

	msg := strings.Replace(swaksData, "alice@example.test", "alice@sender.test", 1)
	if out, err := swaks(t, "--server", in.cfg.Relay, "--from", "alice@sender.test", "--to", "nobody@dest.test", "--data", msg); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	msgs, err := home.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("no bounce: %v\n%s", err, in.logs.String())
	}
	bounce := msgs[0].Data
	if !bytes.Contains(bounce, []byte("From: Mail Delivery System <MAILER-DAEMON@postern.test>")) {
		t.Fatalf("not a bounce from postern:\n%s", bounce)
	}
	if got := strings.Join(dkimpy(t, map[string]string{name: value}, bounce), " "); got != "pass" {
		t.Fatalf("dkimpy on the bounce: %q, want \"pass\"\n%s", got, bounce)
	}
	tampered := bytes.Replace(bounce, []byte("Subject: "), []byte("Subject: Re: "), 1)
	if got := strings.Join(dkimpy(t, map[string]string{name: value}, tampered), " "); got != "fail" {
		t.Fatalf("dkimpy on a tampered bounce: %q, want \"fail\"", got)
	}
}

package main

// End-to-end tests of issue 12's authentication: application passwords
// through real clients (swaks, Python's smtplib), revocation seen by the
// running server, and the cache of verified passwords seen from outside,
// through the log line the store writes at debug level for every success
// ("credentials verified", with how: bcrypt, cache or app_password).

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pyAuth runs Python's smtplib against the submission listener: STARTTLS,
// then AUTH with each mechanism in turn (forced, not left to smtplib's
// choice), one connection each, sending testMessage after each success.
// It returns the AUTH reply code per mechanism.
func pyAuth(t testing.TB, in *instance, user, password string, mechs ...string) map[string]int {
	t.Helper()
	const py = "/usr/bin/python3" // Debian's (make deps)
	if _, err := exec.LookPath(py); err != nil {
		t.Fatal("python3 is not installed: run `make deps`")
	}
	script := `
import json, smtplib, ssl, sys
a = json.loads(sys.argv[1])
codes = {}
for mech in a["mechs"]:
    s = smtplib.SMTP(a["host"], int(a["port"]), timeout=30)
    s.ehlo("python.test")
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("python.test")
    s.user, s.password = a["user"], a["password"]
    try:
        code, _ = s.auth(mech, getattr(s, "auth_" + mech.lower()))
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    codes[mech] = code
    if code == 235:
        s.sendmail(a["user"], ["bob@dest.test"], a["msg"].encode())
    s.quit()
print(json.dumps(codes))
`
	host, port, _ := strings.Cut(in.cfg.Submission, ":")
	args, _ := json.Marshal(map[string]any{"host": host, "port": port, "user": user, "password": password,
		"mechs": mechs, "msg": testMessage})
	out, err := exec.Command(py, "-c", script, string(args)).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	var codes map[string]int
	if err := json.Unmarshal(out, &codes); err != nil {
		t.Fatalf("smtplib printed %q: %v", out, err)
	}
	return codes
}

// lastLine is the last line of a command's output.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	return lines[len(lines)-1]
}

// verifiedBy waits until the server has logged n successful verifications
// of user and returns how each was made, in order.
func verifiedBy(in *instance, user string, n int) []string {
	in.t.Helper()
	seen := 0
	in.waitLog(20*time.Second, func(e logEntry) bool {
		if e.isMsg("credentials verified") && e.str("user") == user {
			seen++
		}
		return seen == n
	})
	var by []string
	for _, e := range in.logs.all(func(e logEntry) bool { return e.isMsg("credentials verified") && e.str("user") == user }) {
		by = append(by, e.str("by"))
	}
	return by
}

func TestAppPasswordE2E(t *testing.T) {
	t.Parallel()
	in, rcv := aliceToDest(t)

	// Made while the server runs: it sees the new keys file.
	out, err := in.postern("", "user", "key", "add", "alice@example.test", "--label", "e2e app")
	if err != nil {
		t.Fatalf("user key add: %v\n%s", err, out)
	}
	key := lastLine(out)
	if !strings.HasPrefix(key, "pk_") {
		t.Fatalf("user key add did not end with the key:\n%s", out)
	}
	id := strings.Split(key, "_")[1]

	if out, err := submit(t, in, "PLAIN", "alice@example.test", key, "alice@example.test", "bob@dest.test"); err != nil || !queuedRE.MatchString(out) {
		t.Fatalf("swaks AUTH PLAIN with the key: %v\n%s", err, out)
	}
	if codes := pyAuth(t, in, "alice@example.test", key, "LOGIN", "PLAIN"); codes["LOGIN"] != 235 || codes["PLAIN"] != 235 {
		t.Fatalf("smtplib with the key: %v, want 235 for LOGIN and PLAIN", codes)
	}
	// The key's user, with her rights: she may not send as someone else.
	if out, err := submit(t, in, "PLAIN", "alice@example.test", key, "mallory@example.test", "bob@dest.test"); err == nil || !strings.Contains(out, "553 5.7.1") {
		t.Errorf("the key sent as another address: %v\n%s", err, out)
	}
	if _, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 3); err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	by := verifiedBy(in, "alice@example.test", 4)
	if !slices.Equal(by, []string{"app_password", "app_password", "app_password", "app_password"}) {
		t.Errorf("verified by %v, want the key each time (no bcrypt)", by)
	}
	for _, e := range in.logs.all(func(e logEntry) bool { return e.isMsg("credentials verified") }) {
		if e.str("key_id") != id {
			t.Errorf("a key's verification names key_id %q, want %q", e.str("key_id"), id)
		}
	}

	out, err = in.postern("", "user", "key", "list", "alice@example.test")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "e2e app") || strings.Contains(out, key[len(key)-32:]) {
		t.Errorf("user key list: %v\n%s", err, out)
	}

	// Revoked: the running server refuses it at once, as bad credentials.
	if out, err := in.postern("", "user", "key", "del", "alice@example.test", id); err != nil {
		t.Fatalf("user key del: %v\n%s", err, out)
	}
	c := secDial(t, "127.0.3.5", in.cfg.Submission, false)
	c.must("EHLO client.test", "250")
	c.startTLS()
	c.must("EHLO client.test", "250")
	if r := c.auth("alice@example.test", key); !strings.HasPrefix(r, "535 5.7.8 ") {
		t.Errorf("AUTH with a revoked key: %q, want 535 5.7.8", r)
	}
	if codes := pyAuth(t, in, "alice@example.test", key, "LOGIN"); codes["LOGIN"] != 535 {
		t.Errorf("smtplib with a revoked key: %v, want 535", codes)
	}
	// The password still works.
	if out, err := submit(t, in, "LOGIN", "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test"); err != nil {
		t.Errorf("the password after revoking a key: %v\n%s", err, out)
	}
}

// TestPasswordCacheE2E: the second AUTH with a password costs no bcrypt
// check; a changed password and SIGHUP bring the full check back. No
// timing is measured: the server says how it verified each AUTH.
func TestPasswordCacheE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	// A real destination: mail to a domain that does not exist would fail
	// for good and put bob on the suppression list for the next AUTH.
	w.mx("dest.test", "127.0.2.2")
	w.receiver("127.0.2.2")
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()
	send := func(pw string) (string, error) {
		return submit(t, in, "PLAIN", "alice@example.test", pw, "alice@example.test", "bob@dest.test")
	}

	for range 2 {
		if out, err := send("correct horse"); err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
	}
	if codes := pyAuth(t, in, "alice@example.test", "correct horse", "LOGIN"); codes["LOGIN"] != 235 {
		t.Fatalf("smtplib: %v", codes)
	}
	if out, err := in.postern("new horse\n", "user", "passwd", "alice@example.test"); err != nil {
		t.Fatalf("user passwd: %v\n%s", err, out)
	}
	if out, err := send("correct horse"); err == nil || !strings.Contains(out, "535 5.7.8") {
		t.Errorf("the old password after user passwd: %v\n%s", err, out)
	}
	for range 2 {
		if out, err := send("new horse"); err != nil {
			t.Fatalf("swaks with the new password: %v\n%s", err, out)
		}
	}
	reloads := len(in.logs.all(func(e logEntry) bool { return e.isMsg("users file reloaded") }))
	in.cmd.Process.Signal(syscall.SIGHUP)
	in.waitLog(20*time.Second, func(e logEntry) bool {
		if e.isMsg("users file reloaded") {
			reloads--
		}
		return reloads < 0
	})
	if out, err := send("new horse"); err != nil {
		t.Fatalf("swaks after SIGHUP: %v\n%s", err, out)
	}

	want := []string{"bcrypt", "cache", "cache", "bcrypt", "cache", "bcrypt"}
	if by := verifiedBy(in, "alice@example.test", len(want)); !slices.Equal(by, want) {
		t.Errorf("verified by %v, want %v", by, want)
	}

	// The check-slot counters are exposed, at zero on an idle server.
	resp, err := http.Get("http://" + cfg.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"postern_auth_checks_waited_total 0", "postern_auth_checks_refused_total 0"} {
		if !strings.Contains(string(body), m+"\n") {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}

package main

// postern init end to end: what it writes passes `postern config check`,
// its application password is in the keys file, and the DNS records it
// prints, once published, satisfy `postern doctor`.

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"postern/relay/relaytest"
)

// runInit runs postern init with stdin and returns its standard output
// and exit code.
func runInit(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binPath, append([]string{"init"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out) + stderr.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// publish reads the zone-file records in init's output into a zone.
func publish(t *testing.T, out string) relaytest.Zone {
	t.Helper()
	_, text, ok := strings.Cut(out, "; DNS records to publish")
	if !ok {
		t.Fatalf("no DNS records in the output:\n%s", out)
	}
	_, text, _ = strings.Cut(text, "\n") // the rest of that comment line
	zone, err := relaytest.ParseZone(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the records are not a zone file: %v\n%s", err, text)
	}
	return zone
}

func TestInitInteractive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	answers := "mail.example.test\nexample.test, example.org\n\npostmaster@example.test\n192.0.2.10\n"
	out, code := runInit(t, answers, "--dir", dir, "--data-dir", filepath.Join(dir, "data"))
	if code != 0 {
		t.Fatalf("init: exit %d\n%s", code, out)
	}
	cfgPath := filepath.Join(dir, "postern.yaml")
	check := exec.Command(binPath, "config", "check", "--config", cfgPath)
	if b, err := check.CombinedOutput(); err != nil || !strings.Contains(string(b), cfgPath+": OK") {
		t.Fatalf("config check of what init wrote: %v\n%s", err, b)
	}
	text, _ := os.ReadFile(cfgPath)
	for _, want := range []string{"hostname: mail.example.test", "email: postmaster@example.test",
		"selector: s", "key_file: dkim/example.org.s"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("the config lacks %q:\n%s", want, text)
		}
	}
	// The default user, with the application password printed.
	keys, err := exec.Command(binPath, "user", "key", "list", "postmaster@example.test", "--config", cfgPath).CombinedOutput()
	if err != nil || strings.Count(string(keys), "\n") != 2 {
		t.Errorf("user key list: %v\n%s", err, keys)
	}
	if !strings.Contains(out, "\n    pk_") {
		t.Errorf("no application password printed:\n%s", out)
	}

	// Published as printed, with the MX and PTR it can only describe,
	// the records satisfy the doctor; the one warning left is the
	// certificate, which the CA has not issued yet.
	zone := publish(t, out)
	for _, d := range []string{"example.test", "example.org"} {
		r := zone[d]
		r.MX = []relaytest.MX{{Pref: 10, Host: "mx." + d}}
		zone[d] = r
	}
	if n := len(zone); n != 1+2*5 {
		// The hostname (A and SPF); per domain its SPF, two DKIM keys,
		// DMARC and TLS-RPT.
		t.Errorf("%d names published, want 11: %v", n, zone)
	}
	srv := relaytest.NewDNS(t, zone)
	srv.SetPTR("192.0.2.10", "mail.example.test")
	f, err := os.OpenFile(cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("delivery: {resolver: \"" + srv.Addr() + "\"}\n")
	f.Close()
	b, err := exec.Command(binPath, "doctor", "--json", "--offline", "--ip", "192.0.2.10", "--config", cfgPath).Output()
	var r doctorReport
	if jerr := json.Unmarshal(b, &r); jerr != nil {
		t.Fatalf("doctor: %v, %v\n%s", err, jerr, b)
	}
	for _, f := range r.Findings {
		if (f.Severity == "warning" || f.Severity == "error") && f.Check != "certificate" {
			t.Errorf("doctor on init's records: %s %s: %s: %s", f.Subject, f.Check, f.Severity, f.Summary)
		}
	}
	if r.Errors != 0 {
		t.Errorf("doctor: %d errors", r.Errors)
	}
	dkimOK := 0
	for _, f := range r.Findings {
		if strings.HasPrefix(f.Check, "DKIM s") && f.Severity == "ok" {
			dkimOK++
		}
	}
	if dkimOK != 4 {
		t.Errorf("%d DKIM keys found published and matching, want 4 (Ed25519 and RSA for each domain): %+v", dkimOK, r.Findings)
	}
}

func TestInitYes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	args := []string{"--yes", "--hostname", "mail.example.test", "--dir", dir, "--data-dir", filepath.Join(dir, "data")}
	out, code := runInit(t, "", args...)
	if code != 0 {
		t.Fatalf("init --yes: exit %d\n%s", code, out)
	}
	cfgPath := filepath.Join(dir, "postern.yaml")
	if b, err := exec.Command(binPath, "config", "check", "--config", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("config check: %v\n%s", err, b)
	}
	// The domain is the hostname's parent; without --ip, no A record,
	// only its description.
	zone := publish(t, out)
	if _, ok := zone["example.test"]; !ok || len(zone["mail.example.test"].A) != 0 {
		t.Errorf("zone %v", zone)
	}
	if !strings.Contains(out, "; mail.example.test. IN A <this host's public IPv4 address>") {
		t.Errorf("no address placeholder:\n%s", out)
	}

	// Again: refused, and nothing changed.
	before, _ := os.ReadFile(cfgPath)
	out, code = runInit(t, "", args...)
	if code != 1 || !strings.Contains(out, "exists") {
		t.Errorf("second init: exit %d\n%s", code, out)
	}
	if after, _ := os.ReadFile(cfgPath); string(after) != string(before) {
		t.Error("a second init changed the config")
	}

	// Every problem at once, before anything is written.
	empty := t.TempDir()
	out, code = runInit(t, "", "--yes", "--hostname", "localhost", "--domain", "exa mple", "--user", "a b", "--dir", empty)
	if code != 1 || !strings.Contains(out, `"localhost"`) || !strings.Contains(out, `"exa mple"`) || !strings.Contains(out, `"a b"`) {
		t.Errorf("bad answers: exit %d\n%s", code, out)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("init with bad answers wrote %v", ents)
	}
}

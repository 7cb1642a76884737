package main

// End-to-end tests of issue 7's delivery side: smarthosts with STARTTLS and
// AUTH, failover, routes by recipient domain, and capture mode, each
// through the built binary with relaytest receivers as smarthosts and MX
// hosts.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"postern/relay/relaytest"
)

const (
	e2eUser = "relay-user@provider.test"
	e2ePass = "e2e-pa55word"
)

// setDelivery merges YAML into the instance's delivery section before it
// starts: the harness's config has no room for smarthosts and routes.
func setDelivery(t testing.TB, in *instance, delivery string) {
	t.Helper()
	raw, err := os.ReadFile(in.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var base map[string]any
	var over map[string]any
	if err := yaml.Unmarshal(raw, &base); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(delivery), &over); err != nil {
		t.Fatalf("delivery override: %v\n%s", err, delivery)
	}
	d := base["delivery"].(map[string]any)
	for k, v := range over {
		d[k] = v
	}
	out, err := yaml.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in.cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// e2ePasswordFile writes pw to a file next to the config.
func e2ePasswordFile(t testing.TB, in *instance, pw string) string {
	t.Helper()
	p := filepath.Join(in.dir, "smarthost.password")
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// smarthostRx starts a receiver that requires STARTTLS and AUTH, on
// 127.0.0.1 with a certificate for localhost, and returns it with the
// address the config should name.
func smarthostRx(t testing.TB, pass string) (*relaytest.Receiver, string) {
	r := relaytest.NewReceiver(t, "127.0.0.1:0", relaytest.WithSTARTTLS("localhost"), relaytest.WithAuth(e2eUser, pass))
	return r, net.JoinHostPort("localhost", strconv.Itoa(r.Port()))
}

func noPasswordLogged(t *testing.T, in *instance, pw string) {
	t.Helper()
	if strings.Contains(in.logs.String(), pw) {
		t.Errorf("the smarthost password appears in the log")
	}
}

// TestSmarthostSTARTTLSAuthE2E: a smarthost that requires STARTTLS and
// AUTH gets the message with the right credentials, over TLS, and the
// route is logged and recorded as the remote MTA.
func TestSmarthostSTARTTLSAuthE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	mxRx := w.receiver("127.0.2.2")
	w.mx("dest.test", "127.0.2.2")
	sh, addr := smarthostRx(t, e2ePass)
	in := newInstance(t, w.config())
	setDelivery(t, in, fmt.Sprintf(`
smarthosts:
  - name: provider
    address: %q
    tls: starttls
    verify_certificate: false
    username: %q
    password_file: %q
default_route: provider
`, addr, e2eUser, e2ePasswordFile(t, in, e2ePass)))
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	msgs, err := sh.WaitMessages(ctxTimeout(t, 20*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if m := msgs[0]; !m.TLS || m.AuthUser != e2eUser || !slices.Equal(m.To, []string{"bob@dest.test"}) {
		t.Errorf("smarthost got TLS=%v user=%q to=%q", m.TLS, m.AuthUser, m.To)
	}
	want := []relaytest.AuthAttempt{{Mech: "PLAIN", Username: e2eUser, Password: e2ePass, TLS: true, OK: true}}
	if got := sh.Auths(); !slices.Equal(got, want) {
		t.Errorf("smarthost saw AUTH %+v, want %+v", got, want)
	}
	d := in.waitLog(20*time.Second, hasID(id, "delivered"))
	if d.str("remote") != "localhost (smarthost provider)" {
		t.Errorf("delivered line names remote %q", d.str("remote"))
	}
	a := in.waitLog(5*time.Second, func(e logEntry) bool { return e.isMsg("delivery attempt") && e.str("id") == id })
	if a.str("route") != "default_route" || a.str("smarthost") != "provider" || a.str("auth_user") != e2eUser {
		t.Errorf("attempt line = %v", a)
	}
	if mxRx.Conns() != 0 {
		t.Errorf("the MX saw %d connections; everything goes through the smarthost", mxRx.Conns())
	}
	noPasswordLogged(t, in, e2ePass)
}

// TestSmarthostWrongPasswordIsRetried: a 535 defers, attempt after
// attempt, and never bounces; once the smarthost accepts the password the
// message goes.
func TestSmarthostWrongPasswordIsRetried(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sh, addr := smarthostRx(t, "the-new-password")
	in := newInstance(t, w.config())
	setDelivery(t, in, fmt.Sprintf(`
smarthosts:
  - {name: provider, address: %q, tls: starttls, verify_certificate: false, username: %q, password_file: %q}
default_route: provider
`, addr, e2eUser, e2ePasswordFile(t, in, e2ePass)))
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	for attempt := 1; attempt <= 2; attempt++ {
		d := in.waitLog(20*time.Second, func(e logEntry) bool {
			return hasID(id, "deferred")(e) && e["attempt"] == float64(attempt)
		})
		if r := d.reply(); r.Code != 535 || r.Enhanced.String() != "5.7.8" {
			t.Errorf("attempt %d deferred with %q, want the smarthost's 535 5.7.8", attempt, r)
		}
	}
	in.waitLog(5*time.Second, func(e logEntry) bool { return e.isMsg("smarthost refused our credentials") })
	if n := len(in.logs.all(hasID(id, "failed"))); n != 0 {
		t.Fatalf("a refused password bounced the message")
	}
	// The provider's password is set to ours: the next retry goes.
	sh.SetAuth(e2eUser, e2ePass)
	if _, err := sh.WaitMessages(ctxTimeout(t, 20*time.Second), 1); err != nil {
		t.Fatalf("not delivered once the password was right: %v\n%s", err, in.logs.String())
	}
	in.waitLog(10*time.Second, hasID(id, "delivered"))
	noPasswordLogged(t, in, e2ePass)
}

// TestSmarthostFailoverE2E: with the first smarthost down, the second
// takes the message in the same attempt.
func TestSmarthostFailoverE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	second := relaytest.NewReceiver(t, "127.0.0.1:0")
	down := freeAddr(t) // nothing listens there
	in := newInstance(t, w.config())
	setDelivery(t, in, fmt.Sprintf(`
smarthosts:
  - {name: first, address: %q, tls: none}
  - {name: second, address: %q, tls: none}
default_route: [first, second]
`, down, second.Addr()))
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	if _, err := second.WaitMessages(ctxTimeout(t, 20*time.Second), 1); err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	d := in.waitLog(10*time.Second, hasID(id, "delivered"))
	if d.str("remote") != "127.0.0.1 (smarthost second)" || d["attempt"] != float64(1) {
		t.Errorf("delivered line = %v", d)
	}
	if n := len(in.logs.all(hasID(id, "deferred"))); n != 0 {
		t.Errorf("deferred %d times; the second smarthost should take it at once", n)
	}
}

// TestSmarthostCertificateVerifiedByDefault: without verify_certificate,
// a certificate that does not verify stops the session before AUTH.
func TestSmarthostCertificateVerifiedByDefault(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sh, addr := smarthostRx(t, e2ePass)
	in := newInstance(t, w.config())
	setDelivery(t, in, fmt.Sprintf(`
smarthosts:
  - {name: provider, address: %q, tls: starttls, username: %q, password_file: %q}
default_route: provider
`, addr, e2eUser, e2ePasswordFile(t, in, e2ePass)))
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	d := in.waitLog(20*time.Second, hasID(id, "deferred"))
	if r := d.reply(); !strings.HasPrefix(r.String(), "451 4.7.5 TLS with localhost failed") {
		t.Errorf("deferred with %q", r)
	}
	if a := sh.Auths(); len(a) != 0 || len(sh.Messages()) != 0 {
		t.Errorf("an unverified smarthost got AUTH %+v", a)
	}
}

// TestRouteByRecipientDomainE2E: one message, two domains; one goes via
// the smarthost, the other straight to its MX.
func TestRouteByRecipientDomainE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	w.mx("relayed.test", "127.0.2.3")
	mxRx := w.receiver("127.0.2.2")
	relayedMX := w.receiver("127.0.2.3") // must stay untouched
	sh := relaytest.NewReceiver(t, "127.0.0.1:0")
	in := newInstance(t, w.config())
	setDelivery(t, in, fmt.Sprintf(`
smarthosts:
  - {name: provider, address: %q, tls: none}
default_route: mx
routes:
  - {recipient_domains: [.relayed.test], via: provider}
`, sh.Addr()))
	in.start()
	id := relayOne(t, in, "bob@dest.test,carol@relayed.test,dave@sub.relayed.test")
	for _, c := range []struct {
		name string
		rx   *relaytest.Receiver
		n    int
		to   []string
	}{
		{"MX of dest.test", mxRx, 1, []string{"bob@dest.test"}},
		{"smarthost", sh, 2, []string{"carol@relayed.test", "dave@sub.relayed.test"}},
	} {
		msgs, err := c.rx.WaitMessages(ctxTimeout(t, 20*time.Second), c.n)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, in.logs.String())
		}
		var to []string
		for _, m := range msgs {
			to = append(to, m.To...)
		}
		slices.Sort(to)
		if !slices.Equal(to, c.to) {
			t.Errorf("%s got %q, want %q", c.name, to, c.to)
		}
	}
	if relayedMX.Conns() != 0 {
		t.Errorf("relayed.test's own MX saw %d connections", relayedMX.Conns())
	}
	// The attempt lines come after each session's QUIT: wait for them.
	for _, c := range []struct{ field, server, route string }{
		{"mx", "mx1.dest.test", "default_route"},
		{"smarthost", "provider", "routes[0]"},
	} {
		e := in.waitLog(10*time.Second, func(e logEntry) bool {
			return e.isMsg("delivery attempt") && e.str("id") == id && e.str(c.field) == c.server
		})
		if e.str("route") != c.route {
			t.Errorf("attempt line for %s names route %q, want %q", c.server, e.str("route"), c.route)
		}
	}
}

// TestCaptureModeE2E: capture mode keeps the message, as it would have
// been sent, in the Maildir, and the MX never hears of it.
func TestCaptureModeE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, w.config())
	setDelivery(t, in, "mode: capture\n")
	in.start()
	id := relayOne(t, in, "bob@dest.test")
	in.waitLog(20*time.Second, hasID(id, "delivered"))
	dir := filepath.Join(in.dir, "data", "capture")
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	if len(files) != 1 {
		t.Fatalf("new/ holds %d files, want 1", len(files))
	}
	data, _ := os.ReadFile(files[0])
	if !strings.HasPrefix(string(data), "Return-Path: <app@example.test>\r\nDelivered-To: bob@dest.test\r\nReceived: from ") ||
		!strings.HasSuffix(string(data), testMessage) {
		t.Errorf("captured file:\n%s", data)
	}
	for _, sub := range []string{"tmp", "cur"} {
		if entries, err := os.ReadDir(filepath.Join(dir, sub)); err != nil || len(entries) != 0 {
			t.Errorf("%s/: %d entries, %v", sub, len(entries), err)
		}
	}
	if n := rcv.Conns(); n != 0 {
		t.Errorf("the MX saw %d connections in capture mode", n)
	}
}

// TestSmarthostPasswordChecks: config check names a missing password
// file and warns about an unset variable; serve refuses to start without
// the variable.
func TestSmarthostPasswordChecks(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	setDelivery(t, in, `
smarthosts:
  - {name: a, address: "smtp.a.test:587", tls: starttls, username: u, password_file: /nonexistent/pw}
  - {name: b, address: "smtp.b.test:587", tls: starttls, username: u, password_env: POSTERN_TEST_UNSET_PASSWORD}
default_route: [a, b]
`)
	out, err := in.postern("", "config", "check")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		!strings.Contains(out, "delivery.smarthosts[0].password_file: open /nonexistent/pw: no such file or directory") ||
		!strings.Contains(out, "warning: delivery.smarthosts[1].password_env: POSTERN_TEST_UNSET_PASSWORD is not set") ||
		!strings.Contains(out, ": 1 problem(s)") {
		t.Errorf("config check: %v\n%s", err, out)
	}

	setDelivery(t, in, `
smarthosts:
  - {name: b, address: "smtp.b.test:587", tls: starttls, username: u, password_env: POSTERN_TEST_UNSET_PASSWORD}
default_route: b
`)
	if out, err := in.postern("", "config", "check"); err != nil || !strings.Contains(out, "warning: delivery.smarthosts[0].password_env") {
		t.Errorf("an unset variable alone fails config check: %v\n%s", err, out)
	}
	cmd := exec.Command(binPath, "serve", "--config", in.cfgPath)
	outb, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(outb), "delivery.smarthosts[0]") ||
		!strings.Contains(string(outb), "POSTERN_TEST_UNSET_PASSWORD is not set") {
		t.Errorf("serve without the password: %v\n%s", err, outb)
	}
}

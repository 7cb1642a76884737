package main

// The admin API as curl and the CLI meet it: over TLS with the server's own
// certificate, refusing other hosts' names and cross-site changes.

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// adminCurl runs curl against the admin API and returns the HTTP status
// and body; args come before the URL.
func adminCurl(t *testing.T, url string, args ...string) (string, string) {
	t.Helper()
	argv := append([]string{"-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"}, args...)
	out, err := exec.Command("curl", append(argv, url)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v %s: %v\n%s", args, url, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	return s[i+1:], s[:i]
}

func TestAdminOverTLS(t *testing.T) {
	t.Parallel()
	cfg := testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25, Admin: freeAddr(t), Extra: "admin: {tls: true, token_file: admin-token}\n"}
	in := newInstance(t, cfg)
	if err := os.WriteFile(filepath.Join(in.dir, "admin-token"), []byte("s3cret-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in.start()
	host, port, _ := net.SplitHostPort(cfg.Admin)
	ca := filepath.Join(in.dir, "data", "selfsigned.crt")
	// curl checks the certificate for the configured hostname, reached
	// on loopback.
	verified := func(more ...string) []string {
		return append([]string{"--resolve", "postern.test:" + port + ":" + host, "--cacert", ca}, more...)
	}
	auth := "-HAuthorization: Bearer s3cret-admin-token"
	base := "https://postern.test:" + port

	// The CLI finds the certificate and verifies it by itself.
	if out, err := in.postern("", "queue", "list", "--json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("queue list over TLS: %v\n%s", err, out)
	}

	// Plain HTTP gets nothing from a TLS listener, the token included.
	if out, err := exec.Command("curl", "-sS", "--max-time", "10", "-H", "Authorization: Bearer s3cret-admin-token",
		"http://"+cfg.Admin+"/api/queue").CombinedOutput(); err == nil && !strings.Contains(string(out), "HTTPS") {
		t.Errorf("plain HTTP to the TLS admin listener answered: %s", out)
	}

	for _, tt := range []struct {
		name string
		url  string
		args []string
		code string
		body string
	}{
		{"hostname, verified", base + "/api/queue", verified(auth), "200", "["},
		{"loopback address", "https://" + cfg.Admin + "/api/queue", []string{"--insecure", auth}, "200", "["},
		{"no token", base + "/api/queue", verified(), "401", `"error"`},
		// DNS rebinding: a page at another name that resolves to loopback.
		{"another host", "https://" + cfg.Admin + "/api/queue", []string{"--insecure", auth, "-HHost: rebind.attacker.example"}, "421", "does not answer for host"},
		// A cross-site form post, even if the browser had the token.
		{"cross-origin change", base + "/api/queue/retry", verified(auth, "-XPOST",
			"-HOrigin: https://attacker.example", "-HSec-Fetch-Site: cross-site"), "403", "cross-origin"},
		{"same-origin change", base + "/api/queue/retry", verified(auth, "-XPOST",
			"-HOrigin: "+base, "-HSec-Fetch-Site: same-origin"), "200", ""},
	} {
		code, body := adminCurl(t, tt.url, tt.args...)
		if code != tt.code || !strings.Contains(body, tt.body) {
			t.Errorf("%s: HTTP %s %q, want %s containing %q", tt.name, code, body, tt.code, tt.body)
		}
	}
}

// TestAdminOffLoopbackRefused: the server will not start an admin API on a
// public address without TLS, and says which key to set.
func TestAdminOffLoopbackRefused(t *testing.T) {
	t.Parallel()
	in := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25, Admin: "0.0.0.0:0"})
	out, err := in.postern("", "config", "check")
	if err == nil {
		t.Fatalf("config check passed an admin API on 0.0.0.0 without TLS:\n%s", out)
	}
	for _, want := range []string{"listen.admin", "admin.tls"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
}

// TestAdminTokenGenerated: with no admin.token_file the API still refuses
// anonymous requests: serve generates a token in data_dir, readable by its
// own user only, and the CLI finds it there.
func TestAdminTokenGenerated(t *testing.T) {
	t.Parallel()
	cfg := testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25, Admin: freeAddr(t)}
	in := newInstance(t, cfg)
	in.start()
	path := filepath.Join(in.dir, "data", "admin.token")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated token %s: %v, mode %v", path, err, fi)
	}
	token, _ := os.ReadFile(path)
	for _, tt := range []struct {
		args []string
		code string
	}{
		{[]string{"-XPOST"}, "401"},
		{nil, "401"},
		{[]string{"-XPOST", "-HAuthorization: Bearer " + strings.TrimSpace(string(token))}, "200"},
	} {
		target := "/api/queue"
		if len(tt.args) > 0 {
			target = "/api/queue/retry"
		}
		if code, body := adminCurl(t, "http://"+cfg.Admin+target, tt.args...); code != tt.code {
			t.Errorf("curl %v %s: HTTP %s %s, want %s", tt.args, target, code, body, tt.code)
		}
	}
	if out, err := in.postern("", "queue", "retry", "--all"); err != nil {
		t.Errorf("queue retry --all with the generated token: %v\n%s", err, out)
	}
	// A restart keeps the token: scripts that read it stay valid.
	in.stop()
	in.start()
	if again, _ := os.ReadFile(path); string(again) != string(token) {
		t.Errorf("the token changed across a restart")
	}
}

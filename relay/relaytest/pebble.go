package relaytest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pebble is Let's Encrypt's ACME test server (github.com/letsencrypt/pebble,
// installed into bin/tools by `make deps`), run as a child process on
// loopback. It issues real certificates from a root it makes at start,
// and validates challenges for real against the names' addresses as the
// test's DNS server gives them, unless AlwaysValid.
type Pebble struct {
	// Directory is the ACME directory URL.
	Directory string
	// APIRoots trusts the certificate of Pebble's HTTPS API (made by
	// StartPebble); APIRootsFile is the same in PEM, for SSL_CERT_FILE.
	APIRoots     *x509.CertPool
	APIRootsFile string

	mgmt string
	cmd  *exec.Cmd
	done chan struct{}
	logs *lockedBuffer
}

// PebbleOptions configure StartPebble.
type PebbleOptions struct {
	// DNS is the DNS server ("IP:port") Pebble's validation asks for the
	// names' addresses and TXT records.
	DNS string
	// HTTPPort and TLSPort are the ports validation connects to on a
	// name's address for http-01 and tls-alpn-01 (0: 5002 and 5001).
	HTTPPort, TLSPort int
	// Validity is the issued certificates' lifetime (0: 90 days).
	Validity time.Duration
	// AlwaysValid skips validation: every challenge passes.
	AlwaysValid bool
}

// PebblePath finds the pebble binary: $POSTERN_PEBBLE, or bin/tools/pebble
// at the module's root, where `make deps` installs it.
func PebblePath() (string, error) {
	if p := os.Getenv("POSTERN_PEBBLE"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", "tools", "pebble")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("pebble is not installed at %s: run `make deps` (make test does it)", p)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("pebble: no go.mod above the working directory; set POSTERN_PEBBLE")
		}
		dir = parent
	}
}

// StartPebble runs Pebble and stops it (by its PID) when the test ends.
func StartPebble(t testing.TB, o PebbleOptions) *Pebble {
	t.Helper()
	bin, err := PebblePath()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, caFile, pool := pebbleAPICert(t, dir)
	listen, mgmt := freeLoopback(t), freeLoopback(t)
	if o.HTTPPort == 0 {
		o.HTTPPort = 5002
	}
	if o.TLSPort == 0 {
		o.TLSPort = 5001
	}
	validity := uint64(o.Validity / time.Second)
	if validity == 0 {
		validity = 90 * 24 * 3600
	}
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             certFile,
		"privateKey":              keyFile,
		"httpPort":                o.HTTPPort,
		"tlsPort":                 o.TLSPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"profiles": map[string]any{
			"default": map[string]any{"description": "postern tests", "validityPeriod": validity},
		},
	}}
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-config", confFile}
	if o.DNS != "" {
		args = append(args, "-dnsserver", o.DNS)
	}
	cmd := exec.Command(bin, args...)
	// No random bad nonces or sleeps: the tests are about postern, not
	// about surviving Pebble's chaos.
	cmd.Env = append(os.Environ(), "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_AUTHZREUSE=0")
	if o.AlwaysValid {
		cmd.Env = append(cmd.Env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	p := &Pebble{
		Directory: "https://" + listen + "/dir", APIRoots: pool, APIRootsFile: caFile,
		mgmt: mgmt, cmd: cmd, done: make(chan struct{}), logs: &lockedBuffer{},
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	// Pebble says where it listens before it binds: read on until that
	// line, then wait for the port itself.
	lines := bufio.NewScanner(out)
	ready := false
	for !ready && lines.Scan() {
		p.logs.Write(append(lines.Bytes(), '\n'))
		ready = strings.Contains(lines.Text(), "ACME directory available at")
	}
	go func() {
		io.Copy(p.logs, out)
		cmd.Wait()
		close(p.done)
	}()
	if !ready {
		t.Fatalf("pebble did not start:\n%s", p.logs.String())
	}
	if err := waitListening(listen, p.done); err != nil {
		t.Fatalf("pebble: %v\n%s", err, p.logs.String())
	}
	if err := waitListening(mgmt, p.done); err != nil {
		t.Fatalf("pebble: %v\n%s", err, p.logs.String())
	}
	return p
}

// Stop ends Pebble (SIGKILL to its PID: it keeps no state worth a clean
// exit) and waits for it. It may be called more than once.
func (p *Pebble) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

// Logs is what Pebble printed, for failure messages.
func (p *Pebble) Logs() string { return p.logs.String() }

// IssuerRoots returns the root Pebble issues under (made at its start),
// which a client that verifies postern's certificate must trust.
func (p *Pebble) IssuerRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.APIRoots}}, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble /roots/0: %d %v", resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble /roots/0: no certificate in %q", b)
	}
	return pool
}

// waitListening waits until addr accepts a connection, Pebble having said
// it would listen there; exited ends the wait. Each dial that is refused
// is tried again a little later: there is nothing else to wait on.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before listening on %s", addr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s: %v", addr, err)
		}
	}
}

// freeLoopback returns 127.0.0.1:<a port free now>.
func freeLoopback(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// pebbleAPICert writes a self-signed certificate for 127.0.0.1 and
// localhost (SelfSigned) for Pebble's HTTPS API, and returns its files and
// a pool trusting it. (Pebble's repository ships one, but the module cache
// is not a place to depend on.)
func pebbleAPICert(t testing.TB, dir string) (certFile, keyFile, caFile string, pool *x509.CertPool) {
	t.Helper()
	cert, pool, err := SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	for f, b := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: cert.Certificate[0]},
		keyFile:  {Type: "PRIVATE KEY", Bytes: kder},
	} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The certificate is its own root.
	return certFile, keyFile, certFile, pool
}

// lockedBuffer is a bytes buffer safe for a writer and readers at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

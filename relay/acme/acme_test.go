package acme

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"postern/relay/relaytest"
)

// These tests run a real ACME server, Let's Encrypt's Pebble, on loopback
// (relaytest.StartPebble), with the names' addresses and TXT records in
// relaytest's DNS server, which Pebble's validation asks.

// setup is one CA, one DNS zone and the log of one Manager, for one
// name. Each test has a name of its own: certmagic keeps some state per
// name in globals (its job queue dedupes renewals by name), so two
// Managers of one name in one process would wait on each other.
type setup struct {
	t      *testing.T
	name   string
	dns    *relaytest.DNS
	pebble *relaytest.Pebble
	port   int // where the CA validates http-01 and tls-alpn-01
	logs   *observer.ObservedLogs
	log    *zap.Logger
	// logged is closed and replaced at every log line (see waitLog).
	mu     sync.Mutex
	logged chan struct{}
}

func newSetup(t *testing.T, o relaytest.PebbleOptions) *setup {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", ".", "_", "-").Replace(t.Name())) + ".acme.test"
	s := &setup{t: t, name: name, dns: relaytest.NewDNS(t, relaytest.Zone{})}
	s.dns.SetA(name, "127.0.0.1")
	s.port = freePort(t)
	o.DNS, o.HTTPPort, o.TLSPort = s.dns.Addr(), s.port, s.port
	s.pebble = relaytest.StartPebble(t, o)
	core, logs := observer.New(zap.DebugLevel)
	s.logged = make(chan struct{})
	s.logs, s.log = logs, zap.New(core, zap.Hooks(func(zapcore.Entry) error {
		s.mu.Lock()
		close(s.logged)
		s.logged = make(chan struct{})
		s.mu.Unlock()
		return nil
	}))
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *setup) options(challenge string) Options {
	return Options{
		Names:           []string{s.name},
		Email:           "postmaster@acme.test",
		Directory:       s.pebble.Directory,
		Challenge:       challenge,
		ChallengeListen: "127.0.0.1:" + strconv.Itoa(s.port),
		Resolver:        s.dns.Addr(),
		StorageDir:      filepath.Join(s.t.TempDir(), "acme"),
		Logger:          s.log,
		CARoots:         s.pebble.APIRoots,
	}
}

func (s *setup) start(o Options) *Manager {
	s.t.Helper()
	m, err := New(o)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(m.Stop)
	return m
}

// waitLog waits for the n-th log line with message msg, looking again at
// every line logged. The deadline only turns a hang into a failure.
func (s *setup) waitLog(msg string, n int) {
	s.t.Helper()
	deadline := time.After(90 * time.Second)
	for {
		s.mu.Lock()
		next := s.logged
		s.mu.Unlock()
		if s.logs.FilterMessage(msg).Len() >= n {
			return
		}
		select {
		case <-deadline:
			s.t.Fatalf("no %q line (want %d); log:\n%v\npebble:\n%s", msg, n, s.logs.All(), s.pebble.Logs())
		case <-next:
		}
	}
}

// hello is a ClientHelloInfo as a handshake gives it: certmagic logs the
// connection's remote address.
func hello(t *testing.T, serverName string) *tls.ClientHelloInfo {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return &tls.ClientHelloInfo{ServerName: serverName, Conn: a}
}

// served is the leaf the Manager hands a client that names no server.
func served(t *testing.T, m *Manager) *x509.Certificate {
	t.Helper()
	c := m.Certificate(hello(t, ""))
	if c == nil {
		t.Fatal("no certificate served")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// verify checks the served chain as a client trusting Pebble's root
// would, for name.
func (s *setup) verify(m *Manager) *x509.Certificate {
	s.t.Helper()
	name := s.name
	c := m.Certificate(hello(s.t, name))
	if c == nil {
		s.t.Fatal("no certificate served")
	}
	leaf := served(s.t, m)
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			s.t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: s.pebble.IssuerRoots(s.t), Intermediates: inter}); err != nil {
		s.t.Fatalf("served certificate does not verify for %s against Pebble's root: %v", name, err)
	}
	return leaf
}

// TestObtain: each challenge type, validated for real by Pebble (its
// connection to the challenge listener, or its TXT query for the record
// the dns-01 hook published), ends with a certificate for the name that
// verifies against Pebble's root, served also to a client that names no
// server or another name; the key is stored 0600.
func TestObtain(t *testing.T) {
	for _, challenge := range []string{TLSALPN01, HTTP01, DNS01} {
		t.Run(challenge, func(t *testing.T) {
			t.Parallel()
			s := newSetup(t, relaytest.PebbleOptions{})
			o := s.options(challenge)
			if challenge == DNS01 {
				o.DNSHook = dnsHook(t, s.dns)
			}
			m := s.start(o)
			s.waitLog("TLS certificate in service", 1)
			leaf := s.verify(m)
			other := m.Certificate(hello(t, "elsewhere.test"))
			if other == nil || !bytes.Equal(other.Certificate[0], leaf.Raw) {
				t.Error("a client naming another server does not get the hostname's certificate")
			}
			stored, err := Stored(o.StorageDir, s.name)
			if err != nil || len(stored) == 0 || !stored[0].Equal(leaf) {
				t.Errorf("Stored: %v, %v; want the certificate served", stored, err)
			}
			keys, _ := filepath.Glob(filepath.Join(o.StorageDir, "certificates", "*", s.name, s.name+".key"))
			if len(keys) != 1 {
				t.Fatalf("key files %v", keys)
			}
			if fi, err := os.Stat(keys[0]); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
			}
			if challenge == DNS01 {
				if rr, _ := s.dns.Records("_acme-challenge." + s.name); len(rr.TXT) != 0 {
					t.Errorf("the hook's cleanup left %v", rr.TXT)
				}
			}
		})
	}
}

// dnsHook writes a hook script that publishes and removes TXT records in
// the test's DNS server through a small HTTP endpoint, as a real hook
// would through a provider's API.
func dnsHook(t *testing.T, dns *relaytest.DNS) string {
	t.Helper()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, v := r.FormValue("name"), r.FormValue("value")
		rr, _ := dns.Records(n)
		switch r.URL.Path {
		case "/present":
			dns.SetTXT(n, append(rr.TXT, v)...)
		case "/cleanup":
			var keep []string
			for _, x := range rr.TXT {
				if x != v {
					keep = append(keep, x)
				}
			}
			dns.SetTXT(n, keep...)
		default:
			http.Error(w, "no such action", http.StatusBadRequest)
		}
	}))
	t.Cleanup(api.Close)
	hook := filepath.Join(t.TempDir(), "hook")
	script := fmt.Sprintf("#!/bin/sh\nexec curl -fsS --data-urlencode \"name=$2\" --data-urlencode \"value=$3\" %s/\"$1\"\n", api.URL)
	if err := os.WriteFile(hook, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return hook
}

// shortLived starts a Manager on twelve-second certificates, checked
// every second: a renewal is due within seconds of each issuance. It
// returns once the first certificate is in service, and that certificate.
func shortLived(t *testing.T) (*setup, *Manager, *x509.Certificate) {
	t.Helper()
	s := newSetup(t, relaytest.PebbleOptions{Validity: 12 * time.Second})
	o := s.options(TLSALPN01)
	o.RenewCheckInterval = time.Second
	m := s.start(o)
	s.waitLog("TLS certificate in service", 1)
	return s, m, s.verify(m)
}

// TestRenewal: a certificate near its end is renewed in the background,
// and the new one is served from then on.
func TestRenewal(t *testing.T) {
	t.Parallel()
	s, m, first := shortLived(t)
	s.waitLog("TLS certificate renewed", 1)
	// certmagic swaps the renewed certificate into its cache just after
	// the event, and says nothing postern sees: look until it is served.
	deadline := time.After(30 * time.Second)
	for served(t, m).SerialNumber.Cmp(first.SerialNumber) == 0 {
		select {
		case <-deadline:
			t.Fatal("the renewed certificate is not served")
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.verify(m)
}

// TestRenewalFailureKeepsOld: with the CA gone, a renewal fails, the log
// says so with the time left, and the old certificate stays in service.
func TestRenewalFailureKeepsOld(t *testing.T) {
	t.Parallel()
	s, m, first := shortLived(t)
	s.pebble.Stop()
	const warning = "TLS certificate renewal failed: the old certificate stays in service, and renewal is retried"
	s.waitLog(warning, 1)
	e := s.logs.FilterMessage(warning).All()[0]
	if e.Level != zap.WarnLevel || e.ContextMap()["name"] != s.name || e.ContextMap()["expires_in"] == nil {
		t.Errorf("warning %v %v", e.Level, e.ContextMap())
	}
	if got := served(t, m); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Error("a failed renewal replaced the certificate in service")
	}
}

// TestCAUnreachable: a CA that cannot be reached does not stop Start; no
// certificate is served (relay/certs serves its own) and a warning says
// so.
func TestCAUnreachable(t *testing.T) {
	t.Parallel()
	s := newSetup(t, relaytest.PebbleOptions{})
	o := s.options(TLSALPN01)
	o.Directory = "https://127.0.0.1:" + strconv.Itoa(freePort(t)) + "/dir"
	m := s.start(o)
	s.waitLog("could not obtain a TLS certificate: the self-signed (or configured) one stays in service, and postern retries", 1)
	if c := m.Certificate(hello(t, "")); c != nil {
		t.Error("a certificate is served though none was obtained")
	}
}

// TestNewRefuses: options New must refuse before anything starts.
func TestNewRefuses(t *testing.T) {
	base := Options{Names: []string{"mail.acme.test"}, Challenge: TLSALPN01, StorageDir: t.TempDir()}
	for _, tc := range []struct {
		name   string
		change func(*Options)
	}{
		{"no names", func(o *Options) { o.Names = nil }},
		{"no storage", func(o *Options) { o.StorageDir = "" }},
		{"unknown challenge", func(o *Options) { o.Challenge = "tls-sni-01" }},
		{"dns-01 without hook", func(o *Options) { o.Challenge = DNS01 }},
		{"bad listen address", func(o *Options) { o.ChallengeListen = "127.0.0.1" }},
		{"bad listen port", func(o *Options) { o.ChallengeListen = "127.0.0.1:99999" }},
	} {
		o := base
		tc.change(&o)
		if m, err := New(o); err == nil {
			m.Stop()
			t.Errorf("%s: New accepted %+v", tc.name, o)
		}
	}
	if m, err := New(base); err != nil {
		t.Errorf("baseline refused: %v", err)
	} else {
		m.Stop()
	}
}

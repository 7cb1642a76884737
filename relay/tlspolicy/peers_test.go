package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"postern/queue"
	"postern/relay/relaytest"
)

// testCA is made with openssl in TestMain, and trusted by this process
// through SSL_CERT_FILE, as an operator's test setup or a real CA would
// be through the system bundle.
var testCA *relaytest.CA

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tlspolicy-ca-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testCA, err = relaytest.StartCA(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Before anything loads the system roots (crypto/x509 reads them
	// once per process).
	os.Setenv("SSL_CERT_FILE", testCA.CertFile)
	os.Unsetenv("SSL_CERT_DIR")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// stsServer is an MTA-STS policy server: HTTPS on ip:443 with a
// certificate of the test CA, serving whatever the test sets.
type stsServer struct {
	mu          sync.Mutex
	body        string
	status      int
	contentType string
	location    string
	requests    int
}

func (s *stsServer) set(status int, contentType, body string) {
	s.mu.Lock()
	s.status, s.contentType, s.body = status, contentType, body
	s.mu.Unlock()
}

func (s *stsServer) count() int { s.mu.Lock(); defer s.mu.Unlock(); return s.requests }

func (s *stsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(w, r)
		return
	}
	s.requests++
	if s.location != "" {
		w.Header().Set("Location", s.location)
	}
	w.Header().Set("Content-Type", s.contentType)
	w.WriteHeader(s.status)
	fmt.Fprint(w, s.body)
}

// startSTSServer listens on ip:443 (as root; the tests bind loopback
// addresses only) with a certificate for certName, and stops when the
// test ends.
func startSTSServer(t *testing.T, ip, certName, body string) *stsServer {
	t.Helper()
	s := &stsServer{status: 200, contentType: "text/plain; charset=utf-8", body: body}
	cert := testCA.Issue(t, certName)
	l, err := tls.Listen("tcp", net.JoinHostPort(ip, "443"), &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatalf("policy server on %s:443 (needs root): %v", ip, err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return s
}

const enforcePolicy = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmx: *.backup.example.test\nmax_age: 86400\n"

// stsWorld is a domain with an MTA-STS record and a policy server, the
// DNS that names them, and Policies that use a queue's state store.
type stsWorld struct {
	dns    *relaytest.DNS
	srv    *stsServer
	clock  *fakeClock
	store  *queue.StateStore[CachedSTS]
	qpath  string
	q      *queue.Queue
	ps     *Policies
	domain string
}

func newSTSWorld(t *testing.T, ip, policy string) *stsWorld {
	w := &stsWorld{domain: "example.test", clock: &fakeClock{t: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}}
	w.dns = relaytest.NewDNS(t, relaytest.Zone{
		"_mta-sts.example.test": {TXT: []string{"v=STSv1; id=20261206a"}},
		"mta-sts.example.test":  {A: []string{ip}},
		"example.test":          {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
	})
	w.srv = startSTSServer(t, ip, "mta-sts.example.test", policy)
	w.qpath = filepath.Join(t.TempDir(), "queue.db")
	w.reopen(t)
	t.Cleanup(func() { w.q.Close(context.Background()) })
	return w
}

// reopen opens the queue database (again) and makes new Policies on it,
// as a restart of postern would.
func (w *stsWorld) reopen(t *testing.T) {
	t.Helper()
	if w.q != nil {
		w.q.Close(context.Background())
	}
	var err error
	w.q, err = queue.Open(queue.Options{Path: w.qpath})
	if err != nil {
		t.Fatal(err)
	}
	w.store, err = queue.NewStateStore[CachedSTS](w.q, "mta-sts")
	if err != nil {
		t.Fatal(err)
	}
	w.ps, err = New(Options{Resolver: w.dns.Addr(), MTASTS: true, STSStore: w.store, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
}

func (w *stsWorld) policy(t *testing.T) *DomainPolicy {
	t.Helper()
	return w.ps.Domain(context.Background(), w.domain)
}

// TestMTASTSEnforce: an enforce policy is fetched once, decides which MX
// hosts may be used and what they must show, is kept in the queue
// database, and is still in force after a restart with the policy server
// gone.
func TestMTASTSEnforce(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.1", enforcePolicy)
	dp := w.policy(t)
	if dp.STS == nil || dp.STS.Policy.Mode != STSEnforce || dp.STS.ID != "20261206a" {
		t.Fatalf("policy = %+v", dp.STS)
	}
	p, err := dp.Host(context.Background(), "MX.example.test.")
	if err != nil || p.Mode != WebPKI || p.Source != SourceMTASTS || p.Report.Type != PolicyTypeSTS {
		t.Errorf("Host(mx) = %+v, %v", p, err)
	}
	if p, err := dp.Host(context.Background(), "b1.backup.example.test"); err != nil || p.Mode != WebPKI {
		t.Errorf("Host(b1.backup) = %+v, %v", p, err)
	}
	_, err = dp.Host(context.Background(), "evil.example.test")
	var he *HostError
	if !errors.As(err, &he) || he.Failure != ValidationFailure || he.Reply().Code != 451 {
		t.Errorf("Host(evil) error = %v, want a HostError with validation-failure and a 451", err)
	}
	if dp.MXAllowed("evil.example.test") || !dp.MXAllowed("mx.example.test") {
		t.Error("MXAllowed does not follow the policy")
	}
	// The policy itself, checked on a real certificate: one from the
	// test CA (trusted through SSL_CERT_FILE) for the MX name passes.
	mxCert := testCA.Issue(t, "mx.example.test")
	if ok, rt := Check(p, state([]*x509.Certificate{mxCert.Leaf}), "mx.example.test"); !ok || rt != "" {
		t.Errorf("Check with a valid certificate = %v %q", ok, rt)
	}
	if ok, rt := Check(p, state(selfSigned(t, "mx.example.test")), "mx.example.test"); ok || rt != CertificateNotTrusted {
		t.Errorf("Check with a self-signed certificate = %v %q", ok, rt)
	}

	// Within the recheck interval nothing is asked again; after it the
	// TXT record is, and the same id fetches nothing.
	queries := w.dns.Queries()
	w.policy(t)
	if w.dns.Queries() != queries || w.srv.count() != 1 {
		t.Errorf("a second delivery within %v asked DNS or fetched again", stsRecheck)
	}
	w.clock.Advance(stsRecheck)
	w.policy(t)
	if w.dns.Queries() == queries || w.srv.count() != 1 {
		t.Errorf("after %v: %d DNS queries more, %d fetches; want the TXT record asked and no fetch", stsRecheck, w.dns.Queries()-queries, w.srv.count())
	}

	stored, ok, err := w.store.Get("example.test")
	if err != nil || !ok || stored.ID != "20261206a" || stored.Policy.Mode != STSEnforce {
		t.Fatalf("queue state store holds %+v %v %v", stored, ok, err)
	}

	// Restart with the policy server failing: the cached policy is in
	// force (its id is still the one published).
	w.srv.set(500, "text/plain", "down")
	w.reopen(t)
	dp = w.policy(t)
	if dp.STS == nil || dp.STS.Policy.Mode != STSEnforce {
		t.Fatalf("after a restart: policy %+v", dp.STS)
	}
	if w.srv.count() != 1 {
		t.Errorf("after a restart the policy was fetched again (%d fetches)", w.srv.count())
	}
}

// TestMTASTSCache: a fetch that fails keeps the cached policy in force
// (RFC 8461 §5.1); a new id that can be fetched replaces it; a policy
// that expires with nothing published is gone.
func TestMTASTSCache(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.2", enforcePolicy)
	if dp := w.policy(t); dp.STS == nil {
		t.Fatal("no policy")
	}
	// A new id, and a server that fails.
	w.dns.SetTXT("_mta-sts.example.test", "v=STSv1; id=20261206b")
	w.srv.set(503, "text/plain", "")
	w.clock.Advance(stsRecheck)
	dp := w.policy(t)
	if dp.STS == nil || dp.STS.ID != "20261206a" || dp.STS.Policy.Mode != STSEnforce {
		t.Fatalf("fetch failed: policy in force %+v, want the cached one", dp.STS)
	}
	if p, err := dp.Host(context.Background(), "mx.example.test"); err != nil || p.Failure != "" || p.Mode != WebPKI {
		t.Errorf("with a cached policy in force: %+v %v", p, err)
	}
	// The server is back with a testing policy: the new id replaces the
	// cached policy.
	w.srv.set(200, "text/plain", "version: STSv1\nmode: testing\nmx: mx2.example.test\nmax_age: 3600\n")
	w.clock.Advance(stsRecheck)
	dp = w.policy(t)
	if dp.STS == nil || dp.STS.ID != "20261206b" || dp.STS.Policy.Mode != STSTesting {
		t.Fatalf("new id: policy %+v", dp.STS)
	}
	if stored, _, _ := w.store.Get("example.test"); stored.ID != "20261206b" {
		t.Errorf("the store still holds id %q", stored.ID)
	}
	// The record goes away: the policy stays until it expires, then it
	// is gone, from the store too.
	w.dns.Delete("_mta-sts.example.test")
	w.clock.Advance(stsRecheck)
	if dp := w.policy(t); dp.STS == nil {
		t.Error("a policy still in force was dropped when its record went")
	}
	w.clock.Advance(time.Hour)
	if dp := w.policy(t); dp.STS != nil {
		t.Errorf("an expired policy is still in force: %+v", dp.STS)
	}
	if _, ok, _ := w.store.Get("example.test"); ok {
		t.Error("the expired policy is still stored")
	}
}

// TestMTASTSTesting: a testing policy delivers as before and reports.
func TestMTASTSTesting(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.3", "version: STSv1\nmode: testing\nmx: mx.example.test\nmax_age: 86400\n")
	dp := w.policy(t)
	p, err := dp.Host(context.Background(), "mx.example.test")
	if err != nil || p.Mode != Opportunistic || !p.Testing || p.Report.Type != PolicyTypeSTS {
		t.Fatalf("Host = %+v, %v", p, err)
	}
	if ok, rt := Check(p, state(selfSigned(t, "mx.example.test")), "mx.example.test"); !ok || rt != CertificateNotTrusted {
		t.Errorf("Check with a self-signed certificate = %v %q, want delivered and reported", ok, rt)
	}
	if ok, rt := p.NoSTARTTLS(); !ok || rt != StartTLSNotSupported {
		t.Errorf("NoSTARTTLS = %v %q", ok, rt)
	}
	p, err = dp.Host(context.Background(), "other.example.test")
	if err != nil || p.Failure != ValidationFailure {
		t.Errorf("a host outside a testing policy: %+v %v, want used and reported", p, err)
	}
}

// TestMTASTSFetchFailures: each way a fetch fails, with no cached policy,
// is the failure RFC 8460 names; delivery goes on as without a policy.
func TestMTASTSFetchFailures(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.4", enforcePolicy)
	for _, tt := range []struct {
		name  string
		setup func()
		want  ResultType
	}{
		{"404", func() { w.srv.set(404, "text/plain", "") }, STSPolicyFetchError},
		{"redirect", func() { w.srv.location = "https://mta-sts.example.test/x"; w.srv.set(301, "text/plain", enforcePolicy) }, STSPolicyFetchError},
		{"not text/plain", func() { w.srv.location = ""; w.srv.set(200, "text/html", enforcePolicy) }, STSPolicyInvalid},
		{"invalid policy", func() { w.srv.set(200, "text/plain", "version: STSv1\nmode: enforce\n") }, STSPolicyInvalid},
		{"too large", func() { w.srv.set(200, "text/plain", enforcePolicy+string(make([]byte, stsMaxBody))) }, STSPolicyInvalid},
		{"no server", func() { w.dns.SetA("mta-sts.example.test", "127.0.14.99") }, STSPolicyFetchError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.setup()
			w.clock.Advance(stsRecheck)
			dp := w.policy(t)
			if dp.STS != nil {
				t.Fatalf("policy %+v", dp.STS)
			}
			p, err := dp.Host(context.Background(), "mx.example.test")
			if err != nil || p.Failure != tt.want || p.Mode != Opportunistic || p.Report.Type != PolicyTypeSTS {
				t.Errorf("Host = %+v, %v; want opportunistic, failure %q", p, err, tt.want)
			}
		})
	}
	t.Run("certificate for another name", func(t *testing.T) {
		w2 := newSTSWorld(t, "127.0.14.5", enforcePolicy)
		w2.domain = "other.test"
		w2.dns.Set("_mta-sts.other.test", relaytest.Records{TXT: []string{"v=STSv1; id=1"}})
		w2.dns.Set("mta-sts.other.test", relaytest.Records{A: []string{"127.0.14.5"}})
		dp := w2.policy(t)
		p, _ := dp.Host(context.Background(), "mx.other.test")
		if dp.STS != nil || p.Failure != STSWebPKIInvalid {
			t.Errorf("policy %+v, failure %q; want none and sts-webpki-invalid", dp.STS, p.Failure)
		}
	})
	t.Run("no record", func(t *testing.T) {
		w.dns.Delete("_mta-sts.example.test")
		w.clock.Advance(stsRecheck)
		p, err := w.policy(t).Host(context.Background(), "mx.example.test")
		if err != nil || p.Failure != "" || p.Report.Type != PolicyTypeNone {
			t.Errorf("Host = %+v %v", p, err)
		}
	})
}

// TestMTASTSRefresh: the refresher fetches a policy again halfway to its
// expiry (fake clock), keeps it when that fails, and drops it once
// expired.
func TestMTASTSRefresh(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.6", enforcePolicy)
	w.policy(t)
	ctx := context.Background()
	w.ps.sts.refresh(ctx)
	if w.srv.count() != 1 {
		t.Fatalf("refreshed a fresh policy: %d fetches", w.srv.count())
	}
	w.clock.Advance(12 * time.Hour) // max_age 86400: due halfway
	w.srv.set(200, "text/plain", "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 172800\n")
	w.ps.sts.refresh(ctx)
	if w.srv.count() != 2 {
		t.Fatalf("%d fetches, want the refresh to fetch", w.srv.count())
	}
	stored, _, _ := w.store.Get("example.test")
	if stored.Policy.MaxAge != 172800 || !stored.Expires.Equal(w.clock.Now().Add(48*time.Hour)) {
		t.Errorf("after the refresh the store holds %+v", stored)
	}
	// Due again (at most a day between fetches), and failing: kept.
	w.clock.Advance(24 * time.Hour)
	w.srv.set(500, "text/plain", "")
	w.ps.sts.refresh(ctx)
	if w.srv.count() != 3 {
		t.Fatalf("%d fetches, want a third", w.srv.count())
	}
	if dp := w.policy(t); dp.STS == nil || dp.STS.Policy.MaxAge != 172800 {
		t.Errorf("a failed refresh dropped the policy: %+v", dp.STS)
	}
	// Past its expiry, with the server still down: gone.
	w.clock.Advance(25 * time.Hour)
	w.ps.sts.refresh(ctx)
	if _, ok, _ := w.store.Get("example.test"); ok {
		t.Error("an expired policy survived the refresher")
	}
}

// TestMTASTSNone: mode none is no policy.
func TestMTASTSNone(t *testing.T) {
	w := newSTSWorld(t, "127.0.14.7", "version: STSv1\nmode: none\nmax_age: 86400\n")
	dp := w.policy(t)
	p, err := dp.Host(context.Background(), "anything.example.test")
	if dp.STS != nil || err != nil || p.Mode != Opportunistic || p.Failure != "" {
		t.Errorf("mode none: policy %+v, host %+v %v", dp.STS, p, err)
	}
}

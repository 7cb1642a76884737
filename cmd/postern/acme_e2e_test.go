package main

// End-to-end ACME (issue 16): postern serve with tls.acme against a real
// ACME server, Let's Encrypt's Pebble, on loopback. Pebble validates the
// tls-alpn-01 challenge for real: it looks postern.test up in the test's
// DNS server and connects to postern's challenge listener. postern trusts
// Pebble's API through SSL_CERT_FILE, as FIELD-NOTES says Go does; nothing
// in postern knows it is being tested. (Renewal, and a failed renewal
// keeping the old certificate, are driven in relay/acme's tests, with
// certificates that last seconds.)

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// acmeWorld is a DNS server that puts postern.test on the challenge
// listener's address, and Pebble validating against it.
type acmeWorld struct {
	dns       *relaytest.DNS
	pebble    *relaytest.Pebble
	challenge string // host:port of postern's challenge listener
}

func newACMEWorld(t *testing.T) *acmeWorld {
	t.Helper()
	w := &acmeWorld{dns: relaytest.NewDNS(t, relaytest.Zone{}), challenge: freeAddr(t)}
	host, port, _ := net.SplitHostPort(w.challenge)
	p, _ := strconv.Atoi(port)
	w.dns.SetA("postern.test", host)
	w.pebble = relaytest.StartPebble(t, relaytest.PebbleOptions{DNS: w.dns.Addr(), TLSPort: p})
	return w
}

// instance is a postern with tls.acme pointed at directory.
func (w *acmeWorld) instance(t *testing.T, dir, directory string) *instance {
	t.Helper()
	in := newInstanceIn(t, dir, testConfig{Resolver: w.dns.Addr(), DeliveryPort: 25, Extra: fmt.Sprintf(`tls:
  acme:
    email: postmaster@postern.test
    directory: %s
    challenge: tls-alpn-01
    challenge_listen: %s
`, directory, w.challenge)})
	in.env = []string{"SSL_CERT_FILE=" + w.pebble.APIRootsFile}
	return in
}

// servedLeaf connects to addr with implicit TLS, naming serverName (""
// sends no SNI, as many SMTP clients do), and returns the chain served.
func servedLeaf(t *testing.T, addr, serverName string) []*x509.Certificate {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: serverName, InsecureSkipVerify: true}) // verified below, by name
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates
}

// verifyFor checks a served chain as a client trusting roots would, for
// postern.test.
func verifyFor(chain []*x509.Certificate, roots *x509.CertPool) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{DNSName: "postern.test", Roots: roots, Intermediates: inter})
	return err
}

// TestACMEFirstIssuance: postern obtains a certificate for its hostname
// and serves it on the TLS listeners, with SNI and without; after a
// restart with the CA gone, it serves the same certificate from data_dir.
func TestACMEFirstIssuance(t *testing.T) {
	t.Parallel()
	w := newACMEWorld(t)
	dir := t.TempDir()
	in := w.instance(t, dir, w.pebble.Directory)
	in.start()
	in.waitLog(60*time.Second, func(e logEntry) bool { return e.isMsg("TLS certificate in service") })
	roots := w.pebble.IssuerRoots(t)

	first := servedLeaf(t, in.cfg.Submissions, "postern.test")
	if err := verifyFor(first, roots); err != nil {
		t.Fatalf("the certificate served with SNI does not verify against Pebble's root: %v", err)
	}
	if err := verifyFor(servedLeaf(t, in.cfg.Submissions, ""), roots); err != nil {
		t.Fatalf("the certificate served without SNI does not verify: %v", err)
	}
	// STARTTLS on the submission port serves it too (the same store).
	d := dial(t, in.cfg.Submission)
	d.cmd("EHLO client.test")
	if r := d.cmd("STARTTLS"); r[:3] != "220" {
		t.Fatalf("STARTTLS: %q", r)
	}
	tc := tls.Client(d.conn, &tls.Config{ServerName: "postern.test", RootCAs: roots})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STARTTLS handshake verifying against Pebble's root: %v", err)
	}
	tc.Close()
	keys, _ := filepath.Glob(filepath.Join(dir, "data", "acme", "certificates", "*", "postern.test", "postern.test.key"))
	if len(keys) != 1 {
		t.Fatalf("no key stored under data_dir/acme: %v", keys)
	}
	if fi, err := os.Stat(keys[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, mode %v; want 0600", keys[0], err, fi.Mode().Perm())
	}

	// The CA is gone; the certificate obtained is still good and is
	// served from storage after a restart.
	in.stop()
	w.pebble.Stop()
	in.start()
	in.waitLog(30*time.Second, func(e logEntry) bool { return e.isMsg("TLS certificate in service") })
	again := servedLeaf(t, in.cfg.Submissions, "postern.test")
	if !again[0].Equal(first[0]) {
		t.Error("after a restart with the CA down, another certificate is served than the one obtained")
	}
}

// TestACMEServerDownAtStart: with the CA unreachable, postern still
// starts, serves its self-signed certificate, and says why in a warning.
func TestACMEServerDownAtStart(t *testing.T) {
	t.Parallel()
	w := newACMEWorld(t)
	in := w.instance(t, t.TempDir(), "https://"+freeAddr(t)+"/dir")
	in.start()
	e := in.waitLog(60*time.Second, func(e logEntry) bool {
		return e.isMsg("could not obtain a TLS certificate: the self-signed (or configured) one stays in service, and postern retries")
	})
	if e.str("level") != "warn" || e.str("name") != "postern.test" {
		t.Errorf("warning: %v", e)
	}
	leaf := servedLeaf(t, in.cfg.Submissions, "postern.test")[0]
	if leaf.Issuer.CommonName != "postern.test" || leaf.Subject.CommonName != "postern.test" {
		t.Errorf("served %q issued by %q, want the self-signed certificate", leaf.Subject, leaf.Issuer)
	}
}

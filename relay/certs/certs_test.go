package certs

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

// leaf returns the certificate the TLS config hands out now.
func leaf(t *testing.T, s *Store) *x509.Certificate {
	t.Helper()
	c, err := s.Config().GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil {
		t.Fatalf("GetCertificate: %v, %v", c, err)
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestSelfSignedMadeOnceAndKept: without configured files a self-signed
// certificate for the host name is made under dir, and the next Load
// takes the same one rather than making another (clients that pinned it
// keep working across restarts).
func TestSelfSignedMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	s, err := Load("", "", dir, "mail.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Generated {
		t.Error("Generated is false for a self-signed certificate")
	}
	first := leaf(t, s)
	if err := first.VerifyHostname("mail.example.test"); err != nil {
		t.Errorf("self-signed certificate: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "selfsigned.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	again, err := Load("", "", dir, "mail.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if second := leaf(t, again); second.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Error("a second Load made a new certificate instead of taking the one on disk")
	}
	if min := s.Config().MinVersion; min != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", min)
	}
}

// TestReloadKeepsTheOldOnError: a certificate that does not load leaves
// the one in service as it was (SIGHUP with a half-copied file).
func TestReloadKeepsTheOldOnError(t *testing.T) {
	dir := t.TempDir()
	s, err := Load("", "", dir, "mail.example.test")
	if err != nil {
		t.Fatal(err)
	}
	before := leaf(t, s)
	if err := os.WriteFile(filepath.Join(dir, "selfsigned.crt"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("Reload of a broken file: nil error")
	}
	if after := leaf(t, s); after.SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Error("a failed Reload replaced the certificate in service")
	}
}

// fixedSource serves cert for the names in it, nothing for the others.
type fixedSource struct {
	cert  *tls.Certificate
	names map[string]bool
}

func (f fixedSource) Certificate(h *tls.ClientHelloInfo) *tls.Certificate {
	if f.names[h.ServerName] {
		return f.cert
	}
	return nil
}

// TestSourceFirstStoreAsFallback: a Source's certificate is served where
// it has one; where it has none (not obtained yet, another name), the
// Store's own is; SetSource(nil) takes the Source out again.
func TestSourceFirstStoreAsFallback(t *testing.T) {
	own, err := Load("", "", t.TempDir(), "mail.example.test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := Load("", "", t.TempDir(), "other.example.test")
	if err != nil {
		t.Fatal(err)
	}
	srcCert, _ := other.Config().GetCertificate(&tls.ClientHelloInfo{})
	ownCert, _ := own.Config().GetCertificate(&tls.ClientHelloInfo{})
	cfg := own.Config()
	get := func(name string) *tls.Certificate {
		c, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	own.SetSource(fixedSource{srcCert, map[string]bool{"mail.example.test": true}})
	if get("mail.example.test") != srcCert {
		t.Error("the Source's certificate is not served for its name")
	}
	if get("elsewhere.example.test") != ownCert {
		t.Error("a name the Source has nothing for does not get the Store's certificate")
	}
	own.SetSource(nil)
	if get("mail.example.test") != ownCert {
		t.Error("SetSource(nil) left the Source in place")
	}
}

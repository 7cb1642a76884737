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

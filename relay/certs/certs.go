package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Store holds the listeners' certificate and can swap it while sessions
// run (TLS config reads it through GetCertificate on every handshake).
type Store struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
	source            atomic.Pointer[sourceBox]
	// Generated is true when no certificate was configured and a
	// self-signed one was made; the caller warns about it.
	Generated bool
}

// Load loads certFile/keyFile, or, when both are empty, loads or
// creates a self-signed certificate for hostname in dir. A self-signed
// certificate still encrypts; clients that verify will refuse it, which is
// why the caller warns.
func Load(certFile, keyFile, dir, hostname string) (*Store, error) {
	c := &Store{certFile: certFile, keyFile: keyFile}
	if certFile == "" && keyFile == "" {
		c.certFile = filepath.Join(dir, "selfsigned.crt")
		c.keyFile = filepath.Join(dir, "selfsigned.key")
		c.Generated = true
		if _, err := os.Stat(c.certFile); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(c.certFile, c.keyFile, hostname); err != nil {
				return nil, err
			}
		}
	}
	return c, c.Reload()
}

// Reload reads the files again. On error the old certificate stays in
// service.
func (c *Store) Reload() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("loading TLS certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&cert)
	return nil
}

// Source supplies certificates that change by themselves, such as those
// relay/acme obtains and renews. It is asked first on every handshake.
type Source interface {
	// Certificate returns the certificate for this handshake, or nil
	// when the Source has none (yet): the Store's own is served then. It
	// must be fast and must not reach the network.
	Certificate(hello *tls.ClientHelloInfo) *tls.Certificate
}

type sourceBox struct{ Source }

// SetSource puts src in front of the Store's certificate; nil removes it.
// The Store's own certificate (the files, or the self-signed one) stays
// the fallback for handshakes src has nothing for.
func (c *Store) SetSource(src Source) {
	if src == nil {
		c.source.Store(nil)
		return
	}
	c.source.Store(&sourceBox{src})
}

// Config returns a server TLS configuration that always uses the current
// certificate. TLS 1.2 is the floor (RFC 8996 retires 1.0 and 1.1).
func (c *Store) Config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.certificate,
	}
}

func (c *Store) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if src := c.source.Load(); src != nil {
		if cert := src.Certificate(hello); cert != nil {
			return cert, nil
		}
	}
	return c.cur.Load(), nil
}

func writeSelfSigned(certFile, keyFile, hostname string) error {
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname},
		DNSNames:     []string{hostname},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Key first, so a crash between the two writes leaves no certificate
	// without its key (the certificate's presence is what is checked).
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

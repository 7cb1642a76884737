package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// BenchmarkHandshake measures what a TLS handshake costs on the
// submission path (issue 12: clients open a connection per message), on
// both ends in this process: with the ECDSA P-256 certificate postern
// makes by default, with an RSA-2048 one (what many users bring), and
// resumed with a TLS 1.3 session ticket (for clients that keep one).
func BenchmarkHandshake(b *testing.B) {
	for _, bc := range []struct {
		name    string
		key     func() (any, any) // private, public
		resumed bool
	}{
		{"ecdsa-p256", func() (any, any) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return k, &k.PublicKey
		}, false},
		{"rsa-2048", func() (any, any) {
			k, _ := rsa.GenerateKey(rand.Reader, 2048)
			return k, &k.PublicKey
		}, false},
		{"ecdsa-p256-resumed", func() (any, any) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return k, &k.PublicKey
		}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			priv, pub := bc.key()
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.test"},
				DNSNames: []string{"mx.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
			if err != nil {
				b.Fatal(err)
			}
			cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
			srv := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			cli := &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"}
			if bc.resumed {
				cli.ClientSessionCache = tls.NewLRUClientSessionCache(1)
			}
			// Loopback TCP, as a real client: net.Pipe has no buffer, and
			// TLS 1.3's writes after the handshake would block on it.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			resumed, n := 0, 0
			for b.Loop() {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				s, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					ts := tls.Server(s, srv)
					err := ts.Handshake()
					// Read the client's byte, so that a TLS 1.3 ticket
					// written after the handshake reaches the client.
					var buf [1]byte
					ts.Read(buf[:])
					ts.Write(buf[:])
					done <- err
				}()
				tc := tls.Client(c, cli)
				if err := tc.Handshake(); err != nil {
					b.Fatal(err)
				}
				tc.Write([]byte{1})
				var buf [1]byte
				tc.Read(buf[:])
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				if tc.ConnectionState().DidResume {
					resumed++
				}
				n++
				c.Close()
				s.Close()
			}
			b.ReportMetric(float64(resumed)/float64(n), "resumed/op")
		})
	}
}

package tlspolicy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// testPKI is a root CA, an intermediate it signed, and a way to issue
// leaves from the intermediate: enough to test every path of Check
// without files.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
	roots             *x509.CertPool
}

func newCert(t testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var serial int64

func tmpl(cn string, ca bool, from, to time.Time, names ...string) *x509.Certificate {
	serial++
	c := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: from, NotAfter: to, DNSNames: names,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ca {
		c.IsCA, c.BasicConstraintsValid = true, true
		c.KeyUsage |= x509.KeyUsageCertSign
		c.ExtKeyUsage = nil
	}
	return c
}

func newPKI(t testing.TB) *testPKI {
	now := time.Now()
	p := &testPKI{rootKey: newKey(t), interKey: newKey(t)}
	rt := tmpl("test root", true, now.Add(-time.Hour), now.Add(48*time.Hour))
	p.root = newCert(t, rt, rt, &p.rootKey.PublicKey, p.rootKey)
	p.inter = newCert(t, tmpl("test intermediate", true, now.Add(-time.Hour), now.Add(48*time.Hour)), p.root, &p.interKey.PublicKey, p.rootKey)
	p.roots = x509.NewCertPool()
	p.roots.AddCert(p.root)
	return p
}

// leaf issues a certificate for names from the intermediate, valid from
// an hour ago for a day, or expired when expired is set. The chain the
// server would send is leaf, intermediate.
func (p *testPKI) leaf(t testing.TB, expired bool, names ...string) []*x509.Certificate {
	now := time.Now()
	from, to := now.Add(-time.Hour), now.Add(24*time.Hour)
	if expired {
		from, to = now.Add(-48*time.Hour), now.Add(-24*time.Hour)
	}
	k := newKey(t)
	return []*x509.Certificate{newCert(t, tmpl(names[0], false, from, to, names...), p.inter, &k.PublicKey, p.interKey), p.inter}
}

// selfSigned is a certificate nobody vouches for, as many MX hosts have.
func selfSigned(t testing.TB, names ...string) []*x509.Certificate {
	k := newKey(t)
	now := time.Now()
	c := tmpl(names[0], false, now.Add(-time.Hour), now.Add(24*time.Hour), names...)
	return []*x509.Certificate{newCert(t, c, c, &k.PublicKey, k)}
}

// tlsaFor is the record of cert with the given parameters.
func tlsaFor(c *x509.Certificate, usage, selector, mtype uint8) TLSA {
	sel := c.Raw
	if selector == SelectorSPKI {
		sel = c.RawSubjectPublicKeyInfo
	}
	data := sel
	if mtype == MatchSHA256 {
		h := sha256.Sum256(sel)
		data = h[:]
	} else if mtype == MatchSHA512 {
		h := sha512Sum(sel)
		data = h
	}
	return TLSA{Usage: usage, Selector: selector, MatchingType: mtype, Data: data}
}

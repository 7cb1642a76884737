package tlspolicy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"
)

// ClientConfig is the TLS configuration for a session with an MX host
// under any policy: TLS 1.2 at least, SNI set to the host name (RFC 7672
// §8.1 asks for SNI with DANE; it harms nothing elsewhere), and no
// verification by crypto/tls, because the policy decides what verifies
// the server: Check does it after the handshake. The handshake alone
// therefore proves nothing; never skip Check.
func ClientConfig(host string) *tls.Config {
	return &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // Check verifies, as the policy says
	}
}

// Check decides whether a session whose TLS handshake with mxHost ended
// in cs may carry the message under p, and what to report. ok false means
// the session must end before MAIL (the certificate does not satisfy an
// enforced policy); failure, when not "", is to be reported (TLS-RPT)
// whether or not ok: a testing-mode policy fails without refusing, and
// p.Failure is reported for every session under p.
func Check(p HostPolicy, cs tls.ConnectionState, mxHost string) (ok bool, failure ResultType) {
	names := p.Names
	if len(names) == 0 {
		names = []string{mxHost}
	}
	now := time.Now()
	switch p.Mode {
	case DANE:
		if rt := matchDANE(p.TLSA, cs.PeerCertificates, names, now); rt != "" {
			return p.relaxed, rt
		}
	case WebPKI:
		if rt := verifyWebPKI(cs.PeerCertificates, names, p.roots, now); rt != "" {
			return p.relaxed, rt
		}
	}
	if p.Testing && p.Mode != WebPKI && p.Mode != DANE {
		// The testing policy asks for WebPKI: report what it would have
		// refused.
		if rt := verifyWebPKI(cs.PeerCertificates, names, p.roots, now); rt != "" {
			return true, rt
		}
	}
	return true, p.Failure
}

// NoSTARTTLS is Check for a server that did not offer STARTTLS: ok false
// means the message must not be sent in plain text to it.
func (p HostPolicy) NoSTARTTLS() (ok bool, failure ResultType) {
	if p.RequiresTLS() {
		return false, StartTLSNotSupported
	}
	if p.Testing || p.Mode != Opportunistic { // relaxed
		return true, StartTLSNotSupported
	}
	return true, p.Failure
}

// HandshakeFailed is Check for a STARTTLS whose handshake failed with
// err: plain says delivery may go on in plain text (on a new connection),
// which only Opportunistic allows. The failure to report is
// certificate-not-trusted-like only when the error says so; otherwise it
// is validation-failure (RFC 8460 §4.3.1: "a general failure").
func (p HostPolicy) HandshakeFailed(err error) (plain bool, failure ResultType) {
	rt := ValidationFailure
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		rt = CertificateNotTrusted
	}
	if p.RequiresTLS() {
		return false, rt
	}
	if p.Testing || p.Mode != Opportunistic { // relaxed
		return true, rt
	}
	return true, p.Failure
}

// verifyWebPKI checks the chain against roots (nil: the system's) and
// the leaf against names, and says which check failed.
func verifyWebPKI(chain []*x509.Certificate, names []string, roots *x509.CertPool, now time.Time) ResultType {
	if len(chain) == 0 {
		return ValidationFailure
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now}
	if _, err := leaf.Verify(opts); err != nil {
		return verifyFailure(err)
	}
	if !matchesAny(leaf, names) {
		return CertificateHostMismatch
	}
	return ""
}

func verifyFailure(err error) ResultType {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		return CertificateExpired
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return CertificateNotTrusted
	}
	return ValidationFailure
}

func matchesAny(leaf *x509.Certificate, names []string) bool {
	for _, n := range names {
		if leaf.VerifyHostname(n) == nil {
			return true
		}
	}
	return false
}

// matchDANE authenticates chain with the usable records recs (RFC 7672
// §3.1, RFC 7671):
//   - DANE-EE(3): the leaf matches; its names and dates are not checked
//     (RFC 7672 §3.1.1: the record binds the key to the service);
//   - DANE-TA(2): a certificate of the chain the server sent matches
//     (RFC 7672 §3.1.2: the server must send the trust anchor), the leaf
//     chains to it, is within its dates and valid for one of names.
func matchDANE(recs []TLSA, chain []*x509.Certificate, names []string, now time.Time) ResultType {
	if len(chain) == 0 {
		return ValidationFailure
	}
	if len(recs) == 0 {
		return DANERequired
	}
	leaf := chain[0]
	var taFailure ResultType
	for _, r := range recs {
		switch r.Usage {
		case UsageDANEEE:
			if r.Matches(leaf) {
				return ""
			}
		case UsageDANETA:
			for _, ta := range chain {
				if !r.Matches(ta) {
					continue
				}
				rt := verifyTA(leaf, chain, ta, names, now)
				if rt == "" {
					return ""
				}
				taFailure = rt
			}
		}
	}
	if taFailure != "" {
		return taFailure
	}
	return ValidationFailure
}

// verifyTA verifies leaf up to the trust anchor ta, taken from the chain
// the server sent.
func verifyTA(leaf *x509.Certificate, chain []*x509.Certificate, ta *x509.Certificate, names []string, now time.Time) ResultType {
	if ta == leaf {
		// A leaf that is its own anchor: bound by the record, like
		// DANE-EE, but names and dates still count for a TA record.
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			return CertificateExpired
		}
		if !matchesAny(leaf, names) {
			return CertificateHostMismatch
		}
		return ""
	}
	roots := x509.NewCertPool()
	roots.AddCert(ta)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != ta {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now}); err != nil {
		return verifyFailure(err)
	}
	if !matchesAny(leaf, names) {
		return CertificateHostMismatch
	}
	return ""
}

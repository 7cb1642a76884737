package doctor

import (
	"crypto/x509"
	"fmt"
	"time"
)

const selfSignedFix = "let postern get one: set tls.acme (see README, \"Certificates from ACME\")"

// expirySoon is when a certificate's end becomes a warning.
const expirySoon = 14 * 24 * time.Hour

// certificate checks the certificate the listeners serve: valid for the
// hostname, trusted, and how long it has left.
func (d *doctor) certificate() {
	h, c := d.o.Hostname, d.o.Cert
	f := Finding{Subject: h, Check: "certificate"}
	switch {
	case c.Err != nil:
		f.Severity, f.Summary = Error, fmt.Sprintf("%s: cannot be read: %v", c.Source, c.Err)
		d.add(f)
		return
	case len(c.Chain) == 0 && c.SelfSigned:
		f.Severity = Warning
		f.Summary = c.Source + ": made at the first start of postern serve; mail clients that verify certificates refuse it"
		f.Fix = selfSignedFix
		d.add(f)
		return
	case len(c.Chain) == 0:
		f.Severity = Warning
		f.Summary = c.Source + ": no certificate obtained yet; the self-signed one is served until then"
		f.Fix = "see the log of postern serve (\"could not obtain a TLS certificate\" says why)"
		d.add(f)
		return
	}
	leaf := c.Chain[0]
	now := d.o.Now()
	left := leaf.NotAfter.Sub(now)
	days := int(left / (24 * time.Hour))
	expiry := fmt.Sprintf("expires in %d day%s (%s)", days, plural(days), leaf.NotAfter.UTC().Format("2006-01-02"))
	if err := leaf.VerifyHostname(h); err != nil {
		f.Severity, f.Summary = Error, fmt.Sprintf("%s: not valid for %s: %v", c.Source, h, err)
		f.Fix = "get a certificate for " + h + " (tls.acme does it)"
		d.add(f)
		return
	}
	if c.SelfSigned {
		f.Severity = Warning
		f.Summary = c.Source + ": mail clients that verify certificates refuse it (servers delivering to you do not care)"
		f.Fix = selfSignedFix
		d.add(f)
		return
	}
	inter := x509.NewCertPool()
	for _, ic := range c.Chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: d.o.Roots, Intermediates: inter, CurrentTime: now}); err != nil && left > 0 {
		f.Severity, f.Summary = Error, fmt.Sprintf("%s: not trusted: %v", c.Source, err)
		f.Fix = "serve the whole chain (tls.cert_file with the intermediates after the certificate), from a CA clients trust"
		d.add(f)
		return
	}
	switch {
	case left <= 0:
		f.Severity, f.Summary = Error, fmt.Sprintf("%s: expired on %s", c.Source, leaf.NotAfter.UTC().Format("2006-01-02"))
		f.Fix = "renew it (with tls.acme, see why renewal failed in the log)"
	case left < expirySoon:
		f.Severity, f.Summary = Warning, fmt.Sprintf("%s: valid for %s, but %s", c.Source, h, expiry)
		f.Fix = "renew it (with tls.acme, renewal starts 30 days ahead: see why it failed in the log)"
	default:
		f.Severity, f.Summary = OK, fmt.Sprintf("%s: valid for %s, %s", c.Source, h, expiry)
	}
	d.add(f)
}

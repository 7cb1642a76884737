package tlspolicy

import (
	"crypto/x509"
	"fmt"
	"slices"
)

// Mode is what a session with one MX host must achieve.
type Mode int

const (
	// Opportunistic: STARTTLS when offered, the certificate unchecked,
	// plain text when STARTTLS is missing or fails (RFC 7435).
	Opportunistic Mode = iota
	// Encrypt: TLS is required, the certificate is not checked.
	Encrypt
	// WebPKI: TLS with a certificate that chains to a trusted root and is
	// valid for one of HostPolicy.Names (RFC 8461 §4.2, RFC 6125).
	WebPKI
	// DANE: TLS with a certificate that matches one of HostPolicy.TLSA
	// (RFC 7672 §3).
	DANE
)

func (m Mode) String() string {
	switch m {
	case Opportunistic:
		return "opportunistic"
	case Encrypt:
		return "encrypt"
	case WebPKI:
		return "webpki"
	case DANE:
		return "dane"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Source is the policy that decided a HostPolicy.
type Source int

const (
	SourceNone   Source = iota // nothing published or configured: Options.Default
	SourceDANE                 // the host's TLSA records
	SourceMTASTS               // the domain's MTA-STS policy
	SourceConfig               // delivery.tls_policy for the domain
)

func (s Source) String() string {
	switch s {
	case SourceNone:
		return "none"
	case SourceDANE:
		return "dane"
	case SourceMTASTS:
		return "mta-sts"
	case SourceConfig:
		return "config"
	}
	return fmt.Sprintf("Source(%d)", int(s))
}

// HostPolicy is the TLS requirement of one session with one MX host.
type HostPolicy struct {
	// Mode is what the session must achieve, enforced.
	Mode Mode
	// Names are the names the certificate must be valid for (WebPKI,
	// DANE-TA): the MX host name.
	Names []string
	// TLSA are the usable TLSA records (DANE).
	TLSA []TLSA
	// Source is the policy that decided Mode.
	Source Source
	// PolicyDomain is the recipient domain the policy belongs to: the
	// domain TLS reports are about.
	PolicyDomain string
	// Testing: the domain's MTA-STS policy is in testing mode. Its
	// requirements (TLS, a WebPKI certificate for the MX name) are
	// checked and failures reported, but Mode and Source are those of the
	// next policy in line, which is what is enforced (RFC 8461 §5).
	Testing bool
	// Failure, when set, is a failure to report for every session under
	// this policy whatever the handshake does: the policy itself could
	// not be had (sts-policy-fetch-error, sts-policy-invalid,
	// sts-webpki-invalid) or was unusable (tlsa-invalid), or the host is
	// outside a testing policy (validation-failure).
	Failure ResultType
	// Report says which policy TLS reports count the session under.
	Report ReportPolicy

	// roots verifies WebPKI certificates; nil means the system roots.
	roots *x509.CertPool
	// mxSecure: the host was named by a DNSSEC-secure MX answer (RFC
	// 8689 §4.2.1 accepts that, or MTA-STS, for REQUIRETLS).
	mxSecure bool
	// relaxed: the message asked for "TLS-Required: No" (RFC 8689 §5):
	// failures are reported, never enforced.
	relaxed bool
}

// RequiresTLS reports whether a session without TLS must not carry the
// message.
func (p HostPolicy) RequiresTLS() bool { return p.Mode != Opportunistic && !p.relaxed }

// Authenticated reports whether the policy authenticates the server
// (DANE or WebPKI, enforced): what REQUIRETLS (RFC 8689 §5) asks of every
// hop.
func (p HostPolicy) Authenticated() bool { return p.Mode == DANE || p.Mode == WebPKI }

// String is the policy for logs: "dane (dane)", "webpki (mta-sts)",
// "opportunistic (none, mta-sts testing)".
func (p HostPolicy) String() string {
	s := p.Mode.String() + " (" + p.Source.String()
	if p.Testing {
		s += ", mta-sts testing"
	}
	return s + ")"
}

// Policy types of a TLS report (RFC 8460 §4.4).
const (
	PolicyTypeTLSA   = "tlsa"
	PolicyTypeSTS    = "sts"
	PolicyTypeNone   = "no-policy-found"
	maxPolicyStrings = 100
)

// ReportPolicy is the "policy" object of a TLS report (RFC 8460 §4.4):
// which published policy a session was checked against.
type ReportPolicy struct {
	Type    string   `json:"policy-type"`
	Strings []string `json:"policy-string,omitempty"`
	Domain  string   `json:"policy-domain"`
	MXHost  []string `json:"mx-host,omitempty"`
}

// key identifies the policy among others of its domain in one day's
// counts.
func (r ReportPolicy) key() string {
	return fmt.Sprintf("%s\x00%q\x00%q", r.Type, r.Strings, r.MXHost)
}

func (r ReportPolicy) equal(o ReportPolicy) bool {
	return r.Type == o.Type && r.Domain == o.Domain && slices.Equal(r.Strings, o.Strings) && slices.Equal(r.MXHost, o.MXHost)
}

// ResultType is a result type of RFC 8460 §4.3: why a session failed, or
// "" for success.
type ResultType string

// Result types of RFC 8460 §4.3.
const (
	// Negotiation failures (§4.3.1).
	StartTLSNotSupported    ResultType = "starttls-not-supported"
	CertificateHostMismatch ResultType = "certificate-host-mismatch"
	CertificateExpired      ResultType = "certificate-expired"
	CertificateNotTrusted   ResultType = "certificate-not-trusted"
	ValidationFailure       ResultType = "validation-failure"
	// DANE policy failures (§4.3.2.1).
	TLSAInvalid   ResultType = "tlsa-invalid"
	DNSSECInvalid ResultType = "dnssec-invalid"
	DANERequired  ResultType = "dane-required"
	// MTA-STS policy failures (§4.3.2.2).
	STSPolicyFetchError ResultType = "sts-policy-fetch-error"
	STSPolicyInvalid    ResultType = "sts-policy-invalid"
	STSWebPKIInvalid    ResultType = "sts-webpki-invalid"
)

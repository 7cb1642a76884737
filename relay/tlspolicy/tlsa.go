package tlspolicy

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
)

// TLSA is one TLSA record (RFC 6698 §2.1).
type TLSA struct {
	Usage        uint8  // 2 DANE-TA, 3 DANE-EE are usable for SMTP
	Selector     uint8  // 0 full certificate, 1 SubjectPublicKeyInfo
	MatchingType uint8  // 0 exact, 1 SHA-256, 2 SHA-512
	Data         []byte // the certificate association data
}

// TLSA certificate usages, selectors and matching types (RFC 6698 §7,
// RFC 7218 acronyms).
const (
	UsagePKIXTA = 0 // unusable for SMTP (RFC 7672 §3.1.3)
	UsagePKIXEE = 1 // likewise
	UsageDANETA = 2
	UsageDANEEE = 3

	SelectorCert = 0
	SelectorSPKI = 1

	MatchFull   = 0
	MatchSHA256 = 1
	MatchSHA512 = 2
)

// Usable reports whether the record can authenticate an SMTP server (RFC
// 7672 §2.2: records with other parameters are "unusable" and ignored, as
// is a digest of the wrong length): usage DANE-TA or DANE-EE, selector 0
// or 1, matching type 0, 1 or 2.
func (t TLSA) Usable() bool {
	if t.Usage != UsageDANETA && t.Usage != UsageDANEEE || t.Selector > SelectorSPKI {
		return false
	}
	switch t.MatchingType {
	case MatchFull:
		return len(t.Data) > 0
	case MatchSHA256:
		return len(t.Data) == sha256.Size
	case MatchSHA512:
		return len(t.Data) == sha512.Size
	}
	return false
}

// Matches reports whether cert is the one the record describes: its
// selected part (the whole DER certificate, or its SubjectPublicKeyInfo),
// compared as the matching type says. The usage is not looked at: that is
// the caller's (matchDANE). An unusable record matches nothing.
func (t TLSA) Matches(cert *x509.Certificate) bool {
	if cert == nil || !t.Usable() {
		return false
	}
	sel := cert.Raw
	if t.Selector == SelectorSPKI {
		sel = cert.RawSubjectPublicKeyInfo
	}
	var got []byte
	switch t.MatchingType {
	case MatchFull:
		got = sel
	case MatchSHA256:
		h := sha256.Sum256(sel)
		got = h[:]
	case MatchSHA512:
		h := sha512.Sum512(sel)
		got = h[:]
	}
	return len(got) == len(t.Data) && subtle.ConstantTimeCompare(got, t.Data) == 1
}

// String is the record's presentation format, "3 1 1 <hex>", as TLS
// reports quote it (RFC 8460 §4.4: policy-string).
func (t TLSA) String() string {
	return fmt.Sprintf("%d %d %d %s", t.Usage, t.Selector, t.MatchingType, strings.ToUpper(hex.EncodeToString(t.Data)))
}

// usable returns the usable records of rrs.
func usable(rrs []TLSA) []TLSA {
	var out []TLSA
	for _, t := range rrs {
		if t.Usable() {
			out = append(out, t)
		}
	}
	return out
}

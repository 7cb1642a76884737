package relay

import (
	"errors"
	"strings"
)

// Address is a mailbox as postern handles it: a dot-atom local part and a
// lower-cased domain name. go-smtp has already removed the angle brackets,
// any source route (RFC 5321 §4.1.1.3 says to ignore them) and the quotes of
// a quoted local part.
type Address struct {
	Local  string
	Domain string
}

func (a Address) String() string { return a.Local + "@" + a.Domain }

var (
	errAddrEmpty   = errors.New("empty address")
	errAddrAt      = errors.New("address must contain exactly one @")
	errAddrLocal   = errors.New("local part is not a dot-atom")
	errAddrLong    = errors.New("address too long")
	errAddrDomain  = errors.New("domain is not a host name")
	errAddrLiteral = errors.New("address literals are not accepted")
)

// ParseAddress checks a mailbox from MAIL or RCPT.
//
// It is stricter than RFC 5321 on purpose. A quoted local part arrives here
// unquoted, so "a@b"@c looks like a@b@c: rather than guess which @ routes,
// postern refuses every address with more than one @. Local parts must be
// dot-atoms (RFC 5322 §3.2.3), so an address can be written back out without
// quoting. Domains must be ASCII host names: SMTPUTF8 is not offered, and
// address literals ([192.0.2.1]) are refused, because a literal bypasses the
// MX lookup that every policy decision here rests on.
func ParseAddress(s string) (Address, error) {
	if s == "" {
		return Address{}, errAddrEmpty
	}
	// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the
	// brackets; the mailbox is at most 254.
	if len(s) > 254 {
		return Address{}, errAddrLong
	}
	local, domain, ok := strings.Cut(s, "@")
	if !ok || strings.Contains(domain, "@") {
		return Address{}, errAddrAt
	}
	if len(local) > 64 { // RFC 5321 §4.5.3.1.1
		return Address{}, errAddrLong
	}
	if !isDotAtom(local) {
		return Address{}, errAddrLocal
	}
	if strings.HasPrefix(domain, "[") {
		return Address{}, errAddrLiteral
	}
	domain = strings.ToLower(domain)
	if !isHostname(domain) {
		return Address{}, errAddrDomain
	}
	return Address{Local: local, Domain: domain}, nil
}

// isDotAtom reports whether s is a dot-atom of ASCII atext (RFC 5322 §3.2.3).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isHostname reports whether s is a fully qualified ASCII host name with at
// least two labels (RFC 1123 §2.1). A trailing dot is refused: it is a
// classic trick to make one domain look like two.
func isHostname(s string) bool {
	if len(s) > 253 || !strings.Contains(s, ".") {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

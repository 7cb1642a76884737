package submit

import (
	"errors"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
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
	errAddrRoute   = errors.New("local part holds a route (% or !)")
)

// ParseAddress checks a mailbox from MAIL or RCPT.
//
// It is stricter than RFC 5321 on purpose. A quoted local part arrives here
// unquoted, so "a@b"@c looks like a@b@c: rather than guess which @ routes,
// postern refuses every address with more than one @. Local parts must be
// dot-atoms (RFC 5322 §3.2.3), so an address can be written back out without
// quoting. Domains must be host names; an internationalised domain
// (bücher.example) is converted to its A-labels (xn--bcher-kva.example, RFC
// 5891 §4, as a name valid for registration) and kept so, which is how
// every server can route it without SMTPUTF8 (RFC 6531 §3.2 asks a client
// to do so when it can). Address literals ([192.0.2.1]) are refused, because
// a literal bypasses the MX lookup that every policy decision here rests
// on. The local part stays ASCII: SMTPUTF8 is not offered.
//
// The classic relay tricks are refused by construction: the percent hack
// (user%other@host) and bang paths (host!user@host) because '%' and '!' in a
// local part route mail through whoever reads them (RFC 5321 §3.6.1 lets a
// server refuse them, and Appendix C calls these forms obsolete); a quoted
// "a@b" by the one-@ rule; IP literals, dotted quads (an all-numeric top
// label, RFC 3696 §2), trailing dots, UTF-8 and reserved "??--" labels by
// the host name rule. Source routes (<@a,@b:user@c>) never reach here:
// go-smtp drops the route and hands over user@c, which is what RFC 5321
// §4.1.1.3 and Appendix C tell a server to do, so no route is followed.
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
	if strings.ContainsAny(local, "%!") {
		return Address{}, errAddrRoute
	}
	if strings.HasPrefix(domain, "[") {
		return Address{}, errAddrLiteral
	}
	if !isASCII(domain) {
		if !utf8.ValidString(domain) {
			return Address{}, errAddrDomain // idna would replace the bad bytes
		}
		// The registration profile, not the lookup one: it maps nothing,
		// so a full-width dot (dest．test), an ideographic one or a
		// zero-width space is refused rather than quietly turned into
		// another domain (the lookup profile of UTS #46 would make
		// dest.test of the first and last). Lower case first, since it
		// takes only lower-case labels.
		a, err := idna.Registration.ToASCII(strings.ToLower(domain))
		if err != nil {
			return Address{}, errAddrDomain
		}
		domain = a
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
//
// Labels with "--" in the third and fourth places are reserved for
// encodings (RFC 5891 §4.2.3.1); only A-labels ("xn--" and something) are
// let through. A top label of digits only is refused (RFC 3696 §2), so that
// 192.0.2.1 cannot pass for a domain.
func isHostname(s string) bool {
	if len(s) > 253 || !strings.Contains(s, ".") {
		return false
	}
	labels := strings.Split(s, ".")
	if tld := labels[len(labels)-1]; strings.Trim(tld, "0123456789") == "" {
		return false
	}
	for _, label := range labels {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		if len(label) >= 4 && label[2:4] == "--" && (!strings.HasPrefix(label, "xn--") || len(label) == 4) {
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

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// DomainIn reports whether domain is one of list, compared without case
// and without a trailing dot on the list's side: the relay listener's
// relay.allowed_sender_domains and relay.allowed_recipient_domains, which
// every source applies the same way.
func DomainIn(domain string, list []string) bool {
	return slices.ContainsFunc(list, func(d string) bool { return strings.EqualFold(strings.TrimSuffix(d, "."), domain) })
}

package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest user name, in bytes. It matches the longest
// domain name (RFC 1035 §2.3.4) and comfortably holds any mailbox a real
// client submits with; a bound also caps the work one AUTH attempt costs.
const MaxNameLen = 255

// maxPatternLen bounds one sender pattern. A mailbox is at most 254 octets
// in practice (RFC 5321 §4.5.3.1.3 limits the path to 256, brackets included).
const maxPatternLen = 255

// ErrNoDefaultAllow is returned by DefaultAllow for a user name that is not
// an address: such a user has no natural sender identity, so the allow list
// must be given explicitly.
var ErrNoDefaultAllow = errors.New("user name is not an email address; give an explicit allow list")

// Pattern is one entry of a user's allow list: which envelope senders
// (MAIL FROM) the user may submit with. The zero Pattern matches nothing.
//
// Three forms exist:
//
//	alice@example.test   exactly this address
//	@example.test        any address at example.test (not at its subdomains)
//	*                    any address
//
// Comparison folds ASCII case in both the local part and the domain. Domains
// are case-insensitive (RFC 5321 §2.4); local parts may in theory be
// case-sensitive, but the addresses in a users file belong to our own users,
// every mail system they are likely to use folds case, and refusing
// "Alice@" to the owner of "alice@" would only produce support calls. The
// price is that on a domain whose final MTA does distinguish case, "Alice"
// and "alice" are one identity here. Only ASCII is folded: Unicode case
// mapping has surprises (U+212A KELVIN SIGN lowers to "k") that have no
// place in an authorization check. Internationalised domains are compared as
// written, without IDNA mapping: write the pattern in the form clients send.
type Pattern struct {
	any    bool
	local  string // lower-cased; "" for a domain pattern
	domain string // lower-cased; "" only for the wildcard and the zero value
}

// ParsePattern parses one allow-list entry. It rejects anything that is not
// one of the three forms, rather than guessing: an authorization rule that
// means something other than what its author thought is worse than an error.
// Quoted local parts and address literals (user@[192.0.2.1]) are not
// supported.
func ParsePattern(s string) (Pattern, error) {
	switch {
	case s == "":
		return Pattern{}, errors.New("empty sender pattern")
	case s == "*":
		return Pattern{any: true}, nil
	case len(s) > maxPatternLen:
		return Pattern{}, fmt.Errorf("sender pattern longer than %d bytes", maxPatternLen)
	case !utf8.ValidString(s):
		return Pattern{}, fmt.Errorf("sender pattern %q is not valid UTF-8", s)
	}
	at := strings.IndexByte(s, '@')
	if at < 0 {
		return Pattern{}, fmt.Errorf("sender pattern %q has no @: write alice@example.test, @example.test or *", s)
	}
	if strings.Count(s, "@") > 1 {
		return Pattern{}, fmt.Errorf("sender pattern %q has more than one @", s)
	}
	local, domain := s[:at], s[at+1:]
	if local == "*" {
		return Pattern{}, fmt.Errorf("sender pattern %q: write @%s for any address at a domain", s, domain)
	}
	if local != "" { // "" is a domain pattern
		if err := checkLocal(local); err != nil {
			return Pattern{}, fmt.Errorf("sender pattern %q: %v", s, err)
		}
	}
	if err := checkDomain(domain); err != nil {
		return Pattern{}, fmt.Errorf("sender pattern %q: %v", s, err)
	}
	return Pattern{local: foldASCII(local), domain: foldASCII(domain)}, nil
}

// MustParsePattern is ParsePattern for constants in tests and examples; it
// panics on error.
func MustParsePattern(s string) Pattern {
	p, err := ParsePattern(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pattern in the form ParsePattern accepts (folded to
// lower case).
func (p Pattern) String() string {
	switch {
	case p.any:
		return "*"
	case p.domain == "":
		return "" // zero value
	}
	return p.local + "@" + p.domain
}

// Domain is the domain p allows addresses at (lower case); "" for the
// wildcard, which allows every domain.
func (p Pattern) Domain() string { return p.domain }

// IsAddress reports whether p is an exact-address pattern.
func (p Pattern) IsAddress() bool { return p.local != "" }

// Match reports whether addr, a reverse-path without angle brackets as the
// SMTP layer hands it over, is allowed by p. The null sender (the empty
// string) is User.MaySendAs's business; here only the wildcard matches it.
func (p Pattern) Match(addr string) bool {
	if p.any {
		return true
	}
	if p.domain == "" {
		return false // zero Pattern
	}
	// The last @ separates the domain: a quoted local part may contain @,
	// a domain may not.
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return false
	}
	local, domain := addr[:at], addr[at+1:]
	if !equalFoldASCII(domain, p.domain) {
		return false
	}
	return p.local == "" || equalFoldASCII(local, p.local)
}

// DefaultAllow is the allow list a user gets when none is given: the user's
// own name when it is an address. For any other name it returns
// ErrNoDefaultAllow, so that `postern user add` can refuse to create a user
// who may send as nobody instead of doing so silently.
func DefaultAllow(name string) ([]Pattern, error) {
	p, err := ParsePattern(name)
	if err != nil || !p.IsAddress() {
		return nil, fmt.Errorf("%q: %w", name, ErrNoDefaultAllow)
	}
	return []Pattern{p}, nil
}

// ValidateName reports whether name may be a user name: non-empty, at most
// MaxNameLen bytes of valid UTF-8, without ':' (the field separator),
// whitespace or control characters, and not starting with '#' (a comment).
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("empty user name")
	case len(name) > MaxNameLen:
		return fmt.Errorf("user name longer than %d bytes", MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("user name %q is not valid UTF-8", name)
	case name[0] == '#':
		return fmt.Errorf("user name %q starts with #, which marks a comment", name)
	}
	for _, r := range name {
		switch {
		case r == ':':
			return fmt.Errorf("user name %q contains ':'", name)
		case unicode.IsSpace(r):
			return fmt.Errorf("user name %q contains whitespace", name)
		case unicode.IsControl(r):
			return fmt.Errorf("user name %q contains a control character", name)
		}
	}
	return nil
}

// nameKey is the lookup key of a user name. Names fold ASCII case for the
// same reason patterns do: a user name is normally the user's address, mail
// clients and people type addresses in whatever case they like, and two
// users differing only in case would be a trap, not a feature (the parser
// rejects them as duplicates).
func nameKey(name string) string { return foldASCII(name) }

// checkLocal accepts a non-empty dot-atom local part (RFC 5321 §4.1.2) with UTF-8
// allowed (RFC 6531).
func checkLocal(local string) error {
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return errors.New("local part has a misplaced dot")
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if c >= 0x80 || isAlnum(c) || c == '.' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 {
			continue
		}
		return fmt.Errorf("local part has unsupported character %q", c)
	}
	return nil
}

// checkDomain accepts dot-separated labels of letters, digits, '-' and '_'
// (seen in the wild), or UTF-8. No address literals, no trailing dot.
func checkDomain(domain string) error {
	if domain == "" {
		return errors.New("empty domain")
	}
	for label := range strings.SplitSeq(domain, ".") {
		if label == "" {
			return errors.New("domain has an empty label")
		}
		if len(label) > 63 {
			return errors.New("domain label longer than 63 bytes")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if c >= 0x80 || isAlnum(c) || c == '-' || c == '_' {
				continue
			}
			return fmt.Errorf("domain has unsupported character %q", c)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// foldASCII lowers ASCII letters only and leaves every other byte alone, so
// it never changes the length or the validity of the string.
func foldASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

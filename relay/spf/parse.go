package spf

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrSyntax is wrapped by every error Parse returns: the record is
// malformed, which CheckHost reports as PermError (RFC 7208 §4.6).
var ErrSyntax = errors.New("spf: syntax error")

// Qualifier is a directive's result when its mechanism matches (§4.6.2).
type Qualifier byte

const (
	Pass     Qualifier = '+'
	Fail     Qualifier = '-'
	SoftFail Qualifier = '~'
	Neutral  Qualifier = '?'
)

// Mechanism is one directive: a qualifier and a mechanism (§5).
type Mechanism struct {
	Qualifier Qualifier
	// Kind is "all", "include", "a", "mx", "ptr", "ip4", "ip6" or
	// "exists", in lower case.
	Kind string
	// Domain is the domain-spec as written, macros unexpanded; "" for
	// the current domain (a, mx, ptr without one).
	Domain string
	// Net is the network of ip4 and ip6.
	Net netip.Prefix
	// Len4 and Len6 are the CIDR lengths of a and mx (32 and 128 when
	// not given).
	Len4, Len6 int
	// Text is the term as written, for reports.
	Text string
}

// Record is a parsed SPF record.
type Record struct {
	Mechanisms []Mechanism
	// Redirect and Exp are the domain-specs of the modifiers, "" if
	// absent.
	Redirect, Exp string
}

// IsSPF reports whether a TXT record is an SPF record: "v=spf1" alone or
// followed by a space (§4.5; the version is case-insensitive).
func IsSPF(txt string) bool {
	return len(txt) >= 6 && strings.EqualFold(txt[:6], "v=spf1") && (len(txt) == 6 || txt[6] == ' ')
}

// Parse parses an SPF record (RFC 7208 §12's grammar). Any error wraps
// ErrSyntax and names the term at fault.
func Parse(txt string) (*Record, error) {
	if !IsSPF(txt) {
		return nil, fmt.Errorf("%w: does not start with v=spf1", ErrSyntax)
	}
	r := &Record{}
	seen := map[string]bool{}
	for _, term := range strings.Split(txt[6:], " ") {
		if term == "" {
			continue // runs of spaces (§12: 1*SP between terms)
		}
		if name, value, ok := modifier(term); ok {
			lname := strings.ToLower(name)
			if err := checkMacroString(value); err != nil {
				return nil, fmt.Errorf("%w: %q: %v", ErrSyntax, term, err)
			}
			switch lname {
			case "redirect", "exp":
				if seen[lname] {
					return nil, fmt.Errorf("%w: %s= given twice (§6)", ErrSyntax, lname)
				}
				seen[lname] = true
				if err := checkDomainSpec(value); err != nil {
					return nil, fmt.Errorf("%w: %q: %v", ErrSyntax, term, err)
				}
				if lname == "redirect" {
					r.Redirect = value
				} else {
					r.Exp = value
				}
			}
			// Other modifiers are ignored (§6).
			continue
		}
		m, err := parseMechanism(term)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %v", ErrSyntax, term, err)
		}
		r.Mechanisms = append(r.Mechanisms, m)
	}
	return r, nil
}

// modifier splits name=value when term is a modifier: a name (ALPHA then
// ALPHA, DIGIT, "-", "_", ".") followed by "=".
func modifier(term string) (name, value string, ok bool) {
	i := strings.IndexByte(term, '=')
	if i < 1 || !isAlpha(term[0]) {
		return "", "", false
	}
	for j := 1; j < i; j++ {
		c := term[j]
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' && c != '.' {
			return "", "", false
		}
	}
	return term[:i], term[i+1:], true
}

func parseMechanism(term string) (Mechanism, error) {
	m := Mechanism{Qualifier: Pass, Text: term, Len4: 32, Len6: 128}
	rest := term
	switch rest[0] {
	case '+', '-', '~', '?':
		m.Qualifier = Qualifier(rest[0])
		rest = rest[1:]
	}
	name := rest
	arg, hasArg := "", false
	if i := strings.IndexAny(rest, ":/"); i >= 0 {
		name = rest[:i]
		if rest[i] == ':' {
			arg, hasArg = rest[i+1:], true
		} else {
			arg = rest[i:] // a CIDR length right after the name: "a/24"
		}
	}
	m.Kind = strings.ToLower(name)
	switch m.Kind {
	case "all":
		if arg != "" || hasArg {
			return m, errors.New("all takes no argument")
		}
	case "include", "exists":
		if !hasArg {
			return m, fmt.Errorf("%s needs a domain", m.Kind)
		}
		if err := checkDomainSpec(arg); err != nil {
			return m, err
		}
		m.Domain = arg
	case "a", "mx":
		spec, cidr := arg, ""
		if i := slashOutsideMacros(arg); i >= 0 {
			spec, cidr = arg[:i], arg[i:]
		}
		if hasArg {
			if err := checkDomainSpec(spec); err != nil {
				return m, err
			}
			m.Domain = spec
		} else if spec != "" {
			return m, errors.New("unexpected text after the mechanism")
		}
		var err error
		if m.Len4, m.Len6, err = dualCIDR(cidr); err != nil {
			return m, err
		}
	case "ptr":
		if hasArg {
			if err := checkDomainSpec(arg); err != nil {
				return m, err
			}
			m.Domain = arg
		} else if arg != "" {
			return m, errors.New("ptr takes no CIDR length")
		}
	case "ip4", "ip6":
		if !hasArg {
			return m, fmt.Errorf("%s needs a network", m.Kind)
		}
		addr, length, hasLen := strings.Cut(arg, "/")
		a, err := netip.ParseAddr(addr)
		if err != nil || a.Zone() != "" || (m.Kind == "ip4") != a.Is4() {
			return m, fmt.Errorf("%q is not an %s address", addr, map[string]string{"ip4": "IPv4", "ip6": "IPv6"}[m.Kind])
		}
		bits := a.BitLen()
		if hasLen {
			if bits, err = cidrLength(length, a.BitLen()); err != nil {
				return m, err
			}
		}
		m.Net = netip.PrefixFrom(a, bits).Masked()
	default:
		return m, fmt.Errorf("unknown mechanism %q", name)
	}
	return m, nil
}

// slashOutsideMacros is the index of the first "/" of s that is not a
// macro's delimiter ("%{d/}"), or -1.
func slashOutsideMacros(s string) int {
	in := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '%' && i+1 < len(s) && s[i+1] == '{':
			in = true
		case s[i] == '}':
			in = false
		case s[i] == '/' && !in:
			return i
		}
	}
	return -1
}

// dualCIDR parses [ "/" ip4-len ] [ "//" ip6-len ].
func dualCIDR(s string) (l4, l6 int, err error) {
	l4, l6 = 32, 128
	if s == "" {
		return l4, l6, nil
	}
	v4, v6, dual := strings.Cut(s, "//")
	if v4 != "" {
		if !strings.HasPrefix(v4, "/") {
			return 0, 0, fmt.Errorf("bad CIDR length %q", s)
		}
		if l4, err = cidrLength(v4[1:], 32); err != nil {
			return 0, 0, err
		}
	}
	if dual {
		if l6, err = cidrLength(v6, 128); err != nil {
			return 0, 0, err
		}
	}
	return l4, l6, nil
}

// cidrLength parses a length of at most max: "0", or digits without a
// leading zero.
func cidrLength(s string, max int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > max || len(s) > 1 && s[0] == '0' || s == "" || s[0] == '+' {
		return 0, fmt.Errorf("bad CIDR length %q (0 to %d)", s, max)
	}
	return n, nil
}

// checkDomainSpec checks a domain-spec: a macro-string that ends in a
// top label (or a macro), with no empty label.
func checkDomainSpec(s string) error {
	if s == "" {
		return errors.New("empty domain")
	}
	if err := checkMacroString(s); err != nil {
		return err
	}
	if strings.HasSuffix(s, "}") {
		return nil // domain-end = macro-expand
	}
	d := strings.TrimSuffix(s, ".")
	i := strings.LastIndexByte(d, '.')
	if i < 0 {
		return fmt.Errorf("%q is not a domain (no dot)", s)
	}
	top := d[i+1:]
	if !validTopLabel(top) {
		return fmt.Errorf("%q does not end in a valid top label", s)
	}
	return nil
}

// validTopLabel: alphanumerics with at least one letter, or with an inner
// hyphen (§12, toplabel).
func validTopLabel(l string) bool {
	if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	alpha, hyphen := false, false
	for i := 0; i < len(l); i++ {
		switch c := l[i]; {
		case isAlpha(c):
			alpha = true
		case c == '-':
			hyphen = true
		case !isDigit(c):
			return false
		}
	}
	return alpha || hyphen
}

// checkMacroString checks the macros of s (§7.1) without expanding them.
func checkMacroString(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e {
			return fmt.Errorf("character %q not allowed", c)
		}
		if c != '%' {
			continue
		}
		if i+1 >= len(s) {
			return errors.New("a lone % at the end")
		}
		switch s[i+1] {
		case '%', '_', '-':
			i++
			continue
		case '{':
		default:
			return fmt.Errorf("%%%c is not a macro (write %%%% for a percent sign)", s[i+1])
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return errors.New("unterminated %{")
		}
		if _, err := parseMacro(s[i+2 : i+end]); err != nil {
			return err
		}
		i += end
	}
	return nil
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

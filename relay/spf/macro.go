package spf

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// macro is one %{...} of RFC 7208 §7.1.
type macro struct {
	letter  byte // lower case
	upper   bool // URL-escape the result (§7.3)
	keep    int  // keep this many parts from the right; 0 = all
	reverse bool
	delims  string // split on these; "" = "."
}

func parseMacro(inner string) (macro, error) {
	var m macro
	if inner == "" {
		return m, errors.New("empty macro %{}")
	}
	c := inner[0]
	m.letter, m.upper = c|0x20, c >= 'A' && c <= 'Z'
	if !strings.ContainsRune("slodiphcrtv", rune(m.letter)) || !isAlpha(c) {
		return m, fmt.Errorf("unknown macro letter %q", c)
	}
	rest := inner[1:]
	i := 0
	for i < len(rest) && isDigit(rest[i]) {
		i++
	}
	if i > 0 {
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n == 0 || n > 128 {
			return m, fmt.Errorf("macro %%{%s}: bad digit transformer", inner)
		}
		m.keep = n
	}
	rest = rest[i:]
	if strings.HasPrefix(rest, "r") || strings.HasPrefix(rest, "R") {
		m.reverse = true
		rest = rest[1:]
	}
	for j := 0; j < len(rest); j++ {
		if !strings.ContainsRune(".-+,/_=", rune(rest[j])) {
			return m, fmt.Errorf("macro %%{%s}: %q is not a delimiter", inner, rest[j])
		}
	}
	m.delims = rest
	return m, nil
}

// env is what macros expand from.
type env struct {
	ip     netip.Addr
	sender string // the whole sender, local@domain
	domain string // the current domain
	helo   string
}

// expand expands the macros of a macro-string (§7.3, §7.4). c, r and t,
// allowed only in explanation strings, are errors here: exp= is never
// evaluated.
func (e *env) expand(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 >= len(s) {
			return "", errors.New("a lone % at the end")
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
			continue
		case '_':
			b.WriteByte(' ')
			continue
		case '-':
			b.WriteString("%20")
			continue
		case '{':
		default:
			return "", fmt.Errorf("%%%c is not a macro", s[i])
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", errors.New("unterminated %{")
		}
		m, err := parseMacro(s[i+1 : i+end])
		if err != nil {
			return "", err
		}
		v, err := e.value(m.letter)
		if err != nil {
			return "", err
		}
		b.WriteString(m.apply(v))
		i += end
	}
	return b.String(), nil
}

func (e *env) value(letter byte) (string, error) {
	local, domain := "postmaster", e.sender
	if at := strings.LastIndexByte(e.sender, '@'); at >= 0 {
		local, domain = e.sender[:at], e.sender[at+1:]
		if local == "" {
			local = "postmaster" // §4.3
		}
	}
	switch letter {
	case 's':
		return local + "@" + domain, nil
	case 'l':
		return local, nil
	case 'o':
		return domain, nil
	case 'd':
		return e.domain, nil
	case 'i':
		return dotted(e.ip), nil
	case 'p':
		return "unknown", nil
	case 'v':
		if e.ip.Is4() {
			return "in-addr", nil
		}
		return "ip6", nil
	case 'h':
		return e.helo, nil
	}
	// c, r, t: explanation strings only (§7.2).
	return "", fmt.Errorf("macro %%{%c} is only allowed in exp=", letter)
}

// dotted is the %{i} form of an address: dotted quad for IPv4, dot-separated
// nibbles for IPv6 (§7.3).
func dotted(ip netip.Addr) string {
	if ip.Is4() || ip.Is4In6() {
		return ip.Unmap().String()
	}
	var parts []string
	for _, b := range ip.As16() {
		parts = append(parts, strconv.FormatUint(uint64(b>>4), 16), strconv.FormatUint(uint64(b&0xf), 16))
	}
	return strings.Join(parts, ".")
}

// apply splits v on the delimiters, reverses, keeps the rightmost parts,
// joins with dots and escapes (§7.3).
func (m macro) apply(v string) string {
	delims := m.delims
	if delims == "" {
		delims = "."
	}
	parts := splitAny(v, delims)
	if m.reverse {
		for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
			parts[i], parts[j] = parts[j], parts[i]
		}
	}
	if m.keep > 0 && m.keep < len(parts) {
		parts = parts[len(parts)-m.keep:]
	}
	out := strings.Join(parts, ".")
	if m.upper {
		out = escape(out)
	}
	return out
}

// escape URL-escapes all but RFC 3986's unreserved characters (§7.3).
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func splitAny(s, delims string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(delims, s[i]) >= 0 {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

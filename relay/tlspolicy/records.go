package tlspolicy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// The TXT records that announce policies and ask for reports share one
// grammar (RFC 8461 §3.1, RFC 8460 §3): "v=<version>" first, then fields
// "name=value" separated by ";" with optional spaces around it, and an
// optional trailing ";". Names are 1 to 32 characters of letters, digits,
// "_", "-" and "."; values are printable ASCII except "=", ";" and space.

// ErrNoRecord means no TXT record of the asked version was published.
var ErrNoRecord = errors.New("no record")

// field is one "name=value" of a record, in order.
type field struct{ name, value string }

// parseRecord splits a record that must start with "v=" + version into
// its fields after the version. It is strict: an empty field, a name or
// value outside the grammar, or space other than around ";" is an error.
func parseRecord(rec, version string) ([]field, error) {
	v := "v=" + version
	if !strings.HasPrefix(rec, v) {
		return nil, fmt.Errorf("does not start with %q", v)
	}
	rest := rec[len(v):]
	if rest == "" {
		return nil, errors.New("no field after the version")
	}
	var out []field
	for rest != "" {
		// field-delim = *WSP ";" *WSP
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" || rest[0] != ';' {
			return nil, fmt.Errorf("expected ';' before %q", rest)
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if rest == "" {
			break // a trailing delimiter
		}
		end := strings.IndexAny(rest, "; \t")
		if end < 0 {
			end = len(rest)
		}
		f := rest[:end]
		rest = rest[end:]
		name, value, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("field %q has no '='", f)
		}
		if !validFieldName(name) {
			return nil, fmt.Errorf("field name %q is not valid", name)
		}
		if value == "" || strings.ContainsFunc(value, func(r rune) bool { return r < 0x21 || r > 0x7e || r == ';' || r == '=' }) {
			return nil, fmt.Errorf("field %q has an invalid value", name)
		}
		out = append(out, field{name, value})
	}
	if len(out) == 0 {
		return nil, errors.New("no field after the version")
	}
	return out, nil
}

// validFieldName: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
func validFieldName(n string) bool {
	if n == "" || len(n) > 32 || !isAlnum(n[0]) {
		return false
	}
	for i := 1; i < len(n); i++ {
		if c := n[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// pickRecord returns the one TXT record of txts that starts with "v=" +
// version. Others are ignored (RFC 8461 §3.1: "Records that do not begin
// with v=STSv1; are discarded"); more than one is an error (§3.1: "the
// sender MUST assume that no policy is published"), as is none
// (ErrNoRecord).
func pickRecord(txts []string, version string) (string, error) {
	var found []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v="+version) {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return "", ErrNoRecord
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%d records start with v=%s", len(found), version)
}

// STSRecord is the _mta-sts TXT record (RFC 8461 §3.1).
type STSRecord struct {
	// ID changes whenever the policy does: 1 to 32 letters and digits.
	ID string
}

// ParseSTSRecord parses one "v=STSv1; id=..." record strictly. Unknown
// extension fields are allowed (and ignored); id must appear exactly
// once.
func ParseSTSRecord(rec string) (STSRecord, error) {
	fields, err := parseRecord(rec, "STSv1")
	if err != nil {
		return STSRecord{}, fmt.Errorf("MTA-STS record: %w", err)
	}
	var r STSRecord
	for _, f := range fields {
		if f.name != "id" {
			continue
		}
		if r.ID != "" {
			return STSRecord{}, errors.New("MTA-STS record: id given twice")
		}
		if len(f.value) > 32 || !allAlnum(f.value) {
			return STSRecord{}, fmt.Errorf("MTA-STS record: id %q is not 1 to 32 letters and digits", f.value)
		}
		r.ID = f.value
	}
	if r.ID == "" {
		return STSRecord{}, errors.New("MTA-STS record: no id")
	}
	return r, nil
}

func allAlnum(s string) bool {
	for i := range len(s) {
		if !isAlnum(s[i]) {
			return false
		}
	}
	return s != ""
}

// RPTRecord is the _smtp._tls TXT record (RFC 8460 §3): where reports go.
type RPTRecord struct {
	// RUA are the report destinations, in the record's order: mailto:
	// and https: URIs.
	RUA []*url.URL
}

// ParseRPTRecord parses one "v=TLSRPTv1; rua=..." record strictly: rua
// exactly once, a comma-separated list of mailto: (one address each) and
// https: URIs; other schemes are errors, as are unknown ones (RFC 8460
// §3: the scheme is one of those two).
func ParseRPTRecord(rec string) (RPTRecord, error) {
	fields, err := parseRecord(rec, "TLSRPTv1")
	if err != nil {
		return RPTRecord{}, fmt.Errorf("TLSRPT record: %w", err)
	}
	var r RPTRecord
	seen := false
	for _, f := range fields {
		if f.name != "rua" {
			continue
		}
		if seen {
			return RPTRecord{}, errors.New("TLSRPT record: rua given twice")
		}
		seen = true
		for _, s := range strings.Split(f.value, ",") {
			u, err := parseRUA(s)
			if err != nil {
				return RPTRecord{}, fmt.Errorf("TLSRPT record: %w", err)
			}
			r.RUA = append(r.RUA, u)
		}
	}
	if !seen {
		return RPTRecord{}, errors.New("TLSRPT record: no rua")
	}
	return r, nil
}

// parseRUA parses one report URI.
func parseRUA(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("rua %q: %w", s, err)
	}
	switch u.Scheme {
	case "mailto":
		addr, err := url.PathUnescape(u.Opaque)
		if err != nil || u.Opaque == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("rua %q: not a mailto: URI with one address", s)
		}
		local, domain, ok := strings.Cut(addr, "@")
		if !ok || local == "" || !validDomain(domain) || strings.ContainsAny(addr, ", <>\"") {
			return nil, fmt.Errorf("rua %q: %q is not an address", s, addr)
		}
	case "https":
		if u.Host == "" || u.User != nil || u.Opaque != "" || !validDomain(u.Hostname()) {
			return nil, fmt.Errorf("rua %q: not an https: URI with a host name", s)
		}
	default:
		return nil, fmt.Errorf("rua %q: scheme must be mailto or https", s)
	}
	return u, nil
}

// validDomain checks host name syntax: labels of letters, digits and
// hyphens, 1 to 63 each, 253 at most in all; a final dot is not allowed.
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := range len(l) {
			if c := l[i]; !isAlnum(c) && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

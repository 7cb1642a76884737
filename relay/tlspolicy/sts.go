package tlspolicy

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// STSMode is an MTA-STS policy's mode (RFC 8461 §5).
type STSMode string

const (
	STSEnforce STSMode = "enforce"
	STSTesting STSMode = "testing"
	STSNone    STSMode = "none"
)

// maxSTSMaxAge is the largest max_age a policy may have (RFC 8461 §3.2:
// "up to 31557600", a year).
const maxSTSMaxAge = 31557600

// STSPolicy is an MTA-STS policy file (RFC 8461 §3.2).
type STSPolicy struct {
	Mode   STSMode `json:"mode"`
	MaxAge int64   `json:"max_age"` // seconds
	// MX are the patterns of the allowed MX hosts, lower case:
	// "mx.example.com" or "*.example.com".
	MX []string `json:"mx"`
}

// Strings is the policy as TLS reports quote it (RFC 8460 §4.4,
// policy-string: "the policy, one line per element").
func (p *STSPolicy) Strings() []string {
	out := []string{"version: STSv1", "mode: " + string(p.Mode)}
	for _, mx := range p.MX {
		out = append(out, "mx: "+mx)
	}
	return append(out, "max_age: "+strconv.FormatInt(p.MaxAge, 10))
}

// Allows reports whether host may receive mail for the domain under the
// policy: it matches one of the mx patterns (RFC 8461 §4.1).
func (p *STSPolicy) Allows(host string) bool {
	for _, pat := range p.MX {
		if MatchMX(pat, host) {
			return true
		}
	}
	return false
}

// MatchMX matches an MX host name against a policy's mx pattern, without
// case and without a trailing dot: a pattern "*.example.com" matches
// exactly one more label ("mx.example.com", not "a.mx.example.com" nor
// "example.com", RFC 8461 §4.1); any other pattern matches the name
// itself.
func MatchMX(pattern, host string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if pattern == "" || host == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, parent, ok := strings.Cut(host, ".")
		return ok && label != "" && parent == rest
	}
	return pattern == host
}

// ParseSTSPolicy parses a policy file strictly (RFC 8461 §3.2): lines
// "key: value" ending in LF or CRLF; version (STSv1), mode and max_age
// exactly once each, mx once or more (at least once unless mode is none);
// unknown keys are ignored as the RFC says, but must still be well formed.
func ParseSTSPolicy(data []byte) (*STSPolicy, error) {
	if len(data) == 0 {
		return nil, errors.New("MTA-STS policy: empty")
	}
	p := &STSPolicy{}
	var version, mode, maxAge bool
	lines := bytes.Split(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1] // the last line's terminator
	}
	for i, raw := range lines {
		line := string(bytes.TrimSuffix(raw, []byte("\r")))
		bad := func(format string, args ...any) error {
			return fmt.Errorf("MTA-STS policy line %d: %s", i+1, fmt.Sprintf(format, args...))
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, bad("no ':' in %q", line)
		}
		if !validFieldName(key) {
			return nil, bad("key %q is not valid", key)
		}
		// sts-policy-field-delim = ":" *WSP; trailing WSP is allowed
		// before the terminator.
		value = strings.TrimRight(strings.TrimLeft(value, " \t"), " \t")
		if value == "" || strings.ContainsFunc(value, func(r rune) bool { return (r < 0x20 || r > 0x7e) && r != '\t' }) {
			return nil, bad("%s has no valid value", key)
		}
		switch key {
		case "version":
			if version {
				return nil, bad("version given twice")
			}
			if value != "STSv1" {
				return nil, bad("version %q is not STSv1", value)
			}
			version = true
		case "mode":
			if mode {
				return nil, bad("mode given twice")
			}
			switch STSMode(value) {
			case STSEnforce, STSTesting, STSNone:
				p.Mode = STSMode(value)
			default:
				return nil, bad("mode %q is not enforce, testing or none", value)
			}
			mode = true
		case "max_age":
			if maxAge {
				return nil, bad("max_age given twice")
			}
			if len(value) > 10 || !allDigits(value) {
				return nil, bad("max_age %q is not 1 to 10 digits", value)
			}
			n, _ := strconv.ParseInt(value, 10, 64)
			if n > maxSTSMaxAge {
				return nil, bad("max_age %d is over %d", n, maxSTSMaxAge)
			}
			p.MaxAge = n
			maxAge = true
		case "mx":
			pat := strings.ToLower(value)
			if !validDomain(strings.TrimPrefix(pat, "*.")) {
				return nil, bad("mx %q is not a host name or *.domain", value)
			}
			p.MX = append(p.MX, pat)
		default:
			// An extension: its value may hold spaces between visible
			// characters, which the check above allows.
		}
	}
	switch {
	case !version:
		return nil, errors.New("MTA-STS policy: no version")
	case !mode:
		return nil, errors.New("MTA-STS policy: no mode")
	case !maxAge:
		return nil, errors.New("MTA-STS policy: no max_age")
	case len(p.MX) == 0 && p.Mode != STSNone:
		return nil, errors.New("MTA-STS policy: no mx")
	}
	return p, nil
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// maxAge is the policy's max_age as a duration.
func (p *STSPolicy) maxAge() time.Duration { return time.Duration(p.MaxAge) * time.Second }

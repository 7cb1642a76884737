package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/net/publicsuffix"

	"postern/dkim"
)

// ZoneTXT is a TXT record in zone-file form, its value cut into strings of
// at most 255 octets (RFC 1035 §3.3.14) and parenthesised when there are
// several, the form DNS hosting panels and BIND both take.
func ZoneTXT(name, value string) string {
	parts := dkim.SplitTXT(value)
	if len(parts) == 1 {
		return fmt.Sprintf("%s. IN TXT %q", name, value)
	}
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = fmt.Sprintf("%q", p)
	}
	return fmt.Sprintf("%s. IN TXT ( %s )", name, strings.Join(q, " "))
}

// zoneAddr is the A or AAAA record that gives name the address a.
func zoneAddr(name string, a netip.Addr) string {
	if a.Is4() {
		return fmt.Sprintf("%s. IN A %s", name, a)
	}
	return fmt.Sprintf("%s. IN AAAA %s", name, a)
}

// reverseName is a's name under in-addr.arpa or ip6.arpa (RFC 1035
// §3.5, RFC 3596 §2.5).
func reverseName(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa", b[3], b[2], b[1], b[0])
	}
	b := a.As16()
	var parts []string
	for i := len(b) - 1; i >= 0; i-- {
		parts = append(parts, fmt.Sprintf("%x", b[i]&0xf), fmt.Sprintf("%x", b[i]>>4))
	}
	return strings.Join(parts, ".") + ".ip6.arpa"
}

// tags parses a tag=value list (DKIM, RFC 6376 §3.2; DMARC, RFC 7489
// §6.4; MTA-STS and TLS-RPT TXT records): names lower-cased, values with
// white space removed around them. A name given twice is an error.
func tags(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not tag=value", part)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("tag %s given twice", k)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// orgDomain is the organizational domain of d (RFC 7489 §3.2): one label
// below its public suffix.
func orgDomain(d string) string {
	if o, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return o
	}
	return d
}

// notFound: the name or the record does not exist.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// txt returns the TXT records of name that start with prefix (case
// aside), whether name had any TXT record at all, and a DNS failure that
// is not "no such record".
func (d *doctor) txt(ctx context.Context, name, prefix string) (recs []string, err error) {
	all, err := d.o.Resolver.LookupTXT(ctx, name)
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, err
	}
	for _, t := range all {
		if len(t) >= len(prefix) && strings.EqualFold(t[:len(prefix)], prefix) {
			recs = append(recs, t)
		}
	}
	return recs, nil
}

// addrs returns the A and AAAA records of name.
func (d *doctor) lookupAddrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	var firstErr error
	for _, network := range []string{"ip4", "ip6"} {
		as, err := d.o.Resolver.LookupNetIP(ctx, network, name)
		if err != nil && !notFound(err) && firstErr == nil {
			firstErr = err
		}
		for _, a := range as {
			out = append(out, a.Unmap())
		}
	}
	return out, firstErr
}

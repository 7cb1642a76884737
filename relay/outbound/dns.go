package outbound

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"postern/relay/status"
	"postern/relay/tlspolicy"
)

// errNXDomain is a name that does not exist: an authoritative no.
var errNXDomain = errors.New("NXDOMAIN")

// resolver asks one configured DNS server, or the servers of
// /etc/resolv.conf, for the records delivery needs.
type resolver struct {
	server string // "host:port"; "" reads /etc/resolv.conf at each lookup
	// shuffle randomizes equal MX preferences (rand.Shuffle); tests replace it.
	shuffle func(n int, swap func(i, j int))
	// cache keeps answers for their TTL and merges concurrent identical
	// questions (dnscache.go); its zero value is ready.
	cache dnsCache
}

// query asks for name's records of qtype. It returns the answer for
// NOERROR (possibly with no records: NODATA), errNXDomain for NXDOMAIN, and
// another error for everything else (SERVFAIL, REFUSED, timeouts), after
// trying each server in turn. Answers and NXDOMAIN come from r.cache while
// their TTL lasts (see answerTTL); the records are shared between callers
// and must not be modified.
func (r *resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	k := dnsKey{name: dns.Fqdn(strings.ToLower(name)), qtype: qtype}
	return r.cache.get(ctx, k, func(ctx context.Context) ([]dns.RR, time.Duration, error) {
		resp, err := r.ask(ctx, k.name, qtype)
		if err != nil {
			return nil, 0, err
		}
		return fromResponse(resp, qtype)
	})
}

// fromResponse is what query returns for resp, a NOERROR or NXDOMAIN
// response to a question of type qtype, with how long it may be cached.
func fromResponse(resp *dns.Msg, qtype uint16) ([]dns.RR, time.Duration, error) {
	ttl := answerTTL(resp, qtype)
	if resp.Rcode == dns.RcodeNameError {
		return nil, ttl, errNXDomain
	}
	return resp.Answer, ttl, nil
}

// ask asks for name's records of qtype through the one DNS exchange of
// delivery (tlspolicy.Ask), without DNSSEC: the first NOERROR or NXDOMAIN
// response of the servers, tried in turn.
func (r *resolver) ask(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	return tlspolicy.Ask(ctx, r.server, name, qtype, false)
}

// Local statuses for DNS outcomes.
var (
	// RFC 3463 §3.2: X.1.2 "Bad destination system address".
	errDomainNotFound = status.New(550, 1, 2, "domain not found")
	// RFC 7505 §4.2: 556 5.1.10 for a null MX.
	errNullMX = status.New(556, 1, 10, "Recipient address has null MX")
	// RFC 3463 §3.5: X.4.3 "Directory server failure".
	codeDNSFailure = [3]int{451, 4, 3}
)

func dnsTemporary(err error, what string) *status.Error {
	return status.Wrap(err, codeDNSFailure[0], codeDNSFailure[1], codeDNSFailure[2], what)
}

// mxHosts returns the hosts to try for domain, best first: the MX targets
// in preference order, shuffled among equal preferences (RFC 5321 §5.1),
// or the domain itself when it has no MX record (the implicit MX of
// RFC 5321 §5.1). The error is a *status.Error: Permanent for NXDOMAIN and
// null MX, Temporary otherwise.
func (r *resolver) mxHosts(ctx context.Context, domain string) ([]string, error) {
	domain = strings.TrimSuffix(domain, ".")
	answer, err := r.query(ctx, domain, dns.TypeMX)
	switch {
	case errors.Is(err, errNXDomain):
		return nil, errDomainNotFound
	case err != nil:
		return nil, dnsTemporary(err, "MX lookup for "+domain+" failed")
	}
	var mxs []*dns.MX
	for _, rr := range answer {
		// Only the answer's own MX records; CNAMEs before them are skipped.
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 0 {
		return []string{domain}, nil
	}
	// RFC 7505 §3: a null MX is the only MX of its domain. Were it mixed
	// with real ones (a misconfiguration the RFC forbids), the real ones
	// win and the "." target is skipped below.
	if len(mxs) == 1 && mxs[0].Mx == "." {
		return nil, errNullMX
	}
	r.shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	// A stable sort keeps the shuffled order among equal preferences.
	slices.SortStableFunc(mxs, func(a, b *dns.MX) int { return cmp.Compare(a.Preference, b.Preference) })
	var hosts []string
	for _, mx := range mxs {
		if h := strings.TrimSuffix(mx.Mx, "."); h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, errNullMX
	}
	return hosts, nil
}

// addrs returns host's IPv4 then IPv6 addresses. IPv4 comes first because
// on the public Internet it is the family receivers trust most (reverse
// DNS, reputation); IPv6 is there when IPv4 fails. Either family may fail
// to resolve as long as the other gives an address.
func (r *resolver) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	var errs []string
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		answer, err := r.query(ctx, host, qt)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s %s: %v", dns.TypeToString[qt], host, err))
			continue
		}
		for _, rr := range answer {
			switch rr := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	if len(errs) > 0 {
		// One line: replies end up in bounces and logs.
		return nil, dnsTemporary(errors.New(strings.Join(errs, "; ")), "address lookup for "+host+" failed")
	}
	return nil, errNoAddress{host}
}

// errNoAddress is a host that exists but has neither A nor AAAA records.
type errNoAddress struct{ host string }

func (e errNoAddress) Error() string { return "no A or AAAA record for " + e.host }

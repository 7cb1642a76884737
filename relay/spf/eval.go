package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Result is check_host()'s result (RFC 7208 §2.6).
type Result string

const (
	ResultNone      Result = "none"
	ResultNeutral   Result = "neutral"
	ResultPass      Result = "pass"
	ResultFail      Result = "fail"
	ResultSoftFail  Result = "softfail"
	ResultTempError Result = "temperror"
	ResultPermError Result = "permerror"
)

// The limits of §4.6.4.
const (
	// MaxLookups bounds the terms that query DNS in one evaluation:
	// include, a, mx, ptr, exists and redirect.
	MaxLookups = 10
	// MaxVoidLookups bounds the lookups that find nothing.
	MaxVoidLookups = 2
	// maxNames bounds the MX hosts of one mx, and the names of one ptr.
	maxNames = 10
)

// Resolver is the DNS CheckHost needs; *net.Resolver implements it. A
// name that does not exist, or has no record of the type asked, must be a
// *net.DNSError with IsNotFound set (as net.Resolver returns): that is a
// "void" lookup, not a failure.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// Outcome is what CheckHost found.
type Outcome struct {
	Result Result
	// Record is the SPF record of the domain asked about ("" if none).
	Record string
	// Matched is the term that decided, as written ("ip4:192.0.2.0/24",
	// "include:_spf.example.net", "-all"), and Domain the domain whose
	// record held it; both "" when no term matched (the default
	// Neutral, or a result without a record).
	Matched, Domain string
	// Lookups is how many DNS-querying terms the evaluation took, of the
	// MaxLookups allowed.
	Lookups int
	// Err says why, for TempError and PermError.
	Err error
}

// CheckHost evaluates domain's SPF policy for mail from sender (the
// MAIL FROM address; for the HELO identity, "postmaster@" + helo) sent
// from ip by a host that said helo (RFC 7208 §4). Errors are results:
// a DNS failure is TempError, a broken record or a limit passed is
// PermError, each with Err saying which.
func CheckHost(ctx context.Context, r Resolver, ip netip.Addr, domain, sender, helo string) Outcome {
	c := &checker{r: r, ip: ip.Unmap(), sender: sender, helo: helo}
	out := c.check(ctx, domain)
	out.Lookups = c.lookups
	return out
}

type checker struct {
	r              Resolver
	ip             netip.Addr
	sender, helo   string
	lookups, voids int
}

// failure stops the evaluation with TempError or PermError.
type failure struct {
	result Result
	err    error
}

func (f *failure) Error() string { return f.err.Error() }

func permerror(format string, args ...any) *failure {
	return &failure{ResultPermError, fmt.Errorf(format, args...)}
}

// check is check_host() for one domain, recursively for include and
// redirect.
func (c *checker) check(ctx context.Context, domain string) Outcome {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validDomain(domain) {
		return Outcome{Result: ResultNone, Err: fmt.Errorf("%q is not a domain name (§4.3)", domain)}
	}
	txts, err := c.r.LookupTXT(ctx, domain)
	if err != nil {
		if notFound(err) {
			return Outcome{Result: ResultNone}
		}
		return Outcome{Result: ResultTempError, Err: fmt.Errorf("TXT %s: %w", domain, err)}
	}
	var recs []string
	for _, t := range txts {
		if IsSPF(t) {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return Outcome{Result: ResultNone}
	case 1:
	default:
		return Outcome{Result: ResultPermError, Record: recs[0],
			Err: fmt.Errorf("%s has %d SPF records; there must be one (§4.5)", domain, len(recs))}
	}
	out := Outcome{Record: recs[0]}
	rec, err := Parse(recs[0])
	if err != nil {
		out.Result, out.Err = ResultPermError, fmt.Errorf("%s: %w", domain, err)
		return out
	}
	e := &env{ip: c.ip, sender: c.sender, domain: domain, helo: c.helo}
	for _, m := range rec.Mechanisms {
		ok, err := c.match(ctx, e, m)
		var f *failure
		if errors.As(err, &f) {
			out.Result, out.Err, out.Matched, out.Domain = f.result, f.err, m.Text, domain
			return out
		}
		if ok {
			out.Result, out.Matched, out.Domain = qualified(m.Qualifier), m.Text, domain
			return out
		}
	}
	if rec.Redirect == "" {
		out.Result = ResultNeutral // §4.7
		return out
	}
	if err := c.count(); err != nil {
		out.Result, out.Err = err.result, err.err
		return out
	}
	target, ferr := c.target(e, rec.Redirect)
	if ferr != nil {
		out.Result, out.Err = ferr.result, ferr.err
		return out
	}
	sub := c.check(ctx, target)
	if sub.Result == ResultNone {
		// §6.1: a redirect to a domain without a record is PermError.
		sub = Outcome{Result: ResultPermError, Err: fmt.Errorf("redirect=%s: %s has no SPF record", rec.Redirect, target)}
	}
	sub.Record = out.Record
	return sub
}

func qualified(q Qualifier) Result {
	switch q {
	case Fail:
		return ResultFail
	case SoftFail:
		return ResultSoftFail
	case Neutral:
		return ResultNeutral
	}
	return ResultPass
}

// count takes one of the MaxLookups.
func (c *checker) count() *failure {
	c.lookups++
	if c.lookups > MaxLookups {
		return permerror("more than %d DNS lookups (include, a, mx, ptr, exists, redirect; §4.6.4)", MaxLookups)
	}
	return nil
}

// void counts a lookup that found nothing.
func (c *checker) void() *failure {
	c.voids++
	if c.voids > MaxVoidLookups {
		return permerror("more than %d DNS lookups found nothing (§4.6.4)", MaxVoidLookups)
	}
	return nil
}

// target expands a domain-spec ("" is the current domain) into a name to
// look up: a trailing dot dropped, cut from the left to 253 octets
// (§7.3).
func (c *checker) target(e *env, spec string) (string, *failure) {
	if spec == "" {
		return e.domain, nil
	}
	d, err := e.expand(spec)
	if err != nil {
		return "", permerror("%s: %v", spec, err)
	}
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	for len(d) > 253 {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			break
		}
		d = d[i+1:]
	}
	if !validDomain(d) {
		return "", permerror("%s expands to %q, not a domain name", spec, d)
	}
	return d, nil
}

// match evaluates one mechanism (§5). An error is a *failure.
func (c *checker) match(ctx context.Context, e *env, m Mechanism) (bool, error) {
	switch m.Kind {
	case "all":
		return true, nil
	case "ip4", "ip6":
		return m.Net.Contains(c.ip), nil
	}
	if f := c.count(); f != nil {
		return false, f
	}
	target, f := c.target(e, m.Domain)
	if f != nil {
		return false, f
	}
	switch m.Kind {
	case "include":
		sub := c.check(ctx, target)
		switch sub.Result {
		case ResultPass:
			return true, nil
		case ResultFail, ResultSoftFail, ResultNeutral:
			return false, nil
		case ResultTempError:
			return false, &failure{ResultTempError, sub.Err}
		case ResultNone:
			return false, permerror("include:%s: %s has no SPF record (§5.2)", m.Domain, target)
		}
		return false, &failure{ResultPermError, fmt.Errorf("include:%s: %w", m.Domain, sub.Err)}
	case "a":
		return c.matchHost(ctx, target, m, true)
	case "mx":
		mxs, err := c.r.LookupMX(ctx, target)
		if err != nil {
			if notFound(err) {
				return false, c.voidErr()
			}
			return false, &failure{ResultTempError, fmt.Errorf("MX %s: %w", target, err)}
		}
		if len(mxs) > maxNames {
			return false, permerror("mx:%s: %d MX records, more than %d (§4.6.4)", target, len(mxs), maxNames)
		}
		for _, mx := range mxs {
			host := strings.TrimSuffix(mx.Host, ".")
			if host == "" {
				continue // a null MX (RFC 7505)
			}
			// The MX hosts' address lookups are not void lookups: a host
			// without an address of the client's family is normal.
			if ok, err := c.matchHost(ctx, host, m, false); ok || err != nil {
				return ok, err
			}
		}
		return false, nil
	case "ptr":
		return c.matchPTR(ctx, target)
	case "exists":
		// §5.7: an A query, whatever the client's address family.
		addrs, err := c.r.LookupNetIP(ctx, "ip4", target)
		if err != nil {
			if notFound(err) {
				return false, c.voidErr()
			}
			return false, &failure{ResultTempError, fmt.Errorf("A %s: %w", target, err)}
		}
		return len(addrs) > 0, nil
	}
	return false, permerror("unknown mechanism %q", m.Kind)
}

// voidErr counts a void lookup and returns its failure as an error, or nil.
func (c *checker) voidErr() error {
	if f := c.void(); f != nil {
		return f
	}
	return nil
}

// matchHost reports whether one of host's addresses of the client's
// family, widened to the mechanism's CIDR length, holds the client.
func (c *checker) matchHost(ctx context.Context, host string, m Mechanism, countVoid bool) (bool, error) {
	network, bits := "ip4", m.Len4
	if c.ip.Is6() {
		network, bits = "ip6", m.Len6
	}
	addrs, err := c.r.LookupNetIP(ctx, network, host)
	if err != nil {
		if notFound(err) {
			if countVoid {
				return false, c.voidErr()
			}
			return false, nil
		}
		return false, &failure{ResultTempError, fmt.Errorf("%s %s: %w", map[string]string{"ip4": "A", "ip6": "AAAA"}[network], host, err)}
	}
	for _, a := range addrs {
		a = a.Unmap()
		if a.BitLen() != c.ip.BitLen() {
			continue
		}
		if p, err := a.Prefix(bits); err == nil && p.Contains(c.ip) {
			return true, nil
		}
	}
	return false, nil
}

// matchPTR is the ptr mechanism (§5.5): a name of the client's address,
// confirmed by its own forward lookup, that is target or under it.
func (c *checker) matchPTR(ctx context.Context, target string) (bool, error) {
	names, err := c.r.LookupAddr(ctx, c.ip.String())
	if err != nil {
		if notFound(err) {
			return false, c.voidErr()
		}
		return false, nil // §5.5: a failed PTR lookup is no match
	}
	if len(names) > maxNames {
		names = names[:maxNames]
	}
	network := "ip4"
	if c.ip.Is6() {
		network = "ip6"
	}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != target && !strings.HasSuffix(n, "."+target) {
			continue
		}
		addrs, err := c.r.LookupNetIP(ctx, network, n)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == c.ip {
				return true, nil
			}
		}
	}
	return false, nil
}

// notFound reports whether err says the name or the record does not
// exist: a void lookup.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// validDomain: at least two labels, each 1-63 octets, at most 253 in all,
// no spaces or control characters (the RFC asks no more of names found
// in records; §4.3).
func validDomain(d string) bool {
	if d == "" || len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			if l[i] <= ' ' || l[i] >= 0x7f {
				return false
			}
		}
	}
	return true
}

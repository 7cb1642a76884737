package tlspolicy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"postern/queue/reply"
)

// Override is a configured policy for one recipient domain
// (delivery.tls_policy), for domains that publish nothing but that the
// operator knows.
type Override string

const (
	// OverrideDANE: every MX host must have usable TLSA records that
	// authenticate it; a host without them is not used (dane-required).
	OverrideDANE Override = "dane"
	// OverrideMTASTS: the domain's MTA-STS policy is enforced even in
	// testing mode, and a domain without one is not delivered to
	// (sts-policy-fetch-error) until it has one.
	OverrideMTASTS Override = "mta-sts"
	// OverrideVerify: TLS with a certificate valid for the MX host name
	// (WebPKI).
	OverrideVerify Override = "verify"
	// OverrideEncrypt: TLS, certificate unchecked.
	OverrideEncrypt Override = "encrypt"
	// OverrideMay: opportunistic TLS.
	OverrideMay Override = "may"
)

// ParseOverride parses a delivery.tls_policy mode.
func ParseOverride(s string) (Override, error) {
	switch o := Override(s); o {
	case OverrideDANE, OverrideMTASTS, OverrideVerify, OverrideEncrypt, OverrideMay:
		return o, nil
	}
	return "", fmt.Errorf("%q is not one of dane, mta-sts, verify, encrypt, may", s)
}

// Options configure Policies.
type Options struct {
	// Resolver is the DNS server ("IP:port"); "" reads /etc/resolv.conf.
	Resolver string
	// TrustAD turns DANE on: the resolver validates DNSSEC and the path
	// to it is safe (loopback), so its AD bit says an answer is secure.
	TrustAD bool
	// Port is the SMTP port dialed on MX hosts, which names the TLSA
	// records (_25._tcp.<host>); default 25.
	Port int
	// MTASTS turns MTA-STS on.
	MTASTS bool
	// STSStore keeps MTA-STS policies across restarts (the queue's state
	// store, namespace "mta-sts"); nil keeps them in memory only.
	STSStore Store[CachedSTS]
	// Overrides are the configured policies, by lower-case domain.
	Overrides map[string]Override
	// Default is the mode of a host nothing else decides: Opportunistic
	// (the zero value) or WebPKI (delivery.tls: required).
	Default Mode
	// RootCAs verify MX certificates under WebPKI and the MTA-STS policy
	// servers; nil means the system roots (which Go reads from
	// SSL_CERT_FILE and SSL_CERT_DIR too).
	RootCAs *x509.CertPool
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Policies decides the TLS policy of deliveries. Its methods are safe for
// concurrent use.
type Policies struct {
	opts Options
	dns  *dnsClient
	sts  *stsCache
	log  *slog.Logger
}

// New returns Policies with opts; it reads the cached MTA-STS policies.
func New(opts Options) (*Policies, error) {
	if opts.Port == 0 {
		opts.Port = 25
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ps := &Policies{opts: opts, log: opts.Logger, dns: &dnsClient{server: opts.Resolver, trustAD: opts.TrustAD}}
	if opts.MTASTS {
		var err error
		ps.sts, err = newSTSCache(opts.STSStore, ps.dns, opts.RootCAs, opts.Now, opts.Logger)
		if err != nil {
			return nil, err
		}
	}
	return ps, nil
}

// Run refreshes cached MTA-STS policies before they expire, until ctx
// is done.
func (ps *Policies) Run(ctx context.Context) {
	if ps.sts == nil {
		return
	}
	t := time.NewTicker(stsRefreshEvery)
	defer t.Stop()
	for {
		ps.sts.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// DomainPolicy is what applies to one delivery attempt to one domain.
type DomainPolicy struct {
	Domain string
	// STS is the domain's MTA-STS policy in force (enforce or testing),
	// nil if none.
	STS *CachedSTS
	// Override is the configured policy, "" if none.
	Override Override
	// secureMX are the MX hosts of a DNSSEC-secure MX answer: only they
	// may be authenticated by DANE. Nil when the answer was insecure or
	// DANE is off.
	secureMX []string
	// stsFailure is why a published MTA-STS policy could not be had.
	stsFailure ResultType
	ps         *Policies
}

// Domain looks up the policies of domain (lower-cased, without a final
// dot): its MTA-STS policy (cached), its configured policy, and, with
// DANE on, whether its MX answer is secure. It does not fail: what cannot
// be looked up is treated as not published, except where the RFCs say
// otherwise, which Host decides per host.
func (ps *Policies) Domain(ctx context.Context, domain string) *DomainPolicy {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	dp := &DomainPolicy{Domain: domain, Override: ps.opts.Overrides[domain], ps: ps}
	if ps.opts.TrustAD {
		if hosts, secure, err := ps.dns.mx(ctx, domain); err == nil && secure {
			dp.secureMX = hosts
		} else if err != nil && !errors.Is(err, errNXDomain) {
			// Delivery's own MX lookup meets the same failure and
			// defers; a host it finds anyway gets no DANE.
			ps.log.Info("MX lookup for DANE failed", slog.String("domain", domain), slog.Any("error", err))
		}
	}
	if ps.sts != nil {
		dp.STS, dp.stsFailure = ps.sts.policy(ctx, domain)
	}
	return dp
}

// HostError is a host that must not be used for the domain at all: its
// DNSSEC answers were bogus, it is not in the domain's MTA-STS policy, or
// it has no TLSA records where DANE is required. Delivery tries the next
// host; Failure is to be reported.
type HostError struct {
	Host    string
	Failure ResultType
	Reason  string
	Policy  HostPolicy // what TLS reports count the failure under
}

func (e *HostError) Error() string {
	return fmt.Sprintf("%s not used: %s (%s)", e.Host, e.Reason, e.Failure)
}

// Reply is the temporary failure delivery records when no host could be
// used: 451 4.7.5 (RFC 3463 X.7.5 "Cryptographic failure") with the
// reason, naming the policy, for the queue and the logs. The message waits
// and is retried; it is never sent in clear, and not bounced before its
// lifetime.
func (e *HostError) Reply() reply.Reply {
	return reply.Reply{Code: 451, Enhanced: reply.Enhanced{Class: 4, Subject: 7, Detail: 5}, Text: e.Error()}
}

// Host is the policy for a session with host, one of the domain's MX
// hosts (lower case, no final dot), reached on Options.Port. A
// *HostError says the host must not be used at all.
func (dp *DomainPolicy) Host(ctx context.Context, host string) (HostPolicy, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	p, err := dp.host(ctx, host)
	p.mxSecure = slices.Contains(dp.secureMX, host)
	return p, err
}

func (dp *DomainPolicy) host(ctx context.Context, host string) (HostPolicy, error) {
	ps := dp.ps
	names := []string{host}
	none := ReportPolicy{Type: PolicyTypeNone, Domain: dp.Domain}

	// 1. DANE, for a host named by a secure MX answer (RFC 7672 §2.2).
	if slices.Contains(dp.secureMX, host) {
		p, decided, err := dp.dane(ctx, host, names)
		if decided {
			return p, err
		}
	}
	if dp.Override == OverrideDANE {
		p := HostPolicy{Mode: DANE, Names: names, Source: SourceConfig, PolicyDomain: dp.Domain, Report: none}
		return p, &HostError{Host: host, Failure: DANERequired, Reason: "delivery.tls_policy requires DANE and the host has no secure TLSA records", Policy: p}
	}

	// 2. MTA-STS.
	next := dp.configured(names, none)
	if sts := dp.STS; sts != nil {
		rp := ReportPolicy{Type: PolicyTypeSTS, Strings: sts.Policy.Strings(), Domain: dp.Domain, MXHost: sts.Policy.MX}
		enforce := sts.Policy.Mode == STSEnforce || dp.Override == OverrideMTASTS
		if enforce {
			p := HostPolicy{Mode: WebPKI, Names: names, Source: SourceMTASTS, PolicyDomain: dp.Domain, Report: rp, roots: ps.opts.RootCAs}
			if !sts.Policy.Allows(host) {
				return p, &HostError{Host: host, Failure: ValidationFailure, Reason: "MX host not in the MTA-STS policy of " + dp.Domain, Policy: p}
			}
			return p, nil
		}
		p := next
		p.Testing, p.Report = true, rp
		if !sts.Policy.Allows(host) {
			p.Failure = ValidationFailure // reported, not enforced
		}
		return p, nil
	}
	if dp.stsFailure != "" {
		rp := ReportPolicy{Type: PolicyTypeSTS, Domain: dp.Domain}
		if dp.Override == OverrideMTASTS {
			p := HostPolicy{Mode: WebPKI, Names: names, Source: SourceConfig, PolicyDomain: dp.Domain, Report: rp, roots: ps.opts.RootCAs}
			return p, &HostError{Host: host, Failure: dp.stsFailure, Reason: "delivery.tls_policy requires MTA-STS and the policy of " + dp.Domain + " could not be had", Policy: p}
		}
		// A policy that could not be fetched: deliver as without one
		// (RFC 8461 §5.1), and report it.
		p := next
		p.Failure, p.Report = dp.stsFailure, rp
		return p, nil
	}
	if dp.Override == OverrideMTASTS {
		p := next
		p.Mode, p.Source = WebPKI, SourceConfig
		return p, &HostError{Host: host, Failure: STSPolicyFetchError, Reason: "delivery.tls_policy requires MTA-STS and " + dp.Domain + " publishes no policy", Policy: p}
	}
	// 3. and 4.: the configured policy, or the default.
	return next, nil
}

// dane decides the host by its TLSA records when they are secure;
// decided false means DANE does not apply and the next policy decides.
func (dp *DomainPolicy) dane(ctx context.Context, host string, names []string) (p HostPolicy, decided bool, err error) {
	ps := dp.ps
	_, secure, err := ps.dns.addrs(ctx, host)
	if errors.Is(err, ErrBogus) {
		p = HostPolicy{Mode: DANE, Names: names, Source: SourceDANE, PolicyDomain: dp.Domain, Report: ReportPolicy{Type: PolicyTypeTLSA, Domain: dp.Domain}}
		return p, true, &HostError{Host: host, Failure: DNSSECInvalid, Reason: "address records of the MX host failed validation", Policy: p}
	}
	if err != nil || !secure {
		return HostPolicy{}, false, nil // RFC 7672 §2.2.2: no TLSA lookup
	}
	recs, secure, err := ps.dns.tlsa(ctx, ps.opts.Port, host)
	rp := ReportPolicy{Type: PolicyTypeTLSA, Domain: dp.Domain}
	for _, r := range recs {
		rp.Strings = append(rp.Strings, r.String())
	}
	if len(rp.Strings) > maxPolicyStrings {
		rp.Strings = rp.Strings[:maxPolicyStrings]
	}
	p = HostPolicy{Mode: DANE, Names: names, Source: SourceDANE, PolicyDomain: dp.Domain, Report: rp}
	switch {
	case err != nil:
		// RFC 7672 §2.2: a TLSA lookup that fails (bogus, or a server
		// failure) means this host is not used.
		return p, true, &HostError{Host: host, Failure: DNSSECInvalid, Reason: fmt.Sprintf("TLSA lookup failed: %v", err), Policy: p}
	case !secure || len(recs) == 0:
		return HostPolicy{}, false, nil // insecure, or no TLSA: pre-DANE
	}
	p.TLSA = usable(recs)
	if len(p.TLSA) == 0 {
		// RFC 7672 §2.2: records exist, none usable: TLS is still
		// mandatory, unauthenticated.
		p.Mode, p.Failure = Encrypt, TLSAInvalid
	}
	return p, true, nil
}

// configured is the policy when neither DANE nor an enforced MTA-STS
// policy decides: delivery.tls_policy, else Options.Default.
func (dp *DomainPolicy) configured(names []string, rp ReportPolicy) HostPolicy {
	p := HostPolicy{Mode: dp.ps.opts.Default, Names: names, Source: SourceNone, PolicyDomain: dp.Domain, Report: rp, roots: dp.ps.opts.RootCAs}
	switch dp.Override {
	case OverrideVerify:
		p.Mode, p.Source = WebPKI, SourceConfig
	case OverrideEncrypt:
		p.Mode, p.Source = Encrypt, SourceConfig
	case OverrideMay:
		p.Mode, p.Source = Opportunistic, SourceConfig
	}
	return p
}

// MXAllowed reports whether host may receive the domain's mail at all:
// false only under an enforced MTA-STS policy whose mx patterns do not
// match it (RFC 8461 §4.1). Delivery may use it to skip hosts before
// looking up their addresses; Host says the same, with the reason.
func (dp *DomainPolicy) MXAllowed(host string) bool {
	if dp.STS == nil || dp.STS.Policy.Mode != STSEnforce && dp.Override != OverrideMTASTS {
		return true
	}
	return dp.STS.Policy.Allows(host)
}

package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync"
	"time"
)

// MTA-STS fetching and caching (RFC 8461 §3.3, §5.1).
const (
	// stsMaxBody bounds a policy file: RFC 8461 §3.2 suggests 64 KiB.
	stsMaxBody = 64 << 10
	// stsFetchTimeout bounds a whole fetch: a policy server slower than
	// this holds up deliveries to its domain; the RFC asks for "a
	// reasonable timeout" (§3.3).
	stsFetchTimeout = 20 * time.Second
	// stsRecheck is how often the _mta-sts TXT record of a domain is
	// asked again while deliveries go on (each delivery would otherwise
	// ask it): a new id is seen within 5 minutes, as delivery's DNS
	// cache sees a changed MX.
	stsRecheck = 5 * time.Minute
	// stsRefreshMax is the longest a cached policy goes without a fresh
	// fetch while it lasts (RFC 8461 §5.1 suggests refreshing
	// periodically, before max_age runs out).
	stsRefreshMax = 24 * time.Hour
	// stsRefreshEvery is how often the background refresher looks for
	// policies due.
	stsRefreshEvery = 10 * time.Minute
)

// CachedSTS is an MTA-STS policy as the cache keeps it, in the queue
// database's "mta-sts" namespace, keyed by lower-case domain.
type CachedSTS struct {
	ID      string    `json:"id"`      // the TXT record's id it was fetched for
	Policy  STSPolicy `json:"policy"`  // as parsed
	Fetched time.Time `json:"fetched"` // when it was fetched
	Expires time.Time `json:"expires"` // Fetched + max_age
}

// refreshAt is when the refresher fetches the policy again: halfway to
// its expiry, and at least once a day.
func (c *CachedSTS) refreshAt() time.Time {
	half := c.Expires.Sub(c.Fetched) / 2
	return c.Fetched.Add(min(half, stsRefreshMax))
}

// Store is a durable map, by key, of values of type T: the queue's
// state store (queue.StateStore) implements it. Writes are synced
// before they return.
type Store[T any] interface {
	Get(key string) (T, bool, error)
	Put(key string, v T) error
	PutAll(m map[string]T) error
	Delete(key string) error
	List() (map[string]T, error)
}

// stsEntry is what the cache knows of one domain.
type stsEntry struct {
	mu      sync.Mutex // held while the domain is looked up or fetched
	cached  *CachedSTS // the policy in force or last fetched; nil if none
	checked time.Time  // when the TXT record was last asked
	failure ResultType // why no policy could be had, to report
}

// stsCache keeps MTA-STS policies in memory and in the store.
type stsCache struct {
	store Store[CachedSTS]
	dns   *dnsClient
	http  *http.Client
	now   func() time.Time
	log   *slog.Logger

	mu      sync.Mutex
	entries map[string]*stsEntry
}

func newSTSCache(store Store[CachedSTS], d *dnsClient, roots *x509.CertPool, now func() time.Time, log *slog.Logger) (*stsCache, error) {
	c := &stsCache{store: store, dns: d, now: now, log: log, entries: make(map[string]*stsEntry)}
	c.http = &http.Client{
		Timeout: stsFetchTimeout,
		Transport: &http.Transport{
			DialContext:           d.dial,
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   stsFetchTimeout,
			ResponseHeaderTimeout: stsFetchTimeout,
			MaxIdleConns:          10,
			IdleConnTimeout:       time.Minute,
			ForceAttemptHTTP2:     true,
		},
		// RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed".
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if store != nil {
		all, err := store.List()
		if err != nil {
			return nil, fmt.Errorf("MTA-STS cache: %w", err)
		}
		for dom, p := range all {
			c.entries[dom] = &stsEntry{cached: &p}
		}
	}
	return c, nil
}

func (c *stsCache) entry(domain string) *stsEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[domain]
	if e == nil {
		e = &stsEntry{}
		c.entries[domain] = e
	}
	return e
}

// policy returns the policy in force for domain (nil if none, or mode
// none), and the failure to report when a published policy could not be
// had.
func (c *stsCache) policy(ctx context.Context, domain string) (*CachedSTS, ResultType) {
	e := c.entry(domain)
	e.mu.Lock()
	defer e.mu.Unlock()
	now := c.now()
	if e.checked.IsZero() || now.Sub(e.checked) >= stsRecheck || now.Before(e.checked) {
		c.check(ctx, domain, e, now)
	}
	if e.cached == nil || !now.Before(e.cached.Expires) || e.cached.Policy.Mode == STSNone {
		return nil, e.failure
	}
	return e.cached, ""
}

// check asks the TXT record and fetches the policy when the cache does not
// hold the one it names (RFC 8461 §5.1). e.mu is held.
func (c *stsCache) check(ctx context.Context, domain string, e *stsEntry, now time.Time) {
	e.checked = now
	valid := e.cached != nil && now.Before(e.cached.Expires)
	rec, err := c.record(ctx, domain)
	switch {
	case err != nil:
		// No record, an invalid one, or a DNS failure: a policy still
		// in force stays in force (§5.1: its absence in DNS does not end
		// it); without one, the domain has no policy.
		if !valid {
			c.forget(domain, e)
			e.failure = ""
		}
		if !errors.Is(err, ErrNoRecord) {
			c.log.Info("MTA-STS record lookup failed", slog.String("domain", domain), slog.Bool("cached_policy", valid), slog.Any("error", err))
		}
		return
	case valid && rec.ID == e.cached.ID:
		return
	}
	p, rt, err := c.fetch(ctx, domain)
	if err != nil {
		c.log.Warn("MTA-STS policy fetch failed", slog.String("domain", domain), slog.String("id", rec.ID),
			slog.String("result", string(rt)), slog.Bool("cached_policy", valid), slog.Any("error", err))
		if !valid {
			c.forget(domain, e)
			e.failure = rt
		}
		return
	}
	c.keep(domain, e, rec.ID, p, now)
}

// keep makes p the domain's policy, in memory and in the store.
func (c *stsCache) keep(domain string, e *stsEntry, id string, p *STSPolicy, now time.Time) {
	cp := &CachedSTS{ID: id, Policy: *p, Fetched: now, Expires: now.Add(p.maxAge())}
	e.cached, e.failure = cp, ""
	c.log.Info("MTA-STS policy fetched", slog.String("domain", domain), slog.String("id", id),
		slog.String("mode", string(p.Mode)), slog.Any("mx", p.MX), slog.Time("expires", cp.Expires))
	if c.store != nil {
		if err := c.store.Put(domain, *cp); err != nil {
			c.log.Error("MTA-STS policy not stored", slog.String("domain", domain), slog.Any("error", err))
		}
	}
}

// forget drops an expired policy.
func (c *stsCache) forget(domain string, e *stsEntry) {
	if e.cached == nil {
		return
	}
	e.cached = nil
	if c.store != nil {
		if err := c.store.Delete(domain); err != nil {
			c.log.Error("expired MTA-STS policy not removed", slog.String("domain", domain), slog.Any("error", err))
		}
	}
}

// record looks up and parses the domain's _mta-sts TXT record.
func (c *stsCache) record(ctx context.Context, domain string) (STSRecord, error) {
	txts, err := c.dns.txt(ctx, "_mta-sts."+domain)
	if err != nil {
		return STSRecord{}, err
	}
	rec, err := pickRecord(txts, "STSv1")
	if err != nil {
		return STSRecord{}, err
	}
	return ParseSTSRecord(rec)
}

// fetch gets and parses https://mta-sts.<domain>/.well-known/mta-sts.txt
// (RFC 8461 §3.3): a certificate valid for that name (else
// sts-webpki-invalid), status 200 without redirects, text/plain, at most
// stsMaxBody (else sts-policy-fetch-error or sts-policy-invalid).
func (c *stsCache) fetch(ctx context.Context, domain string) (*STSPolicy, ResultType, error) {
	ctx, cancel := context.WithTimeout(ctx, stsFetchTimeout)
	defer cancel()
	u := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, STSPolicyFetchError, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if isCertError(err) {
			return nil, STSWebPKIInvalid, err
		}
		return nil, STSPolicyFetchError, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, STSPolicyFetchError, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, STSPolicyInvalid, fmt.Errorf("GET %s: Content-Type %q is not text/plain", u, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, stsMaxBody+1))
	if err != nil {
		return nil, STSPolicyFetchError, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(body) > stsMaxBody {
		return nil, STSPolicyInvalid, fmt.Errorf("GET %s: policy larger than %d bytes", u, stsMaxBody)
	}
	p, err := ParseSTSPolicy(body)
	if err != nil {
		return nil, STSPolicyInvalid, err
	}
	return p, "", nil
}

func isCertError(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	var (
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
	)
	return errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

// refresh fetches again every cached policy whose refresh time has come,
// and drops the expired ones (RFC 8461 §5.1: "senders SHOULD ...
// proactively refresh"). A failed refresh keeps the policy as it is, to
// be tried again at the next pass.
func (c *stsCache) refresh(ctx context.Context) {
	c.mu.Lock()
	domains := make(map[string]*stsEntry, len(c.entries))
	for d, e := range c.entries {
		domains[d] = e
	}
	c.mu.Unlock()
	for domain, e := range domains {
		if ctx.Err() != nil {
			return
		}
		e.mu.Lock()
		now := c.now()
		switch {
		case e.cached == nil:
		case !now.Before(e.cached.Expires):
			c.forget(domain, e)
		case !now.Before(e.cached.refreshAt()):
			id := e.cached.ID
			if rec, err := c.record(ctx, domain); err == nil {
				id = rec.ID // a new id replaces the policy too
			}
			if p, _, err := c.fetch(ctx, domain); err == nil {
				c.keep(domain, e, id, p, now)
			} else {
				c.log.Info("MTA-STS refresh failed; the cached policy stays", slog.String("domain", domain), slog.Any("error", err))
			}
		}
		e.mu.Unlock()
	}
}

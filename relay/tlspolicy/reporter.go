package tlspolicy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"sync"
	"time"
)

// Tunables of the reporter.
const (
	// flushEvery is how often counts are written to the queue database:
	// a crash loses at most this much of them.
	flushEvery = time.Minute
	// sendRetry is how long a report that could not be sent (its TLSRPT
	// record could not be looked up) waits before the next try.
	sendRetry = time.Hour
	// keepUnsent bounds how long a day's counts wait for their report to
	// go out before they are dropped.
	keepUnsent = 72 * time.Hour
	// postTimeout bounds one HTTPS POST of a report.
	postTimeout = 30 * time.Second
)

// Submitter queues a report message for delivery, the way every message
// postern sends is queued: through the submission pipeline, so that it
// is DKIM-signed when a key exists for from's domain. cmd/postern
// implements it.
type Submitter interface {
	SubmitReport(ctx context.Context, from string, to []string, msg []byte) error
}

// ReporterOptions configure a Reporter.
type ReporterOptions struct {
	// Store keeps the counts (the queue's state store, namespace
	// "tlsrpt"); nil keeps them in memory only.
	Store Store[DayCounts]
	// Organization and Contact fill the report's organization-name and
	// contact-info (RFC 8460 §4.4).
	Organization, Contact string
	// Submitter is the reporting domain, in file names and subjects:
	// postern's host name.
	Submitter string
	// From is the sender of mailed reports, envelope and header.
	From string
	// Mail queues mailed reports.
	Mail Submitter
	// Resolver is the DNS server for TLSRPT records and https:
	// destinations ("" = /etc/resolv.conf).
	Resolver string
	// RootCAs verify https: destinations; nil means the system roots.
	RootCAs *x509.CertPool
	Now     func() time.Time
	Logger  *slog.Logger
	// newID makes report IDs; tests replace it.
	newID func() string
}

// Reporter counts TLS sessions per policy domain and day and sends the
// reports (RFC 8460). Its methods are safe for concurrent use.
type Reporter struct {
	opts ReporterOptions
	dns  *dnsClient
	http *http.Client
	log  *slog.Logger

	mu     sync.Mutex
	days   map[string]*DayCounts // by store key
	dirty  map[string]bool
	tried  map[string]time.Time // last failed send, by key
	sendMu sync.Mutex           // one SendDue at a time
}

// NewReporter returns a Reporter and loads the counts kept in the store.
func NewReporter(opts ReporterOptions) (*Reporter, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.newID == nil {
		opts.newID = randomID
	}
	r := &Reporter{
		opts: opts, log: opts.Logger, dns: &dnsClient{server: opts.Resolver},
		days: make(map[string]*DayCounts), dirty: make(map[string]bool), tried: make(map[string]time.Time),
	}
	r.http = &http.Client{
		Timeout: postTimeout,
		Transport: &http.Transport{
			DialContext:     r.dns.dial,
			TLSClientConfig: &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if opts.Store != nil {
		all, err := opts.Store.List()
		if err != nil {
			return nil, fmt.Errorf("TLS report counts: %w", err)
		}
		for k, d := range all {
			r.days[k] = &d
		}
	}
	return r, nil
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Session is one SMTP session with an MX host, as delivery reports it.
type Session struct {
	// Policy is the host's policy (from DomainPolicy.Host, or a
	// HostError's Policy).
	Policy HostPolicy
	// MXHost is the host name; SendingIP and ReceivingIP the two ends of
	// the connection (zero when none was made).
	MXHost                 string
	SendingIP, ReceivingIP netip.Addr
	// Failure is what Check, NoSTARTTLS, HandshakeFailed or a HostError
	// said; "" for a successful TLS session.
	Failure ResultType
	// Reason is an optional failure-reason-code (RFC 8460 §4.4).
	Reason string
}

func dayKey(day, domain string) string { return day + "/" + domain }

// Record counts s under its policy domain and the current UTC day. It
// never blocks on the disk: counts are written by Flush.
func (r *Reporter) Record(s Session) {
	domain := s.Policy.PolicyDomain
	if domain == "" {
		return
	}
	day := r.opts.Now().UTC().Format(time.DateOnly)
	policy := s.Policy.Report
	if policy.Type == "" {
		policy = ReportPolicy{Type: PolicyTypeNone, Domain: domain}
	}
	f := FailureCount{Result: s.Failure, ReceivingMX: s.MXHost, Reason: s.Reason}
	if s.Failure != "" {
		if s.SendingIP.IsValid() {
			f.SendingIP = s.SendingIP.String()
		}
		if s.ReceivingIP.IsValid() {
			f.ReceivingIP = s.ReceivingIP.String()
		}
	}
	k := dayKey(day, domain)
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.days[k]
	if d == nil {
		d = &DayCounts{Day: day, Domain: domain}
		r.days[k] = d
	}
	d.add(policy, f)
	r.dirty[k] = true
}

// Flush writes the counts changed since the last Flush, in one commit.
func (r *Reporter) Flush() error {
	r.mu.Lock()
	m := make(map[string]DayCounts, len(r.dirty))
	for k := range r.dirty {
		m[k] = r.days[k].clone()
	}
	clear(r.dirty)
	r.mu.Unlock()
	if r.opts.Store == nil || len(m) == 0 {
		return nil
	}
	if err := r.opts.Store.PutAll(m); err != nil {
		r.mu.Lock()
		for k := range m {
			r.dirty[k] = true // written next time
		}
		r.mu.Unlock()
		return err
	}
	return nil
}

// Run flushes the counts every minute and sends the reports of days that
// have ended, until ctx is done; then it flushes once more.
func (r *Reporter) Run(ctx context.Context) {
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.Flush(); err != nil {
				r.log.Error("TLS report counts not kept", slog.Any("error", err))
			}
			return
		case <-t.C:
		}
		if err := r.Flush(); err != nil {
			r.log.Error("TLS report counts not kept", slog.Any("error", err))
		}
		r.SendDue(ctx)
	}
}

// SendDue sends the report of every day that has ended (UTC) to its
// domain's destinations, if it publishes a TLSRPT record, and forgets
// the day's counts once it is sent (or the domain wants none). A day
// whose record could not be looked up is tried again an hour later, for
// up to three days.
func (r *Reporter) SendDue(ctx context.Context) {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	now := r.opts.Now().UTC()
	today := now.Format(time.DateOnly)
	r.mu.Lock()
	var due []DayCounts
	for k, d := range r.days {
		if d.Day >= today || now.Sub(r.tried[k]) < sendRetry {
			continue
		}
		due = append(due, d.clone())
	}
	r.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return dayKey(due[i].Day, due[i].Domain) < dayKey(due[j].Day, due[j].Domain) })
	for _, d := range due {
		if ctx.Err() != nil {
			return
		}
		k := dayKey(d.Day, d.Domain)
		err := r.send(ctx, d, now)
		start, _, _ := dayRange(d.Day)
		if err != nil && now.Sub(start) < keepUnsent {
			r.log.Info("TLS report not sent yet", slog.String("domain", d.Domain), slog.String("day", d.Day), slog.Any("error", err))
			r.mu.Lock()
			r.tried[k] = now
			r.mu.Unlock()
			continue
		}
		r.forget(k)
	}
}

// forget drops a day's counts, in memory and in the store.
func (r *Reporter) forget(k string) {
	r.mu.Lock()
	delete(r.days, k)
	delete(r.dirty, k)
	delete(r.tried, k)
	r.mu.Unlock()
	if r.opts.Store != nil {
		if err := r.opts.Store.Delete(k); err != nil {
			r.log.Error("sent TLS report counts not removed", slog.String("key", k), slog.Any("error", err))
		}
	}
}

// send sends d's report to the domain's destinations. An error means the
// destinations could not be learnt (try later); a destination that fails
// is logged and not tried again, as a report is not worth a queue of its
// own beyond the one mail goes through.
func (r *Reporter) send(ctx context.Context, d DayCounts, now time.Time) error {
	txts, err := r.dns.txt(ctx, "_smtp._tls."+d.Domain)
	if err != nil && !errors.Is(err, errNXDomain) {
		return err
	}
	rec, err := pickRecord(txts, "TLSRPTv1")
	if errors.Is(err, ErrNoRecord) {
		return nil // the domain wants no reports
	}
	if err != nil {
		r.log.Info("no valid TLSRPT record: report dropped", slog.String("domain", d.Domain), slog.Any("error", err))
		return nil
	}
	rpt, err := ParseRPTRecord(rec)
	if err != nil {
		r.log.Info("invalid TLSRPT record: report dropped", slog.String("domain", d.Domain), slog.Any("error", err))
		return nil
	}
	meta := reportMeta{Organization: r.opts.Organization, Contact: r.opts.Contact, Submitter: r.opts.Submitter,
		ReportID: d.Day + "." + r.opts.newID() + "@" + r.opts.Submitter}
	js, err := composeReport(d, meta)
	if err != nil {
		return err
	}
	gz, err := gzipped(js)
	if err != nil {
		return err
	}
	for _, u := range rpt.RUA {
		var err error
		switch u.Scheme {
		case "mailto":
			err = r.mail(ctx, d, meta, u, gz, now)
		case "https":
			err = r.post(ctx, u, gz)
		}
		if err != nil {
			r.log.Warn("TLS report not delivered", slog.String("domain", d.Domain), slog.String("day", d.Day), slog.String("rua", u.String()), slog.Any("error", err))
			continue
		}
		r.log.Info("TLS report sent", slog.String("domain", d.Domain), slog.String("day", d.Day), slog.String("rua", u.String()), slog.String("report_id", meta.ReportID))
	}
	return nil
}

func (r *Reporter) mail(ctx context.Context, d DayCounts, meta reportMeta, u *url.URL, gz []byte, now time.Time) error {
	if r.opts.Mail == nil {
		return errors.New("no mail submitter configured")
	}
	to, _ := url.PathUnescape(u.Opaque)
	msg, err := composeMail(d, meta, r.opts.From, to, gz, now)
	if err != nil {
		return err
	}
	return r.opts.Mail.SubmitReport(ctx, r.opts.From, []string{to}, msg)
}

// post sends the report by HTTPS POST (RFC 8460 §5.2): any 2xx is
// success; redirects are not followed.
func (r *Reporter) post(ctx context.Context, u *url.URL, gz []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	return nil
}

package doctor

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"postern/relay/spf"
)

// Severity is how much a finding matters for mail arriving.
type Severity int

const (
	// OK: as it should be.
	OK Severity = iota
	// Info: worth knowing, changes nothing about delivery today.
	Info
	// Warning: some receivers will distrust or refuse the mail, or will
	// soon.
	Warning
	// Error: mail will be refused or land in spam at most receivers.
	Error
)

func (s Severity) String() string {
	return [...]string{"ok", "info", "warning", "error"}[s]
}

func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Finding is one thing checked.
type Finding struct {
	// Subject is the host name or the domain the finding is about.
	Subject string `json:"subject"`
	// Check names what was checked: "reverse DNS", "SPF", "DKIM s2026",
	// ...
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	// Summary is what was found, in one sentence.
	Summary string `json:"summary"`
	// Fix is what to change; "" when nothing.
	Fix string `json:"fix,omitempty"`
	// Records are the DNS records to publish, in zone-file form.
	Records []string `json:"records,omitempty"`
}

// Key is a configured DKIM key, as the doctor needs it.
type Key struct {
	Domain, Selector string
	// Record is the TXT value that publishes the key's public half
	// (dkim.DNSRecord).
	Record string
	// File is where the private key is, for messages.
	File string
	// SignSubdomains: the key signs the domain's subdomains too.
	SignSubdomains bool
}

// Certificate is the TLS certificate the listeners serve.
type Certificate struct {
	// Source says where it comes from: "tls.cert_file /etc/...",
	// "tls.acme", "self-signed".
	Source string
	// Chain is the certificate and its chain; nil when there is none yet
	// (tls.acme before the first one is obtained).
	Chain []*x509.Certificate
	// SelfSigned: made by postern because nothing else was configured.
	SelfSigned bool
	// Err: it could not be read.
	Err error
}

// Options say what to check.
type Options struct {
	// Hostname is the config's hostname: the EHLO name, and MAILER-DAEMON's
	// domain.
	Hostname string
	// Domains are the domains mail is sent from (DKIM keys', users'
	// allowed senders').
	Domains []string
	// Keys are the DKIM keys configured.
	Keys []Key
	// Addresses are this host's outgoing addresses as the world sees them
	// (--ip). Empty: learned with LocalAddresses, and, when those are
	// private (behind NAT), taken from the hostname's A/AAAA records.
	Addresses []netip.Addr
	// LocalAddresses returns the addresses the kernel sends from; nil is
	// OutgoingAddresses.
	LocalAddresses func() []netip.Addr
	// Resolver answers every DNS question.
	Resolver spf.Resolver
	// Cert is the certificate in use.
	Cert Certificate
	// ProbeDomain, when set (and not Offline), is the domain whose MX is
	// tried on ProbePort to see whether outbound port 25 is open.
	ProbeDomain string
	ProbePort   int
	Offline     bool
	// FetchSTSPolicy fetches and parses the MTA-STS policy of a domain
	// that publishes an MTA-STS record (RFC 8461 §3.3: HTTPS, verified,
	// no redirects); nil checks the record alone. cmd/postern gives one
	// built on relay/tlspolicy's parser.
	FetchSTSPolicy func(ctx context.Context, domain string) (*STSPolicy, error)
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	// Roots verify the certificate's chain; nil is the system's.
	Roots *x509.CertPool
}

// STSPolicy is an MTA-STS policy (RFC 8461 §3.2), as the doctor needs it.
type STSPolicy struct {
	// Mode is enforce, testing or none.
	Mode string
	// MX are the policy's mx patterns, as written.
	MX []string
	// Allows reports whether an MX host matches one of MX (§4.1).
	Allows func(host string) bool
}

// Report is every finding of one run.
type Report struct {
	Hostname string `json:"hostname"`
	// Addresses are the outgoing addresses the checks used.
	Addresses []string  `json:"addresses"`
	Findings  []Finding `json:"findings"`
	Errors    int       `json:"errors"`
	Warnings  int       `json:"warnings"`
}

// ExitCode is 0 when all is well, 1 with any error, 2 with warnings only.
func (r *Report) ExitCode() int {
	switch {
	case r.Errors > 0:
		return 1
	case r.Warnings > 0:
		return 2
	}
	return 0
}

// Run makes every check and returns the findings, host first, then each
// domain in the order given.
func Run(ctx context.Context, o Options) *Report {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LocalAddresses == nil {
		o.LocalAddresses = OutgoingAddresses
	}
	d := &doctor{o: o, r: &Report{Hostname: o.Hostname}}
	d.host(ctx)
	for _, dom := range o.Domains {
		d.domain(ctx, dom)
	}
	for _, a := range d.addrs {
		d.r.Addresses = append(d.r.Addresses, a.String())
	}
	for _, f := range d.r.Findings {
		switch f.Severity {
		case Error:
			d.r.Errors++
		case Warning:
			d.r.Warnings++
		}
	}
	return d.r
}

// doctor is one run.
type doctor struct {
	o     Options
	r     *Report
	addrs []netip.Addr // the outgoing addresses checked
	// hostAddrs are the hostname's A/AAAA records.
	hostAddrs []netip.Addr
}

func (d *doctor) add(f Finding) { d.r.Findings = append(d.r.Findings, f) }

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for people: one block per subject, one line
// per finding, its fix and records indented under it, and a last line
// that counts.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "postern doctor: %s, sending from %s\n", r.Hostname, orNone(strings.Join(r.Addresses, ", ")))
	subject := ""
	const indent = "                         "
	for _, f := range r.Findings {
		if f.Subject != subject {
			subject = f.Subject
			fmt.Fprintf(&b, "\n%s\n", subject)
		}
		fmt.Fprintf(&b, "  %-8s %-14s %s\n", f.Severity, f.Check, f.Summary)
		if f.Fix != "" {
			fmt.Fprintf(&b, "%sfix: %s\n", indent, f.Fix)
		}
		for _, rec := range f.Records {
			fmt.Fprintf(&b, "%s  %s\n", indent, rec)
		}
	}
	fmt.Fprintf(&b, "\n%s\n", r.verdict())
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) verdict() string {
	counts := fmt.Sprintf("%d error%s, %d warning%s", r.Errors, plural(r.Errors), r.Warnings, plural(r.Warnings))
	switch {
	case r.Errors > 0:
		return counts + ": mail from this host will be refused or filtered as spam until the errors are fixed."
	case r.Warnings > 0:
		return counts + ": mail should arrive; the warnings say where some receivers may still balk."
	}
	return counts + ": all is well."
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func orNone(s string) string {
	if s == "" {
		return "(no address known)"
	}
	return s
}

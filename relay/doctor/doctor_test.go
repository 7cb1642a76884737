package doctor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern/dkim"
	"postern/relay/relaytest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.txt from the current output")

// now is the tests' clock: certificates are made relative to it, so that
// "expires in N days" stays the same in the golden files.
var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

const (
	host = "mail.example.test"
	dom  = "example.test"
)

var ip = netip.MustParseAddr("192.0.2.10")

// key is the DKIM key of the tests, from a fixed seed so that the record
// the golden files show is the same on every run.
func key(t *testing.T, seed byte) Key {
	t.Helper()
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	rec, err := dkim.DNSRecord(k)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Domain: dom, Selector: "s1", Record: rec, File: "/etc/postern/dkim/example.test.s1.key"}
}

// goodZone is everything right for mail.example.test sending as
// example.test from 192.0.2.10.
func goodZone(t *testing.T) *relaytest.DNS {
	d := relaytest.NewDNS(t, relaytest.Zone{
		host: {A: []string{"192.0.2.10"}, TXT: []string{"v=spf1 a -all"}},
		dom: {
			MX:  []relaytest.MX{{Pref: 10, Host: host}},
			TXT: []string{"google-site-verification=xyz", "v=spf1 a:mail.example.test ~all"},
		},
		"s1._domainkey." + dom: {TXT: []string{key(t, 1).Record}},
		"_dmarc." + dom:        {TXT: []string{"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.test"}},
		"_mta-sts." + dom:      {TXT: []string{"v=STSv1; id=20261207T000000"}},
		"_smtp._tls." + dom:    {TXT: []string{"v=TLSRPTv1; rua=mailto:tlsrpt@example.test"}},
		"mx.dest.test":         {A: []string{"127.0.0.1"}},
	})
	d.SetPTR("192.0.2.10", host)
	return d
}

func resolver(d *relaytest.DNS) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dd net.Dialer
		return dd.DialContext(ctx, network, d.Addr())
	}}
}

// certFor makes a CA and a certificate for name from it, valid from an
// hour before now for the given time.
func certFor(t *testing.T, name string, valid time.Duration) (Certificate, *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(valid), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return Certificate{Source: "tls.acme", Chain: []*x509.Certificate{leaf, ca}}, pool
}

// options are the baseline: the good zone, one domain, one key, a
// certificate with 90 days left, offline.
func options(t *testing.T, d *relaytest.DNS) Options {
	cert, roots := certFor(t, host, 90*24*time.Hour+time.Hour)
	return Options{
		Hostname:  host,
		Domains:   []string{dom},
		Keys:      []Key{key(t, 1)},
		Addresses: []netip.Addr{ip},
		Resolver:  resolver(d),
		Cert:      cert,
		Offline:   true,
		Now:       func() time.Time { return now },
		Roots:     roots,
	}
}

// golden compares the text report with testdata/NAME.txt.
func golden(t *testing.T, name string, r *Report) {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join("testdata", name+".txt")
	if *update {
		if err := os.WriteFile(file, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("text report differs from %s:\n--- got\n%s--- want\n%s", file, b.String(), want)
	}
}

// find returns the one finding of check about subject.
func find(t *testing.T, r *Report, subject, check string) Finding {
	t.Helper()
	var found []Finding
	for _, f := range r.Findings {
		if f.Subject == subject && f.Check == check {
			found = append(found, f)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d findings %s/%s, want 1: %+v", len(found), subject, check, r.Findings)
	}
	return found[0]
}

// TestAllGreen: the correct zone gives no error and no warning, exit 0,
// and the text form of testdata/all-green.txt.
func TestAllGreen(t *testing.T) {
	r := Run(context.Background(), options(t, goodZone(t)))
	for _, f := range r.Findings {
		if f.Severity >= Warning {
			t.Errorf("%s %s: %s: %s", f.Subject, f.Check, f.Severity, f.Summary)
		}
	}
	if r.ExitCode() != 0 {
		t.Errorf("exit code %d, want 0", r.ExitCode())
	}
	golden(t, "all-green", r)
}

// TestMistakes: the good zone with one thing wrong; each gives its
// finding, with the record that fixes it, and the exit code; the text
// form of each is in testdata.
func TestMistakes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(d *relaytest.DNS, o *Options)
		subject  string
		check    string
		severity Severity
		record   string // a record the finding must offer, "" for none
		exit     int
	}{
		{"missing-spf", func(d *relaytest.DNS, o *Options) { d.SetTXT(dom, "google-site-verification=xyz") },
			dom, "SPF", Error, `example.test. IN TXT "v=spf1 a:mail.example.test ~all"`, 1},
		{"spf-without-this-host", func(d *relaytest.DNS, o *Options) { d.SetTXT(dom, "v=spf1 ip4:198.51.100.1 -all") },
			dom, "SPF", Error, `example.test. IN TXT "v=spf1 ip4:198.51.100.1 a:mail.example.test -all"`, 1},
		{"spf-too-many-lookups", func(d *relaytest.DNS, o *Options) {
			var terms []string
			for i := range 11 {
				name := fmt.Sprintf("h%d.example.test", i)
				d.SetA(name, "198.51.100.1")
				terms = append(terms, "a:"+name)
			}
			d.SetTXT(dom, "v=spf1 "+strings.Join(terms, " ")+" -all")
		}, dom, "SPF", Error, `example.test. IN TXT "v=spf1 a:mail.example.test ~all"`, 1},
		{"dkim-key-mismatch", func(d *relaytest.DNS, o *Options) { d.SetTXT("s1._domainkey."+dom, key(t, 2).Record) },
			dom, "DKIM s1", Error, ZoneTXT("s1._domainkey."+dom, key(t, 1).Record), 1},
		{"dkim-key-missing", func(d *relaytest.DNS, o *Options) { d.Delete("s1._domainkey." + dom) },
			dom, "DKIM s1", Error, ZoneTXT("s1._domainkey."+dom, key(t, 1).Record), 1},
		{"no-dkim-key", func(d *relaytest.DNS, o *Options) { o.Keys = nil },
			dom, "DKIM", Warning, "", 2},
		{"no-dmarc", func(d *relaytest.DNS, o *Options) { d.Delete("_dmarc." + dom) },
			dom, "DMARC", Warning, `_dmarc.example.test. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.test"`, 2},
		{"dmarc-fails", func(d *relaytest.DNS, o *Options) { o.Keys = nil; d.SetTXT(dom, "v=spf1 -all") },
			dom, "DMARC", Error, "", 1},
		{"dmarc-p-none", func(d *relaytest.DNS, o *Options) { d.SetTXT("_dmarc."+dom, "v=DMARC1; p=none") },
			dom, "DMARC", Info, "", 0},
		{"no-ptr", func(d *relaytest.DNS, o *Options) { d.SetPTR("192.0.2.10") },
			host, "reverse DNS", Error, "10.2.0.192.in-addr.arpa. IN PTR mail.example.test.", 1},
		{"ptr-mismatch", func(d *relaytest.DNS, o *Options) { d.SetPTR("192.0.2.10", "dsl-192-0-2-10.isp.example") },
			host, "reverse DNS", Error, "10.2.0.192.in-addr.arpa. IN PTR mail.example.test.", 1},
		{"ptr-other-name", func(d *relaytest.DNS, o *Options) {
			d.SetPTR("192.0.2.10", "box.example.net")
			d.SetA("box.example.net", "192.0.2.10")
		}, host, "reverse DNS", Warning, "10.2.0.192.in-addr.arpa. IN PTR mail.example.test.", 2},
		{"no-address", func(d *relaytest.DNS, o *Options) { d.SetA(host) },
			host, "address", Error, "mail.example.test. IN A 192.0.2.10", 1},
		{"ehlo-localhost", func(d *relaytest.DNS, o *Options) { o.Hostname = "localhost" },
			"localhost", "EHLO name", Error, "", 1},
		{"no-mx", func(d *relaytest.DNS, o *Options) { d.SetMX(dom) },
			dom, "MX", Warning, "", 2},
		{"certificate-expiring", func(d *relaytest.DNS, o *Options) {
			cert, roots := certFor(t, host, 5*24*time.Hour+time.Hour)
			o.Cert, o.Roots = cert, roots
		}, host, "certificate", Warning, "", 2},
		{"certificate-wrong-name", func(d *relaytest.DNS, o *Options) {
			cert, roots := certFor(t, "other.example.test", 90*24*time.Hour)
			o.Cert, o.Roots = cert, roots
		}, host, "certificate", Error, "", 1},
		{"behind-nat", func(d *relaytest.DNS, o *Options) {
			o.Addresses = nil
			o.LocalAddresses = func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("192.168.1.20")} }
		}, host, "address", Warning, "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := goodZone(t)
			o := options(t, d)
			tc.change(d, &o)
			r := Run(context.Background(), o)
			var f Finding
			if tc.check == "address" && tc.name == "behind-nat" {
				f = r.Findings[1] // the NAT warning comes before the address records' finding
			} else {
				f = find(t, r, tc.subject, tc.check)
			}
			if f.Severity != tc.severity {
				t.Errorf("%s: severity %s, want %s: %s", tc.check, f.Severity, tc.severity, f.Summary)
			}
			if tc.record != "" && !contains(f.Records, tc.record) {
				t.Errorf("%s: records %q, want %q among them", tc.check, f.Records, tc.record)
			}
			if f.Severity >= Warning && f.Fix == "" {
				t.Errorf("%s: no fix offered for %q", tc.check, f.Summary)
			}
			if r.ExitCode() != tc.exit {
				t.Errorf("exit code %d, want %d", r.ExitCode(), tc.exit)
			}
			golden(t, tc.name, r)
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestProbe: the port 25 probe reads the greeting of the probe domain's
// MX, and says what to do when nothing answers.
func TestProbe(t *testing.T) {
	d := goodZone(t)
	d.SetMX("dest.test", relaytest.MX{Pref: 10, Host: "mx.dest.test"})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "220 mx.dest.test ESMTP\r\n")
			c.Close()
		}
	}()
	o := options(t, d)
	o.Offline, o.ProbeDomain, o.ProbePort = false, "dest.test", l.Addr().(*net.TCPAddr).Port
	f := find(t, Run(context.Background(), o), host, "port 25")
	if f.Severity != OK || !strings.Contains(f.Summary, "220 mx.dest.test ESMTP") {
		t.Errorf("open port: %s %s", f.Severity, f.Summary)
	}
	l.Close()
	f = find(t, Run(context.Background(), o), host, "port 25")
	if f.Severity != Error || !strings.Contains(f.Fix, "smarthost") {
		t.Errorf("closed port: %s %s (fix %q)", f.Severity, f.Summary, f.Fix)
	}
}

// TestJSON: the JSON form carries every finding, severities as words, and
// the counts.
func TestJSON(t *testing.T) {
	d := goodZone(t)
	d.Delete("_dmarc." + dom)
	r := Run(context.Background(), options(t, d))
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Hostname  string
		Addresses []string
		Findings  []struct{ Subject, Check, Severity, Summary, Fix string }
		Errors    int
		Warnings  int
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if got.Hostname != host || len(got.Addresses) != 1 || got.Addresses[0] != "192.0.2.10" || got.Warnings != 1 || got.Errors != 0 ||
		len(got.Findings) != len(r.Findings) {
		t.Errorf("JSON report: %+v", got)
	}
	for _, f := range got.Findings {
		if f.Check == "DMARC" && f.Severity != "warning" {
			t.Errorf("DMARC severity %q in JSON", f.Severity)
		}
	}
}

func TestReverseName(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.10":  "10.2.0.192.in-addr.arpa",
		"2001:db8::1": "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
	} {
		if got := reverseName(netip.MustParseAddr(in)); got != want {
			t.Errorf("reverseName(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestSTSPolicy: with a policy fetcher, the MTA-STS policy is checked
// against the domain's MX hosts (mail.example.test in the good zone):
// enforce leaving one out is an error, testing leaving one out a
// warning, a policy that cannot be fetched a warning; without a record
// nothing is fetched.
func TestSTSPolicy(t *testing.T) {
	policy := func(mode string, mx ...string) func(context.Context, string) (*STSPolicy, error) {
		return func(_ context.Context, d string) (*STSPolicy, error) {
			if d != dom {
				t.Errorf("fetched the policy of %q", d)
			}
			return &STSPolicy{Mode: mode, MX: mx, Allows: func(h string) bool {
				for _, p := range mx {
					if p == h || strings.HasPrefix(p, "*.") && strings.HasSuffix(h, p[1:]) && !strings.Contains(strings.TrimSuffix(h, p[1:]), ".") {
						return true
					}
				}
				return false
			}}, nil
		}
	}
	for _, tc := range []struct {
		name  string
		fetch func(context.Context, string) (*STSPolicy, error)
		want  Severity
		exit  int
	}{
		{"enforce", policy("enforce", "mail.example.test"), OK, 0},
		{"enforce-wildcard", policy("enforce", "*.example.test"), OK, 0},
		{"testing", policy("testing", "mail.example.test"), Info, 0},
		{"enforce-without-the-mx", policy("enforce", "mx.other.test"), Error, 1},
		{"testing-without-the-mx", policy("testing", "mx.other.test"), Warning, 2},
		{"unreachable", func(context.Context, string) (*STSPolicy, error) { return nil, errors.New("connection refused") }, Warning, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := options(t, goodZone(t))
			o.FetchSTSPolicy = tc.fetch
			r := Run(context.Background(), o)
			var got *Finding
			for i, f := range r.Findings {
				if f.Check == "MTA-STS policy" {
					got = &r.Findings[i]
				}
			}
			if got == nil || got.Severity != tc.want || r.ExitCode() != tc.exit {
				t.Errorf("finding %+v, exit %d; want %s, exit %d", got, r.ExitCode(), tc.want, tc.exit)
			}
		})
	}
	t.Run("no record", func(t *testing.T) {
		d := goodZone(t)
		d.Delete("_mta-sts." + dom)
		o := options(t, d)
		o.FetchSTSPolicy = func(context.Context, string) (*STSPolicy, error) {
			t.Error("fetched a policy no record announces")
			return nil, errors.New("no")
		}
		Run(context.Background(), o)
	})
}

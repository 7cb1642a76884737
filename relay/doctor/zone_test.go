package doctor

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"postern/relay/relaytest"
)

// TestZonePassesDoctor: the records Zone prints (what `postern init`
// shows), published as printed, plus the two it can only describe (the
// MX of whoever receives the domain's mail, and the PTR the address's
// holder sets), leave the doctor nothing to complain about. The zone is
// read with a real zone-file parser, so a record that does not parse
// fails the test too; the text is compared with testdata/zone.txt.
func TestZonePassesDoctor(t *testing.T) {
	const other = "example.org"
	o := ZoneOptions{Hostname: host, Addresses: []netip.Addr{ip}, Domains: []string{dom, other}, Keys: []Key{key(t, 1)}}
	k2 := key(t, 2)
	k2.Domain = other
	o.Keys = append(o.Keys, k2)
	text := Zone(o)

	zone, err := relaytest.ParseZone(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Zone's output is not a zone file: %v\n%s", err, text)
	}
	n := 0
	for _, r := range zone {
		n += len(r.A) + len(r.TXT)
	}
	// A, host SPF, and per domain SPF, DKIM, DMARC, TLS-RPT.
	if n != 2+2*4 {
		t.Errorf("%d records, want 10:\n%s", n, text)
	}
	for _, d := range []string{dom, other} {
		r := zone[d]
		r.MX = []relaytest.MX{{Pref: 10, Host: host}}
		zone[d] = r
	}
	if !strings.Contains(text, "; 10.2.0.192.in-addr.arpa. IN PTR mail.example.test.") {
		t.Errorf("no PTR line for %s:\n%s", ip, text)
	}
	d := relaytest.NewDNS(t, zone)
	d.SetPTR(ip.String(), host)

	opts := options(t, d)
	opts.Domains, opts.Keys = o.Domains, o.Keys
	r := Run(context.Background(), opts)
	for _, f := range r.Findings {
		if f.Severity > Info {
			t.Errorf("%s %s: %s: %s", f.Subject, f.Check, f.Severity, f.Summary)
		}
	}
	if r.ExitCode() != 0 {
		t.Errorf("exit code %d, want 0", r.ExitCode())
	}

	file := filepath.Join("testdata", "zone.txt")
	if *update {
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want, err := os.ReadFile(file); err != nil || string(want) != text {
		t.Errorf("Zone differs from %s (%v):\n--- got\n%s--- want\n%s", file, err, text, want)
	}
}

// TestZoneWithoutAddress: without the host's address, the address, and
// the PTR, are described in comments only, never published as
// placeholders a zone file would refuse.
func TestZoneWithoutAddress(t *testing.T) {
	text := Zone(ZoneOptions{Hostname: host, Domains: []string{dom}})
	zone, err := relaytest.ParseZone(strings.NewReader(text))
	if err != nil {
		t.Fatalf("not a zone file: %v\n%s", err, text)
	}
	if len(zone[host].A) != 0 {
		t.Errorf("an A record without an address: %v", zone[host].A)
	}
	if !strings.Contains(text, "; "+host+". IN A <this host's public IPv4 address>") {
		t.Errorf("no placeholder for the address:\n%s", text)
	}
}

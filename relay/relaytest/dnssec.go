package relaytest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// SignedZone is one zone of a DNSSEC test world.
type SignedZone struct {
	// Name is the zone's apex, "signed.test".
	Name string
	// Records are zone-file lines, names relative to the apex or
	// absolute: "@ MX 10 mx", "mx A 127.0.0.1", "_25._tcp.mx TLSA 3 1 1
	// AB...". The SOA and NS records are added.
	Records []string
	// Signed: signed with ldns-signzone (ECDSA P-256, NSEC) and trusted
	// by the resolver (its KSK as a trust anchor). Unsigned zones are
	// insecure: answered without AD.
	Signed bool
	// Bogus, in a signed zone, names an RRset ("_25._tcp.mx TLSA") whose
	// signature is broken after signing, so that the validating resolver
	// answers SERVFAIL for it.
	Bogus string
}

// DNSSEC is a DNSSEC test world of real programs on loopback: nsd serving
// the zones authoritatively, and unbound validating in front of it, the
// way an operator runs a validating resolver for DANE. Both are stopped
// by their PIDs when the test ends.
type DNSSEC struct {
	// Resolver is unbound's "IP:port": what delivery.resolver names.
	Resolver string
	// Authoritative is nsd's "IP:port".
	Authoritative string
}

// NewDNSSEC starts nsd on ip1 and unbound on ip2 (distinct 127.x
// addresses; port 10053 on each) serving zones. It needs the Debian
// packages nsd, unbound and ldnsutils (make deps installs them).
func NewDNSSEC(t testing.TB, ip1, ip2 string, zones ...SignedZone) *DNSSEC {
	t.Helper()
	for _, bin := range []string{"nsd", "unbound", "ldns-keygen", "ldns-signzone"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + bin); err2 != nil {
				t.Fatalf("relaytest: %s not found (apt-get install nsd unbound ldnsutils, or make deps): %v", bin, err)
			}
		}
	}
	dir := t.TempDir()
	const port = "10053"
	w := &DNSSEC{Authoritative: ip1 + "@" + port, Resolver: ip2 + ":" + port}
	var nsdZones, unboundZones strings.Builder
	for _, z := range zones {
		file, anchor, err := writeZone(dir, ip1, z)
		if err != nil {
			t.Fatalf("relaytest: zone %s: %v", z.Name, err)
		}
		fmt.Fprintf(&nsdZones, "zone:\n\tname: %q\n\tzonefile: %q\n", z.Name, file)
		fmt.Fprintf(&unboundZones, "stub-zone:\n\tname: %q\n\tstub-addr: %s\n", z.Name, w.Authoritative)
		if anchor != "" {
			fmt.Fprintf(&unboundZones, "server:\n\ttrust-anchor-file: %q\n", anchor)
		} else {
			// Without this, unbound still answers, just without AD; it
			// says so to make the intent plain.
			fmt.Fprintf(&unboundZones, "server:\n\tdomain-insecure: %q\n", z.Name)
		}
	}
	nsdConf := filepath.Join(dir, "nsd.conf")
	writeFile(t, nsdConf, fmt.Sprintf(`server:
	ip-address: %s
	port: %s
	username: ""
	chroot: ""
	zonesdir: %q
	zonelistfile: %q
	xfrdfile: %q
	pidfile: %q
	logfile: %q
	server-count: 1
	verbosity: 1
	do-ip6: no
remote-control:
	control-enable: no
%s`, ip1, port, dir, filepath.Join(dir, "zone.list"), filepath.Join(dir, "xfrd.state"),
		filepath.Join(dir, "nsd.pid"), filepath.Join(dir, "nsd.log"), nsdZones.String()))
	unboundConf := filepath.Join(dir, "unbound.conf")
	writeFile(t, unboundConf, fmt.Sprintf(`server:
	interface: %s
	port: %s
	do-ip6: no
	username: ""
	chroot: ""
	directory: %q
	pidfile: %q
	logfile: %q
	use-syslog: no
	verbosity: 1
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	module-config: "validator iterator"
	harden-dnssec-stripped: yes
	val-log-level: 2
	qname-minimisation: no
	prefetch: no
	# unbound answers NXDOMAIN itself for the special-use names of RFC
	# 6761 (test., invalid., ...): the test zones live under test.
	local-zone: "test." nodefault
remote-control:
	control-enable: no
%s`, ip2, port, dir, filepath.Join(dir, "unbound.pid"), filepath.Join(dir, "unbound.log"), unboundZones.String()))

	start(t, dir, "nsd", "-d", "-c", nsdConf)
	waitDNS(t, ip1+":"+port, zones[0].Name, filepath.Join(dir, "nsd.log"))
	start(t, dir, "unbound", "-d", "-c", unboundConf)
	waitDNS(t, w.Resolver, zones[0].Name, filepath.Join(dir, "unbound.log"))
	return w
}

func writeFile(t testing.TB, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeZone writes z's zone file (signed when asked) and returns the file
// nsd serves and the trust anchor file for unbound ("" when unsigned).
func writeZone(dir, nsIP string, z SignedZone) (file, anchor string, err error) {
	base := filepath.Join(dir, z.Name+".zone")
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN %s.\n$TTL 30\n", z.Name)
	fmt.Fprintf(&b, "@ SOA ns hostmaster 1 3600 600 86400 30\n@ NS ns\nns A %s\n", nsIP)
	for _, r := range z.Records {
		b.WriteString(r + "\n")
	}
	if err := os.WriteFile(base, []byte(b.String()), 0o644); err != nil {
		return "", "", err
	}
	if !z.Signed {
		return base, "", nil
	}
	ksk, err := run(dir, "ldns-keygen", "-a", "ECDSAP256SHA256", "-k", z.Name)
	if err != nil {
		return "", "", err
	}
	zsk, err := run(dir, "ldns-keygen", "-a", "ECDSAP256SHA256", z.Name)
	if err != nil {
		return "", "", err
	}
	signed := base + ".signed"
	if _, err := run(dir, "ldns-signzone", "-f", signed, base, filepath.Join(dir, zsk), filepath.Join(dir, ksk)); err != nil {
		return "", "", err
	}
	if z.Bogus != "" {
		if err := breakSignature(signed, z.Name, z.Bogus); err != nil {
			return "", "", err
		}
	}
	return signed, filepath.Join(dir, ksk+".ds"), nil
}

// breakSignature flips a bit of the signature of the RRSIG covering
// what ("owner TYPE", owner relative to the zone).
func breakSignature(file, zone, what string) error {
	owner, typ, _ := strings.Cut(what, " ")
	fqdn := dns.Fqdn(owner + "." + zone)
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	broken := false
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.EqualFold(f[0], fqdn) || f[3] != "RRSIG" || f[4] != typ {
			continue
		}
		sig := []byte(f[len(f)-1])
		if sig[0] == 'A' {
			sig[0] = 'B'
		} else {
			sig[0] = 'A'
		}
		f[len(f)-1] = string(sig)
		lines[i] = strings.Join(f, "\t")
		broken = true
	}
	if !broken {
		return fmt.Errorf("no RRSIG over %s %s in %s", fqdn, typ, file)
	}
	return os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o644)
}

// run runs a command in dir and returns its first line of output.
func run(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", name, err, errb.String())
	}
	line, _, _ := strings.Cut(out.String(), "\n")
	return strings.TrimSpace(line), nil
}

// start runs a server in the foreground of its own process and stops it
// by its PID when the test ends.
func start(t testing.TB, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errb, &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("relaytest: start %s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

// waitDNS waits until server answers the SOA of zone, up to 10 seconds.
func waitDNS(t testing.TB, server, zone, logFile string) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(zone), dns.TypeSOA)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last string
	for ctx.Err() == nil {
		r, _, err := c.ExchangeContext(ctx, m, server)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return
		}
		if err != nil {
			last = err.Error()
		} else {
			last = dns.RcodeToString[r.Rcode]
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	log, _ := os.ReadFile(logFile)
	t.Fatalf("relaytest: %s did not answer for %s within 10s (last: %s); its log:\n%s", server, zone, last, log)
}

package main

// postern doctor end to end: the binary reads the config (DKIM keys, the
// users' allowed domains, the certificate files, delivery.resolver) and
// checks an in-process DNS zone; its exit code and JSON report follow
// what the zone gets right and wrong.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// doctorReport is the JSON of postern doctor, as far as the test reads it.
type doctorReport struct {
	Addresses []string
	Findings  []struct {
		Subject, Check, Severity, Summary, Fix string
		Records                                []string
	}
	Errors   int
	Warnings int
}

func (r doctorReport) finding(subject, check string) (sev, summary string, records []string) {
	for _, f := range r.Findings {
		if f.Subject == subject && f.Check == check {
			return f.Severity, f.Summary, f.Records
		}
	}
	return "", "", nil
}

// writeCA writes a CA and a certificate for name signed by it into dir,
// and returns the files: certificate, key, CA.
func writeCA(t *testing.T, dir, name string) (certFile, keyFile, caFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "doctor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	certFile, keyFile, caFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	os.WriteFile(certFile, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	return certFile, keyFile, caFile
}

func TestDoctor(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyFile, keyName, keyRecord := keygen(t, dir, "sender.test", "s1", "ed25519")
	certFile, certKey, caFile := writeCA(t, dir, "postern.test")
	dns := relaytest.NewDNS(t, relaytest.Zone{
		"postern.test":           {A: []string{"192.0.2.10"}, TXT: []string{"v=spf1 a -all"}},
		"sender.test":            {MX: []relaytest.MX{{Pref: 10, Host: "postern.test"}}, TXT: []string{"v=spf1 a:postern.test ~all"}},
		keyName:                  {TXT: []string{keyRecord}},
		"_dmarc.sender.test":     {TXT: []string{"v=DMARC1; p=reject"}},
		"users.test":             {MX: []relaytest.MX{{Pref: 10, Host: "postern.test"}}, TXT: []string{"v=spf1 ip4:192.0.2.10 -all"}},
		"_dmarc.users.test":      {TXT: []string{"v=DMARC1; p=quarantine"}},
		"_mta-sts.sender.test":   {TXT: []string{"v=STSv1; id=1"}},
		"_smtp._tls.sender.test": {TXT: []string{"v=TLSRPTv1; rua=mailto:tls@sender.test"}},
	})
	dns.SetPTR("192.0.2.10", "postern.test")
	in := newInstanceIn(t, dir, testConfig{Resolver: dns.Addr(), DeliveryPort: 25, Extra: fmt.Sprintf(
		"tls: {cert_file: %s, key_file: %s}\ndkim:\n  keys:\n    - {domain: sender.test, selector: s1, key_file: %s}\n", certFile, certKey, keyFile)})
	// users.test comes from a user's allowed senders; it has no DKIM key.
	in.addUser("app@users.test", "a long passphrase", "@users.test")

	run := func(wantExit int) doctorReport {
		t.Helper()
		cmd := exec.Command(binPath, "doctor", "--json", "--offline", "--ip", "192.0.2.10", "--config", in.cfgPath)
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile) // the certificate's CA, as the system's
		out, err := cmd.Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var r doctorReport
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if code != wantExit {
			t.Fatalf("exit %d, want %d:\n%s", code, wantExit, out)
		}
		return r
	}

	// Right, except that users.test has no DKIM key, and that
	// sender.test's MTA-STS record announces a policy that no
	// mta-sts.sender.test serves (fetched as delivery would, through
	// delivery.resolver): two warnings.
	r := run(2)
	if r.Errors != 0 || r.Warnings != 2 {
		t.Errorf("%d errors, %d warnings; want 0 and 2: %+v", r.Errors, r.Warnings, r.Findings)
	}
	if sev, sum, _ := r.finding("sender.test", "MTA-STS policy"); sev != "warning" || !strings.Contains(sum, "mta-sts.sender.test") {
		t.Errorf("MTA-STS policy: %s %s", sev, sum)
	}
	for _, c := range [][2]string{{"postern.test", "reverse DNS"}, {"postern.test", "certificate"}, {"sender.test", "SPF"},
		{"sender.test", "DKIM s1"}, {"sender.test", "DMARC"}, {"users.test", "SPF"}} {
		if sev, sum, _ := r.finding(c[0], c[1]); sev != "ok" {
			t.Errorf("%s %s: %s %s", c[0], c[1], sev, sum)
		}
	}
	if sev, _, _ := r.finding("users.test", "DKIM"); sev != "warning" {
		t.Errorf("users.test has no key, but DKIM is %q", sev)
	}

	// A key published that is not the one configured: an error, exit 1,
	// with the record to publish instead.
	dns.SetTXT(keyName, "v=DKIM1; k=ed25519; p=iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=")
	r = run(1)
	sev, _, recs := r.finding("sender.test", "DKIM s1")
	if sev != "error" || len(recs) != 1 || !strings.Contains(recs[0], strings.Join(strings.Fields(keyRecord), " ")[:40]) {
		t.Errorf("DKIM mismatch: %s %q", sev, recs)
	}
}

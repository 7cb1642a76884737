package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/relaytest"
)

// Outbound TLS policies with the real binary: MTA-STS served over HTTPS
// by a test CA that postern trusts through SSL_CERT_FILE, DANE through nsd
// and unbound, REQUIRETLS from submission to the MX.

// stsDomain publishes an MTA-STS enforce policy for domain, whose one MX
// host (mx1.<domain>) is at mxIP, served over HTTPS at policyIP:443 with a
// certificate of ca (root: the tests bind loopback addresses only).
func (w *world) stsDomain(ca *relaytest.CA, domain, mxIP, policyIP string) {
	w.t.Helper()
	w.mx(domain, mxIP)
	w.dns.SetTXT("_mta-sts."+domain, "v=STSv1; id=20261206")
	w.dns.SetA("mta-sts."+domain, policyIP)
	policy := fmt.Sprintf("version: STSv1\nmode: enforce\nmx: mx1.%s\nmax_age: 86400\n", domain)
	l, err := tls.Listen("tcp", net.JoinHostPort(policyIP, "443"),
		&tls.Config{Certificates: []tls.Certificate{ca.Issue(w.t, "mta-sts."+domain)}})
	if err != nil {
		w.t.Fatalf("policy server on %s:443 (needs root): %v", policyIP, err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(rw, policy)
	})}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	w.t.Cleanup(func() { srv.Close(); <-done })
}

// stsInstance runs postern on w, trusting ca, with the admin API (for
// queue show) and alice@example.test as a user.
func stsInstance(t *testing.T, w *world, ca *relaytest.CA) *instance {
	t.Helper()
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	in := newInstance(t, cfg)
	in.env = []string{"SSL_CERT_FILE=" + ca.CertFile, "SSL_CERT_DIR="}
	in.addUser("alice@example.test", "correct horse")
	return in
}

// waitFor waits for the first log line of message id that says msg.
func (in *instance) waitFor(id, msg string) logEntry {
	in.t.Helper()
	return in.waitLog(60*time.Second, func(e logEntry) bool { return e.isMsg(msg) && (id == "" || e.str("id") == id) })
}

// TestMTASTSEnforceE2E: under an enforce policy, an MX without STARTTLS
// gets nothing: the message is deferred with a reason naming the policy,
// in the log and in `postern queue show`; once the MX shows a valid
// certificate, the next retry delivers it over TLS.
func TestMTASTSEnforceE2E(t *testing.T) {
	ca := relaytest.NewCA(t)
	w := newWorld(t)
	w.stsDomain(ca, "sts.test", "127.0.2.2", "127.0.17.1")
	plain := w.receiver("127.0.2.2")
	in := stsInstance(t, w, ca)
	in.start()

	submitRaw(t, in.cfg.Relay, "app@example.test", "bob@sts.test", "From: app@example.test\r\nSubject: sts\r\n\r\nhello\r\n")
	e := in.waitFor("", "deferred")
	id := e.str("id")
	if r := e.reply(); r.Code != 451 || !strings.Contains(r.Text, "MTA-STS policy of sts.test") || !strings.Contains(r.Text, "STARTTLS") {
		t.Errorf("deferred with %+v, want 451 naming the MTA-STS policy of sts.test", r)
	}
	m := showJSON(t, in, id)
	if len(m.Rcpts) != 1 || m.Rcpts[0].State != queue.StateDeferred || !strings.Contains(m.Rcpts[0].LastReply.Text, "MTA-STS policy of sts.test") {
		t.Errorf("queue show: %+v, want deferred with the MTA-STS reason", m.Rcpts)
	}
	if n := len(plain.Messages()); n != 0 {
		t.Fatalf("%d messages sent in clear", n)
	}

	plain.Close()
	// The next retry (retry.max is 2s here) finds it.
	good := w.receiver("127.0.2.2", relaytest.WithCertificate(ca.Issue(t, "mx1.sts.test")))
	msgs, err := good.WaitMessages(ctxTimeout(t, 60*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if !msgs[0].TLS {
		t.Error("delivered without TLS")
	}
}

// submitREQUIRETLS submits a message with REQUIRETLS (RFC 8689) as alice,
// over STARTTLS on the submission port.
func submitREQUIRETLS(t *testing.T, in *instance, to string) {
	t.Helper()
	c, err := smtp.DialStartTLS(in.cfg.Submission, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice@example.test", "correct horse")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.test", &smtp.MailOptions{RequireTLS: true}); err != nil {
		t.Fatalf("MAIL with REQUIRETLS: %v", err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		t.Fatal(err)
	}
	wc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(wc, "From: alice@example.test\r\nTo: %s\r\nSubject: secret\r\n\r\nfor your eyes only\r\n", to)
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
}

// TestREQUIRETLSE2E: a REQUIRETLS message to a host authenticated by
// MTA-STS that does not offer REQUIRETLS fails at once with 550 5.7.30,
// without a retry; to one that offers it, it goes with REQUIRETLS in MAIL.
func TestREQUIRETLSE2E(t *testing.T) {
	ca := relaytest.NewCA(t)
	w := newWorld(t)
	w.stsDomain(ca, "rt.test", "127.0.2.3", "127.0.17.2")
	w.stsDomain(ca, "rt2.test", "127.0.2.4", "127.0.17.3")
	without := w.receiver("127.0.2.3", relaytest.WithCertificate(ca.Issue(t, "mx1.rt.test")))
	with := w.receiver("127.0.2.4", relaytest.WithCertificate(ca.Issue(t, "mx1.rt2.test")),
		relaytest.WithServer(func(s *smtp.Server) { s.EnableREQUIRETLS = true }))
	in := stsInstance(t, w, ca)
	in.start()

	submitREQUIRETLS(t, in, "bob@rt.test")
	e := in.waitFor("", "failed")
	if r := e.reply(); r.Code != 550 || r.Enhanced.String() != "5.7.30" || !strings.Contains(r.Text, "does not offer REQUIRETLS") {
		t.Errorf("failed with %+v, want 550 5.7.30", r)
	}
	if n := len(without.Messages()); n != 0 {
		t.Fatalf("a server without REQUIRETLS got %d messages", n)
	}

	submitREQUIRETLS(t, in, "carol@rt2.test")
	msgs, err := with.WaitMessages(ctxTimeout(t, 60*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if !msgs[0].TLS || !msgs[0].Opts.RequireTLS {
		t.Errorf("delivered with TLS %v, REQUIRETLS %v; want both", msgs[0].TLS, msgs[0].Opts.RequireTLS)
	}
}

// TestDANEE2E: with unbound validating a zone nsd serves signed, an MX
// whose TLSA record does not match its certificate gets nothing (the
// message waits, the reason names DANE), and one whose record matches
// gets its message over TLS.
func TestDANEE2E(t *testing.T) {
	w := newWorld(t)
	cert, _, err := relaytest.SelfSigned("mx.dane.test", "mx2.dane.test")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := relaytest.SelfSigned("other.test")
	if err != nil {
		t.Fatal(err)
	}
	tlsa := func(c tls.Certificate) string {
		sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
		return fmt.Sprintf("_%d._tcp.%%s TLSA 3 1 1 %s", w.port, strings.ToUpper(hex.EncodeToString(sum[:])))
	}
	dnssec := relaytest.NewDNSSEC(t, "127.0.16.1", "127.0.16.2", relaytest.SignedZone{Name: "dane.test", Signed: true, Records: []string{
		"@ MX 10 mx",
		"mx A 127.0.2.2",
		fmt.Sprintf(tlsa(cert), "mx"),
		"nomatch MX 10 mx2",
		"mx2 A 127.0.2.3",
		fmt.Sprintf(tlsa(other), "mx2"),
	}})
	good := w.receiver("127.0.2.2", relaytest.WithCertificate(cert))
	bad := w.receiver("127.0.2.3", relaytest.WithCertificate(cert))
	cfg := w.config()
	cfg.Resolver = dnssec.Resolver
	in := newInstance(t, cfg)
	in.start()

	submitRaw(t, in.cfg.Relay, "app@example.test", "bob@nomatch.dane.test", "From: app@example.test\r\nSubject: dane\r\n\r\nhello\r\n")
	e := in.waitFor("", "deferred")
	if r := e.reply(); r.Code != 451 || r.Enhanced.String() != "4.7.5" || !strings.Contains(r.Text, "DANE") {
		t.Errorf("deferred with %+v, want 451 4.7.5 naming DANE", r)
	}
	if n := len(bad.Messages()); n != 0 {
		t.Fatalf("the host whose TLSA does not match got %d messages", n)
	}

	submitRaw(t, in.cfg.Relay, "app@example.test", "bob@dane.test", "From: app@example.test\r\nSubject: dane\r\n\r\nhello\r\n")
	msgs, err := good.WaitMessages(ctxTimeout(t, 60*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if !msgs[0].TLS {
		t.Error("delivered without TLS")
	}
}

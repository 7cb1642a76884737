package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"postern/configs"
	"postern/dkim"
	"postern/queue"
	"postern/relay/relaytest"
	pipeline "postern/relay/submit"
	"postern/relay/tlspolicy"
)

// captureDeliverer keeps what the queue hands it and delivers it.
type captureDeliverer struct {
	mu   sync.Mutex
	got  []*queue.Delivery
	body [][]byte
	done chan struct{}
}

func (c *captureDeliverer) Deliver(_ context.Context, d *queue.Delivery) []queue.Result {
	rc, err := d.Body.Open()
	var b []byte
	if err == nil {
		b, _ = io.ReadAll(rc)
		rc.Close()
	}
	c.mu.Lock()
	c.got = append(c.got, d)
	c.body = append(c.body, b)
	c.mu.Unlock()
	c.done <- struct{}{}
	out := make([]queue.Result, len(d.Rcpts))
	for i := range out {
		out[i] = queue.Result{Outcome: queue.Delivered}
	}
	return out
}

// TestTLSReportQueued: a day's report to a mailto: destination is queued
// through the submission pipeline, DKIM-signed for the reporting domain:
// a multipart/report with the gzipped JSON of RFC 8460 attached.
func TestTLSReportQueued(t *testing.T) {
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir, "dkim.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	keys, _, errs := dkim.LoadKeys([]dkim.KeyConfig{{Domain: "postern.test", Selector: "s1", KeyFile: keyFile}})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	signer := dkim.NewSigner(keys)

	deliv := &captureDeliverer{done: make(chan struct{}, 4)}
	q, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db"), Deliverer: deliv, Hostname: "postern.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	q.Start()

	d := relaytest.NewDNS(t, relaytest.Zone{
		"_smtp._tls.example.test": {TXT: []string{"v=TLSRPTv1; rua=mailto:tlsrpt@example.test"}},
	})
	cfg := configs.Default()
	cfg.Hostname = "postern.test"
	cfg.Delivery.Resolver = d.Addr()
	cfg.Delivery.TLSReports.Organization = "Postern Test"
	local := pipeline.New(pipeline.Options{Hostname: cfg.Hostname, Queue: q, FixHeaders: true,
		Signer: func() pipeline.Signer { return signer }})
	rep, err := newTLSReporter(cfg, q, local, zap.NewNop())
	if err != nil || rep == nil {
		t.Fatalf("reporter: %v %v", rep, err)
	}
	rep.Record(tlspolicy.Session{Policy: tlspolicy.HostPolicy{PolicyDomain: "example.test", Mode: tlspolicy.WebPKI, Source: tlspolicy.SourceMTASTS,
		Report: tlspolicy.ReportPolicy{Type: tlspolicy.PolicyTypeSTS, Domain: "example.test", MXHost: []string{"mx.example.test"}}},
		MXHost: "mx.example.test", Failure: tlspolicy.CertificateExpired})
	rep.Record(tlspolicy.Session{Policy: tlspolicy.HostPolicy{PolicyDomain: "example.test"}, MXHost: "mx.example.test"})
	if err := rep.Flush(); err != nil {
		t.Fatal(err)
	}
	// The counts are of today: the report goes out once today has ended.
	// SendDue looks at the clock of the reporter, which is the real one
	// here, so the day is moved back in the store instead: a restart
	// reads it as yesterday's.
	store, _ := queue.NewStateStore[tlspolicy.DayCounts](q, "tlsrpt")
	all, _ := store.List()
	yesterday := time.Now().UTC().Add(-24 * time.Hour).Format(time.DateOnly)
	for k, v := range all {
		store.Delete(k)
		v.Day = yesterday
		store.Put(yesterday+"/"+v.Domain, v)
	}
	rep, _ = newTLSReporter(cfg, q, local, zap.NewNop())
	rep.SendDue(context.Background())

	select {
	case <-deliv.done:
	case <-time.After(20 * time.Second):
		t.Fatal("no report was queued")
	}
	deliv.mu.Lock()
	defer deliv.mu.Unlock()
	got := deliv.got[0]
	if got.From != "postmaster@postern.test" || len(got.Rcpts) != 1 || got.Rcpts[0] != "tlsrpt@example.test" {
		t.Errorf("queued from %q to %q", got.From, got.Rcpts)
	}
	raw := deliv.body[0]
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if sig := msg.Header.Get("DKIM-Signature"); !strings.Contains(sig, "d=postern.test") {
		t.Errorf("no DKIM signature of postern.test: %q", sig)
	}
	if msg.Header.Get("TLS-Report-Domain") != "example.test" || msg.Header.Get("TLS-Report-Submitter") != "postern.test" {
		t.Errorf("report fields: %v", msg.Header)
	}
	mt, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", msg.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var report map[string]any
	for {
		p, err := mr.NextRawPart()
		if err != nil {
			break
		}
		if p.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
			continue
		}
		b64, _ := io.ReadAll(p)
		gz, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(b64), "\r\n", ""))
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		js, _ := io.ReadAll(zr)
		if err := json.Unmarshal(js, &report); err != nil {
			t.Fatalf("%v\n%s", err, js)
		}
	}
	if report == nil {
		t.Fatal("no application/tlsrpt+gzip part")
	}
	for _, k := range []string{"organization-name", "date-range", "contact-info", "report-id", "policies"} {
		if report[k] == nil {
			t.Errorf("report lacks %s", k)
		}
	}
	if report["organization-name"] != "Postern Test" {
		t.Errorf("organization-name %v", report["organization-name"])
	}
	pols := report["policies"].([]any)
	if len(pols) != 2 {
		t.Fatalf("%d policies, want 2 (sts and no-policy-found)", len(pols))
	}
}

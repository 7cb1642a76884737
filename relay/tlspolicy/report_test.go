package tlspolicy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"postern/queue"
	"postern/relay/relaytest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// sessions records a day of sessions: successes and failures under an
// MTA-STS policy, a DANE failure, and one without policy.
func recordDay(r *Reporter) {
	sts := HostPolicy{PolicyDomain: "example.test", Mode: WebPKI, Source: SourceMTASTS, Report: ReportPolicy{
		Type: PolicyTypeSTS, Domain: "example.test", Strings: (&STSPolicy{Mode: STSEnforce, MX: []string{"mx.example.test"}, MaxAge: 86400}).Strings(),
		MXHost: []string{"mx.example.test"}}}
	dane := HostPolicy{PolicyDomain: "example.test", Mode: DANE, Source: SourceDANE, Report: ReportPolicy{
		Type: PolicyTypeTLSA, Domain: "example.test", Strings: []string{"3 1 1 AB01"}}}
	me, mx := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.7")
	for range 3 {
		r.Record(Session{Policy: sts, MXHost: "mx.example.test", SendingIP: me, ReceivingIP: mx})
	}
	r.Record(Session{Policy: sts, MXHost: "mx.example.test", SendingIP: me, ReceivingIP: mx, Failure: CertificateExpired})
	r.Record(Session{Policy: sts, MXHost: "mx.example.test", SendingIP: me, ReceivingIP: mx, Failure: CertificateExpired})
	r.Record(Session{Policy: sts, MXHost: "evil.example.test", Failure: ValidationFailure, Reason: "mx host not in policy"})
	r.Record(Session{Policy: dane, MXHost: "mx2.example.test", SendingIP: me, ReceivingIP: mx, Failure: StartTLSNotSupported})
	r.Record(Session{Policy: HostPolicy{PolicyDomain: "other.test"}, MXHost: "mx.other.test"})
}

type memStore[T any] struct {
	mu sync.Mutex
	m  map[string]T
}

func newMemStore[T any]() *memStore[T] { return &memStore[T]{m: map[string]T{}} }
func (s *memStore[T]) Get(k string) (T, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok, nil
}
func (s *memStore[T]) Put(k string, v T) error { return s.PutAll(map[string]T{k: v}) }
func (s *memStore[T]) PutAll(m map[string]T) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range m {
		s.m[k] = v
	}
	return nil
}
func (s *memStore[T]) Delete(k string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	return nil
}
func (s *memStore[T]) List() (map[string]T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]T{}
	for k, v := range s.m {
		out[k] = v
	}
	return out, nil
}

var reportDay = time.Date(2026, 12, 5, 13, 0, 0, 0, time.UTC)

// TestReportGolden: a day's counts become the JSON of RFC 8460 §4.4.
func TestReportGolden(t *testing.T) {
	clock := &fakeClock{t: reportDay}
	r, err := NewReporter(ReporterOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	recordDay(r)
	d := r.days[dayKey("2026-12-05", "example.test")]
	got, err := composeReport(*d, reportMeta{Organization: "Example Org", Contact: "tlsrpt@postern.test", Submitter: "postern.test", ReportID: "2026-12-05.0123456789abcdef@postern.test"})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report.golden.json")
	if *update {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("report differs from %s (go test -update to accept):\n%s", golden, got)
	}
	checkReportSchema(t, got)
}

// checkReportSchema checks the fields RFC 8460 §4.4 requires, and their
// types, in a report.
func checkReportSchema(t *testing.T, data []byte) {
	t.Helper()
	var r map[string]any
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	for _, k := range []string{"organization-name", "contact-info", "report-id"} {
		if s, ok := r[k].(string); !ok || s == "" {
			t.Errorf("%s missing or not a string", k)
		}
	}
	dr, _ := r["date-range"].(map[string]any)
	for _, k := range []string{"start-datetime", "end-datetime"} {
		s, _ := dr[k].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("date-range.%s %q: %v", k, s, err)
		}
	}
	pols, ok := r["policies"].([]any)
	if !ok || len(pols) == 0 {
		t.Fatalf("policies missing")
	}
	for i, p := range pols {
		p := p.(map[string]any)
		pol, _ := p["policy"].(map[string]any)
		switch pol["policy-type"] {
		case "tlsa", "sts", "no-policy-found":
		default:
			t.Errorf("policies[%d].policy.policy-type = %v", i, pol["policy-type"])
		}
		if s, _ := pol["policy-domain"].(string); s == "" {
			t.Errorf("policies[%d].policy.policy-domain missing", i)
		}
		sum, _ := p["summary"].(map[string]any)
		for _, k := range []string{"total-successful-session-count", "total-failure-session-count"} {
			if _, ok := sum[k].(float64); !ok {
				t.Errorf("policies[%d].summary.%s missing", i, k)
			}
		}
		fd, _ := p["failure-details"].([]any)
		for j, f := range fd {
			f := f.(map[string]any)
			if s, _ := f["result-type"].(string); s == "" {
				t.Errorf("policies[%d].failure-details[%d].result-type missing", i, j)
			}
			if _, ok := f["failed-session-count"].(float64); !ok {
				t.Errorf("policies[%d].failure-details[%d].failed-session-count missing", i, j)
			}
		}
	}
}

// TestReporterKeepsCounts: counts flushed to the queue database survive
// a restart and go on adding up; what was not flushed is lost.
func TestReporterKeepsCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	clock := &fakeClock{t: reportDay}
	open := func() (*queue.Queue, *Reporter) {
		q, err := queue.Open(queue.Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := queue.NewStateStore[DayCounts](q, "tlsrpt")
		r, err := NewReporter(ReporterOptions{Store: st, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return q, r
	}
	q, r := open()
	recordDay(r)
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	r.Record(Session{Policy: HostPolicy{PolicyDomain: "lost.test"}}) // never flushed
	q.Close(context.Background())

	q, r = open()
	defer q.Close(context.Background())
	if _, ok := r.days[dayKey("2026-12-05", "lost.test")]; ok {
		t.Error("unflushed counts came back")
	}
	recordDay(r)
	d := r.days[dayKey("2026-12-05", "example.test")]
	if d == nil || d.Policies[0].Success != 6 || d.Policies[0].Failures[0].Count != 4 {
		t.Fatalf("counts after a restart: %+v", d)
	}
}

// rua is an HTTPS report destination: it records what is POSTed.
type rua struct {
	mu          sync.Mutex
	contentType string
	body        []byte
	posts       int
}

func (u *rua) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.posts++
	u.contentType = r.Header.Get("Content-Type")
	u.body, _ = io.ReadAll(r.Body)
	w.WriteHeader(http.StatusCreated)
}

type capturedMail struct {
	from string
	to   []string
	msg  []byte
}

type fakeMail struct {
	mu   sync.Mutex
	sent []capturedMail
}

func (f *fakeMail) SubmitReport(_ context.Context, from string, to []string, msg []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, capturedMail{from, to, msg})
	return nil
}

func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReportSend: once the day is over, the report goes to the https:
// destination as a POST and to the mailto: one as a message; a domain
// without a TLSRPT record gets none; a record that cannot be looked up
// keeps the counts for a later try.
func TestReportSend(t *testing.T) {
	const ip = "127.0.14.8"
	port := relaytest.FreePort(t, ip)
	dest := &rua{}
	l, err := tls.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), &tls.Config{Certificates: []tls.Certificate{testCA.Issue(t, "rua.example.test")}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: dest}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })

	d := relaytest.NewDNS(t, relaytest.Zone{
		"_smtp._tls.example.test": {TXT: []string{fmt.Sprintf("v=TLSRPTv1; rua=mailto:tlsrpt@example.test,https://rua.example.test:%d/v1/tlsrpt", port)}},
		"rua.example.test":        {A: []string{ip}},
		"_smtp._tls.flaky.test":   {Rcode: dns.RcodeServerFailure},
	})
	clock := &fakeClock{t: reportDay}
	mailer := &fakeMail{}
	store := newMemStore[DayCounts]()
	r, err := NewReporter(ReporterOptions{Store: store, Organization: "Example Org", Contact: "postmaster@postern.test",
		Submitter: "postern.test", From: "tlsrpt-noreply@postern.test", Mail: mailer, Resolver: d.Addr(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	recordDay(r)
	r.Record(Session{Policy: HostPolicy{PolicyDomain: "flaky.test"}, Failure: StartTLSNotSupported})
	r.Flush()

	r.SendDue(context.Background())
	if dest.posts != 0 || len(mailer.sent) != 0 {
		t.Fatal("a report was sent before its day ended")
	}
	clock.Advance(12 * time.Hour) // 01:00 the next day
	r.SendDue(context.Background())

	// https:
	if dest.posts != 1 || dest.contentType != "application/tlsrpt+gzip" {
		t.Fatalf("POSTs %d, Content-Type %q", dest.posts, dest.contentType)
	}
	js := gunzip(t, dest.body)
	checkReportSchema(t, js)
	if !strings.Contains(string(js), `"certificate-expired"`) {
		t.Errorf("posted report lacks the failures:\n%s", js)
	}

	// mailto:
	if len(mailer.sent) != 1 {
		t.Fatalf("%d reports mailed, want 1", len(mailer.sent))
	}
	m := mailer.sent[0]
	if m.from != "tlsrpt-noreply@postern.test" || len(m.to) != 1 || m.to[0] != "tlsrpt@example.test" {
		t.Errorf("mailed from %q to %q", m.from, m.to)
	}
	checkReportMail(t, m.msg, "example.test", "postern.test")

	// Sent: forgotten. other.test publishes nothing: forgotten unsent.
	// flaky.test could not be looked up: kept, and tried again an hour
	// later.
	keys, _ := store.List()
	if _, ok := keys[dayKey("2026-12-05", "example.test")]; ok {
		t.Error("sent counts still stored")
	}
	if _, ok := keys[dayKey("2026-12-05", "other.test")]; ok {
		t.Error("counts of a domain without TLSRPT still stored")
	}
	if _, ok := keys[dayKey("2026-12-05", "flaky.test")]; !ok {
		t.Error("counts of a domain whose record could not be looked up were dropped")
	}
	d.Set("_smtp._tls.flaky.test", relaytest.Records{TXT: []string{fmt.Sprintf("v=TLSRPTv1; rua=https://rua.example.test:%d/x", port)}})
	r.SendDue(context.Background())
	if dest.posts != 1 {
		t.Error("retried within the hour")
	}
	clock.Advance(time.Hour)
	r.SendDue(context.Background())
	if dest.posts != 2 {
		t.Errorf("%d POSTs, want the flaky domain's report an hour later", dest.posts)
	}
}

// checkReportMail checks a mailed report as RFC 8460 §5.3 describes it,
// and the report inside.
func checkReportMail(t *testing.T, raw []byte, domain, submitter string) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	if h.Get("TLS-Report-Domain") != domain || h.Get("TLS-Report-Submitter") != submitter {
		t.Errorf("TLS-Report-Domain %q, TLS-Report-Submitter %q", h.Get("TLS-Report-Domain"), h.Get("TLS-Report-Submitter"))
	}
	if !strings.HasPrefix(h.Get("Subject"), "Report Domain: "+domain+" Submitter: "+submitter+" Report-ID: <") {
		t.Errorf("Subject %q", h.Get("Subject"))
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", h.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var found bool
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
			continue
		}
		found = true
		_, dp, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
		if fn := dp["filename"]; !strings.HasPrefix(fn, submitter+"!"+domain+"!") || !strings.HasSuffix(fn, ".json.gz") {
			t.Errorf("attachment file name %q", fn)
		}
		b64, _ := io.ReadAll(p)
		gz, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(b64), "\r\n", ""))
		if err != nil {
			t.Fatalf("attachment is not base64: %v", err)
		}
		checkReportSchema(t, gunzip(t, gz))
	}
	if !found {
		t.Error("no application/tlsrpt+gzip part")
	}
}

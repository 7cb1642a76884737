package metrics

import (
	"bytes"
	"net/http/httptest"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"postern/auth"
	"postern/queue"
	"postern/queue/reply"
	"postern/relay/smtpd"
)

// Metrics is also what the SMTP listeners and the users store report to.
// The checks live in a test so that this package does not import
// relay/smtpd (and go-smtp) or auth for them.
var (
	_ smtpd.Observer = (*Metrics)(nil)
	_ auth.Observer  = (*Metrics)(nil)
)

// scrape fetches the exposition through Handler and parses it, as
// Prometheus would.
func scrape(t *testing.T, m *Metrics) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	h := m.Handler()
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/metrics", nil)
	r.Header.Set("Accept", "text/plain")
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("GET /metrics: %d %s", w.Code, w.Body)
	}
	body := w.Body.Bytes()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, body)
	}
	return fams, body
}

// value returns the value of the series of fam whose labels are exactly
// labels ("k=v,k=v", "" for none); ok is false if there is none.
func value(fams map[string]*dto.MetricFamily, fam, labels string) (v float64, ok bool) {
	f := fams[fam]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		if strings.Join(ls, ",") != labels {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetrics(t *testing.T) {
	m := NewMetrics()
	m.Delivered(3)
	m.Delivered(1)
	m.Deferred(2)
	m.Failed(1)
	m.Failed(-1) // ignored, not a panic
	m.Bounced()
	m.AttemptDuration(120 * time.Millisecond)
	m.AttemptDuration(3 * time.Second)
	m.Accepted("submission", 2048)
	m.Accepted("submission", 1000)
	m.Accepted("relay", 10)
	m.Reply(250)
	m.Reply(250)
	m.Reply(535)
	m.Reply(99) // not an SMTP code
	m.AuthFailure()
	m.CheckWaited()
	m.CheckWaited()
	m.CheckRefused()
	// No queued message left; an unknown state is reported as it is.
	m.WatchQueue(fakeDepth{queue.StateDeferred: 1, queue.StateHeld: 1, queue.StateFailed: 1})

	fams, body := scrape(t, m)
	checkSeries(t, fams, []series{
		{"postern_messages_delivered_total", "", 4},
		{"postern_messages_deferred_total", "", 2},
		{"postern_recipients_failed_total", "", 1},
		{"postern_messages_bounced_total", "", 1},
		{"postern_delivery_attempt_duration_seconds", "", 2},
		{"postern_messages_accepted_total", "listener=submission", 2},
		{"postern_messages_accepted_total", "listener=relay", 1},
		{"postern_messages_accepted_bytes_total", "listener=submission", 3048},
		{"postern_smtp_replies_total", "code=250", 2},
		{"postern_smtp_replies_total", "code=535", 1},
		{"postern_smtp_replies_total", "code=other", 1},
		{"postern_auth_failures_total", "", 1},
		{"postern_auth_checks_waited_total", "", 2},
		{"postern_auth_checks_refused_total", "", 1},
		{"postern_queue_depth", "state=queued", 0}, // present at zero
		{"postern_queue_depth", "state=deferred", 1},
		{"postern_queue_depth", "state=held", 1},
		{"postern_queue_depth", "state=failed", 1},
	})
	if fams["go_goroutines"] == nil {
		t.Error("go_goroutines missing: Go collector not registered")
	}
	// The process collector reads /proc, so it is empty elsewhere.
	if runtime.GOOS == "linux" && fams["process_start_time_seconds"] == nil {
		t.Error("process_start_time_seconds missing: process collector not registered")
	}

	lint(t, body)
}

// series is one expected series: its family, its labels ("k=v,k=v",
// sorted) and its value.
type series struct {
	fam, labels string
	want        float64
}

func checkSeries(t *testing.T, fams map[string]*dto.MetricFamily, want []series) {
	t.Helper()
	for _, tc := range want {
		got, ok := value(fams, tc.fam, tc.labels)
		if !ok {
			t.Errorf("%s{%s}: no such series", tc.fam, tc.labels)
		} else if got != tc.want {
			t.Errorf("%s{%s} = %v, want %v", tc.fam, tc.labels, got, tc.want)
		}
	}
}

// lint checks postern's metrics in an exposition against Prometheus'
// conventions for names, units and help texts (promlint).
func lint(t *testing.T, body []byte) {
	t.Helper()
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "postern_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestMetricsDepthBeforeWatch(t *testing.T) {
	fams, _ := scrape(t, NewMetrics())
	if fams["postern_queue_depth"] != nil {
		t.Error("postern_queue_depth has series before WatchQueue")
	}
}

// TestMetricsNil checks that a nil *Metrics records nothing and does not
// panic, so components can run without metrics.
func TestMetricsNil(t *testing.T) {
	var m *Metrics
	m.Delivered(1)
	m.Deferred(1)
	m.Failed(1)
	m.Bounced()
	m.AttemptDuration(time.Second)
	m.Accepted("relay", 1)
	m.Reply(250)
	m.AuthFailure()
	m.CheckWaited()
	m.CheckRefused()
	m.WatchQueue(fakeDepth{})
}

// TestMetricsIndependent checks that each Metrics has its own registry:
// two in one process (as in tests) neither conflict nor share counts.
func TestMetricsIndependent(t *testing.T) {
	a, b := NewMetrics(), NewMetrics()
	a.AuthFailure()
	fams, _ := scrape(t, b)
	if v, _ := value(fams, "postern_auth_failures_total", ""); v != 0 {
		t.Errorf("b counted a's failure: %v", v)
	}
}

// fakeDepth is a queue's Depth, fixed.
type fakeDepth map[queue.State]int

func (f fakeDepth) Depth() map[queue.State]int { return f }

// fakeDestinations is delivery's view of its destinations, fixed.
type fakeDestinations []queue.Destination

func (f fakeDestinations) Destinations() []queue.Destination { return f }

// TestDestinationMetrics: each destination's state is exposed at scrape
// time, labelled by name and kind, with promlint's blessing.
func TestDestinationMetrics(t *testing.T) {
	m := NewMetrics()
	if fams, _ := scrape(t, m); fams["postern_destination_state"] != nil {
		t.Error("destination series before WatchDestinations")
	}
	until := time.Date(2026, 12, 8, 11, 0, 0, 0, time.UTC)
	m.WatchDestinations(fakeDestinations{
		{Name: "google", Kind: "provider", State: "suspended", Until: until, Active: 2,
			Limits:    queue.DestinationLimits{Connections: 5, Rate: 0.5},
			LastReply: reply.Reply{Code: 421, Enhanced: reply.MustEnhanced("4.7.28"), Text: "slow down"},
			Delivered: 7, RateLimited: 3},
		{Name: "mx1.example.test", Kind: "destination", State: "dead", Until: until, ConnectionFailures: 2,
			LastReply: reply.Reply{Enhanced: reply.MustEnhanced("4.4.1"), Text: "connection refused"}},
		{Name: "mx.idle.test", Kind: "destination", State: "idle", Limits: queue.DestinationLimits{Connections: 20}},
	})
	fams, body := scrape(t, m)
	checkSeries(t, fams, []series{
		{"postern_destination_active_connections", "destination=google,kind=provider", 2},
		{"postern_destination_connection_limit", "destination=google,kind=provider", 5},
		{"postern_destination_rate_limit_per_second", "destination=google,kind=provider", 0.5},
		{"postern_destination_state", "destination=google,kind=provider,state=suspended", 1},
		{"postern_destination_until_timestamp_seconds", "destination=google,kind=provider", float64(until.Unix())},
		{"postern_destination_last_reply_info", "code=421,destination=google,enhanced_code=4.7.28,kind=provider", 1},
		{"postern_destination_delivered_total", "destination=google,kind=provider", 7},
		{"postern_destination_rate_limited_total", "destination=google,kind=provider", 3},
		{"postern_destination_state", "destination=mx1.example.test,kind=destination,state=dead", 1},
		{"postern_destination_last_reply_info", "code=,destination=mx1.example.test,enhanced_code=4.4.1,kind=destination", 1},
		{"postern_destination_connection_failures_total", "destination=mx1.example.test,kind=destination", 2},
		{"postern_destination_connection_limit", "destination=mx.idle.test,kind=destination", 20},
	})
	if _, ok := value(fams, "postern_destination_until_timestamp_seconds", "destination=mx.idle.test,kind=destination"); ok {
		t.Error("an idle destination has an until series")
	}
	lint(t, body)
	var nilM *Metrics
	nilM.WatchDestinations(fakeDestinations{}) // no panic
}

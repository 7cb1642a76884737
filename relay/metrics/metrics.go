package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"postern/queue"
)

// Metrics holds postern's Prometheus metrics in a registry of its own, so
// that nothing registered globally by a library leaks into /metrics and
// tests can make as many as they like.
//
// It implements queue.Observer for delivery outcomes; the SMTP side reports
// through Accepted, Reply and AuthFailure (smtpd.Observer), and the users
// store through CheckWaited and CheckRefused (auth.Observer). The methods are safe for
// concurrent use, and a nil *Metrics records nothing, so a component can be
// built without metrics.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	delivered     prometheus.Counter
	deferred      prometheus.Counter
	bounced       prometheus.Counter
	failed        prometheus.Counter
	attempt       prometheus.Histogram
	accepted      *prometheus.CounterVec
	acceptedBytes *prometheus.CounterVec
	replies       *prometheus.CounterVec
	authFailures  prometheus.Counter
	checksWaited  prometheus.Counter
	checksRefused prometheus.Counter
	sharedFalls   prometheus.Counter
	sharedUp      prometheus.Gauge
	depth         *depthCollector
	webhooks      *prometheus.CounterVec
	webhookQueue  *backlogCollector
	dests         *destinationCollector
}

// NewMetrics returns a Metrics with every metric registered, along with the
// Go runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		delivered: counter("postern_messages_delivered_total",
			"Recipients the remote server accepted."),
		deferred: counter("postern_messages_deferred_total",
			"Recipients whose delivery attempt failed temporarily."),
		bounced: counter("postern_messages_bounced_total",
			"Delivery status notifications queued (failures, delay warnings and success reports)."),
		failed: counter("postern_recipients_failed_total",
			"Recipients that failed permanently: rejected, expired or bounced by the administrator."),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "postern_delivery_attempt_duration_seconds",
			Help: "Time of one delivery attempt (one Deliverer call).",
			// From a warm loopback relay (milliseconds) to a remote that
			// makes us wait out every RFC 5321 §4.5.3.2 timeout.
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_messages_accepted_total",
			Help: "Messages accepted into the queue, by listener.",
		}, []string{"listener"}),
		acceptedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_messages_accepted_bytes_total",
			Help: "Bytes of the messages accepted into the queue, by listener.",
		}, []string{"listener"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_smtp_replies_total",
			Help: "SMTP replies sent to clients, by reply code.",
		}, []string{"code"}),
		authFailures: counter("postern_auth_failures_total",
			"Failed SMTP AUTH attempts."),
		checksWaited: counter("postern_auth_checks_waited_total",
			"AUTH attempts that found every password check slot taken and waited for one."),
		checksRefused: counter("postern_auth_checks_refused_total",
			"AUTH attempts that waited in vain for a password check slot and got 454 4.7.0."),
		sharedFalls: counter("postern_limits_redis_fallbacks_total",
			"Limit checks that could not reach limits.redis and used this node's own counters."),
		sharedUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_limits_redis_up",
			Help: "1 while limits.redis answers and the limits are shared; 0 when it is unset or unreachable (limits per node).",
		}),
		depth: &depthCollector{desc: prometheus.NewDesc(
			"postern_queue_depth",
			"Messages in the queue, by state, read at scrape time.",
			[]string{"state"}, nil)},
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_webhook_deliveries_total",
			Help: "Webhook delivery attempts, by endpoint and result (delivered, retried, given_up).",
		}, []string{"endpoint", "result"}),
		webhookQueue: &backlogCollector{desc: prometheus.NewDesc(
			"postern_webhook_pending",
			"Events waiting to be delivered to each webhook endpoint (failing ones included), read at scrape time.",
			[]string{"endpoint"}, nil)},
		dests: newDestinationCollector(),
	}
	m.reg.MustRegister(
		m.delivered, m.deferred, m.bounced, m.failed, m.attempt,
		m.accepted, m.acceptedBytes, m.replies, m.authFailures,
		m.checksWaited, m.checksRefused, m.sharedFalls, m.sharedUp, m.depth, m.webhooks, m.webhookQueue, m.dests,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// Also counts failed scrapes, in this registry.
		Registry: m.reg,
	})
	return m
}

// counter is a plain counter: most of postern's metrics are.
func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// Handler serves the metrics in the Prometheus exposition formats; the
// HTTP surface mounts it on /metrics.
func (m *Metrics) Handler() http.Handler { return m.handler }

// WatchQueue makes postern_queue_depth report q.Depth() at every scrape.
// Until it is called the metric has no series. A later call replaces q.
func (m *Metrics) WatchQueue(q Depther) {
	if m == nil {
		return
	}
	m.depth.q.Store(&q)
}

// Delivered counts n recipients delivered (queue.Observer). The metric
// names say "messages" but, as queue.Observer documents, the counts of
// Delivered, Deferred and Failed are recipients.
func (m *Metrics) Delivered(n int) {
	if m != nil {
		add(m.delivered, n)
	}
}

// Deferred counts n recipients deferred (queue.Observer).
func (m *Metrics) Deferred(n int) {
	if m != nil {
		add(m.deferred, n)
	}
}

// Failed counts n recipients that failed permanently (queue.Observer).
func (m *Metrics) Failed(n int) {
	if m != nil {
		add(m.failed, n)
	}
}

// Bounced counts one delivery status notification queued (queue.Observer).
func (m *Metrics) Bounced() {
	if m != nil {
		m.bounced.Inc()
	}
}

// AttemptDuration records how long one delivery attempt took
// (queue.Observer).
func (m *Metrics) AttemptDuration(d time.Duration) {
	if m != nil {
		m.attempt.Observe(d.Seconds())
	}
}

// Accepted counts one message of size bytes accepted on the named listener
// (submission, submissions, relay).
func (m *Metrics) Accepted(listener string, size int64) {
	if m == nil {
		return
	}
	m.accepted.WithLabelValues(listener).Inc()
	if size > 0 {
		m.acceptedBytes.WithLabelValues(listener).Add(float64(size))
	}
}

// Reply counts one SMTP reply with the given code. Codes outside 200-599
// (RFC 5321 §4.2.1 defines only 2yz to 5yz) are counted as "other", so a
// bug cannot grow the label set without bound.
func (m *Metrics) Reply(code int) {
	if m == nil {
		return
	}
	label := "other"
	if 200 <= code && code <= 599 {
		label = strconv.Itoa(code)
	}
	m.replies.WithLabelValues(label).Inc()
}

// AuthFailure counts one failed SMTP AUTH attempt.
func (m *Metrics) AuthFailure() {
	if m != nil {
		m.authFailures.Inc()
	}
}

// CheckWaited counts one AUTH attempt that waited for a password check
// slot (auth.Observer).
func (m *Metrics) CheckWaited() {
	if m != nil {
		m.checksWaited.Inc()
	}
}

// CheckRefused counts one AUTH attempt refused for want of a password
// check slot (auth.Observer).
func (m *Metrics) CheckRefused() {
	if m != nil {
		m.checksRefused.Inc()
	}
}

// add adds n to c; a counter cannot go down, so n < 1 is ignored rather
// than left to panic in the middle of a delivery.
// SharedFallback counts a limit check that limits.redis could not answer
// (limits.Observer).
func (m *Metrics) SharedFallback() {
	if m == nil {
		return
	}
	m.sharedFalls.Inc()
}

// SharedInUse shows whether limits.redis answers (limits.Observer).
func (m *Metrics) SharedInUse(up bool) {
	if m == nil {
		return
	}
	if up {
		m.sharedUp.Set(1)
	} else {
		m.sharedUp.Set(0)
	}
}

func add(c prometheus.Counter, n int) {
	if n > 0 {
		c.Add(float64(n))
	}
}

// Metrics is what the queue reports to.
var _ queue.Observer = (*Metrics)(nil)

// Depther reports how many messages wait in each state. It is all Metrics
// needs of the queue; *queue.Queue implements it.
type Depther interface {
	// Depth counts messages per state. It is called at every scrape, so it
	// must be cheap enough for that and must not block for long.
	Depth() map[queue.State]int
}

// depthCollector reads the queue depth at scrape time, so the gauge is never
// stale and nothing has to keep it up to date.
type depthCollector struct {
	desc *prometheus.Desc
	q    atomic.Pointer[Depther]
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.q.Load()
	if p == nil {
		return
	}
	depth := (*p).Depth()
	// The filterable states always have a series, so a state that
	// empties shows 0 rather than vanishing from graphs and alerts.
	for _, st := range queue.MessageStates() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(depth[st]), string(st))
	}
	for st, n := range depth {
		if !st.IsMessageState() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(st))
		}
	}
}

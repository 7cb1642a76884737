package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"postern/queue"
)

// WebhookResult counts one webhook delivery attempt's result
// (webhooks.Observer): delivered, retried or given_up. Endpoints come
// from the config, so the label set is bounded.
func (m *Metrics) WebhookResult(endpoint, result string) {
	if m != nil {
		m.webhooks.WithLabelValues(endpoint, result).Inc()
	}
}

// Backlogger reports what each webhook endpoint still has to deliver;
// *queue.Queue implements it.
type Backlogger interface {
	// EventBacklogs with limit 0 only counts (no event is read): it is
	// called at every scrape.
	EventBacklogs(limit int) ([]queue.EventBacklog, error)
}

// WatchWebhooks makes postern_webhook_pending report b's counts at every
// scrape, one series per configured endpoint.
func (m *Metrics) WatchWebhooks(b Backlogger) {
	if m == nil {
		return
	}
	m.webhookQueue.b.Store(&b)
}

type backlogCollector struct {
	desc *prometheus.Desc
	b    atomic.Pointer[Backlogger]
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.b.Load()
	if p == nil {
		return
	}
	bs, err := (*p).EventBacklogs(0)
	if err != nil {
		// A closed queue (shutting down): no series rather than a failed
		// scrape.
		return
	}
	for _, b := range bs {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(b.Pending), b.Subscriber)
	}
}

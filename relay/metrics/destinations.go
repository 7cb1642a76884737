package metrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"postern/queue"
)

// Destinations is what the metrics need of delivery to show how each
// destination is shaped: relay/outbound's MX deliverer and Router
// implement it (this package may not import delivery).
type Destinations interface {
	// Destinations describes every destination, provider and smarthost
	// list that has state now. It is called at every scrape.
	Destinations() []queue.Destination
}

// WatchDestinations makes the postern_destination_* metrics report
// d.Destinations() at every scrape. Until it is called they have no
// series. A later call replaces d.
func (m *Metrics) WatchDestinations(d Destinations) {
	if m == nil {
		return
	}
	m.dests.src.Store(&d)
}

// destinationCollector reads the destinations' state at scrape time. Every
// series is labelled with the destination's name and kind (destination,
// domain, provider, smarthost); the names are MX host names, provider
// names and smarthost names, never an address. Destinations without
// traffic are forgotten by delivery after a while, and so are their
// series.
type destinationCollector struct {
	src atomic.Pointer[Destinations]

	active, limit, rate, state, until, reply *prometheus.Desc
	delivered, rateLimited, connFailures     *prometheus.Desc
}

func newDestinationCollector() *destinationCollector {
	labels := []string{"destination", "kind"}
	desc := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc("postern_destination_"+name, help, append(labels, extra...), nil)
	}
	return &destinationCollector{
		active: desc("active_connections", "Delivery attempts in flight to the destination (each holds one connection)."),
		limit:  desc("connection_limit", "Attempts the destination may have at once now (1 while probing; 0: no limit of its own)."),
		rate:   desc("rate_limit_per_second", "Messages per second the destination may take now (0: no limit); below the configured rate while slowed down."),
		state: desc("state", "1 for the destination's state: idle, active, probing, slowed, suspended or dead.",
			"state"),
		until: desc("until_timestamp_seconds", "When the destination's suspension or dead time ends (Unix time)."),
		reply: desc("last_reply_info", "The reply that last changed the destination's state, by code and enhanced code.",
			"code", "enhanced_code"),
		delivered:    desc("delivered_total", "Deliveries the destination accepted since it was first seen."),
		rateLimited:  desc("rate_limited_total", "Rate-limit replies from the destination since it was first seen."),
		connFailures: desc("connection_failures_total", "Attempts whose every host failed to connect or greet."),
	}
}

func (c *destinationCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.limit, c.rate, c.state, c.until, c.reply,
		c.delivered, c.rateLimited, c.connFailures} {
		ch <- d
	}
}

func (c *destinationCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.src.Load()
	if p == nil {
		return
	}
	for _, d := range (*p).Destinations() {
		l := []string{d.Name, d.Kind}
		gauge := func(desc *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append(l, extra...)...)
		}
		count := func(desc *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), l...)
		}
		gauge(c.active, float64(d.Active))
		gauge(c.limit, float64(d.Limits.Connections))
		gauge(c.rate, d.Limits.Rate)
		gauge(c.state, 1, d.State)
		if !d.Until.IsZero() {
			gauge(c.until, float64(d.Until.Unix()))
		}
		if !d.LastReply.IsZero() {
			code := ""
			if d.LastReply.Code != 0 {
				code = strconv.Itoa(d.LastReply.Code)
			}
			gauge(c.reply, 1, code, d.LastReply.Enhanced.String())
		}
		count(c.delivered, d.Delivered)
		count(c.rateLimited, d.RateLimited)
		count(c.connFailures, d.ConnectionFailures)
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"

	"postern/configs"
	"postern/queue"
	"postern/relay/tlspolicy"
	// Named: the end-to-end tests have a func submit.
	pipeline "postern/relay/submit"
)

// The outbound TLS policy rooms, wired to the queue's state store and the
// submission pipeline: MX delivery consults the policies for every
// attempt and records every session with the reporter (serve hands both
// to the MX deliverer before the queue starts); the MTA-STS refresher and
// the reporter's daily send run beside it.

// newTLSPolicies makes the policies of delivery.mta_sts, delivery.dane and
// delivery.tls_policy, with MTA-STS policies cached in q's "mta-sts"
// namespace.
func newTLSPolicies(cfg *configs.Config, q queue.StateBackend, log *zap.Logger) (*tlspolicy.Policies, error) {
	store, err := queue.NewStateStore[tlspolicy.CachedSTS](q, "mta-sts")
	if err != nil {
		return nil, err
	}
	overrides := map[string]tlspolicy.Override{}
	for d, e := range cfg.Delivery.TLSPolicy {
		o, err := tlspolicy.ParseOverride(e.Mode)
		if err != nil {
			return nil, fmt.Errorf("delivery.tls_policy[%q]: %w", d, err)
		}
		overrides[strings.ToLower(d)] = o
	}
	def := tlspolicy.Opportunistic
	if cfg.Delivery.TLS == "required" {
		def = tlspolicy.WebPKI
	}
	if cfg.Delivery.DANE && !cfg.DANEResolver() {
		log.Info("DANE is off: delivery.resolver is not a validating resolver on loopback", zap.String("resolver", cfg.Delivery.Resolver))
	}
	return tlspolicy.New(tlspolicy.Options{
		Resolver:  cfg.Delivery.Resolver,
		TrustAD:   cfg.DANEResolver(),
		Port:      cfg.Delivery.Port,
		MTASTS:    cfg.Delivery.MTASTS,
		STSStore:  store,
		Overrides: overrides,
		Default:   def,
		Logger:    slogOf(log),
	})
}

// newTLSReporter makes the TLS reporter of delivery.tls_reports, counting
// in q's "tlsrpt" namespace and mailing reports through p. It returns nil
// when reports are off, or when hostname is not a domain a report could
// come from.
func newTLSReporter(cfg *configs.Config, q queue.StateBackend, p *pipeline.Pipeline, log *zap.Logger) (*tlspolicy.Reporter, error) {
	if !cfg.Delivery.TLSReports.Enabled {
		return nil, nil
	}
	if !strings.Contains(cfg.Hostname, ".") {
		log.Info("TLS reports are off: hostname is not a fully qualified domain name", zap.String("hostname", cfg.Hostname))
		return nil, nil
	}
	store, err := queue.NewStateStore[tlspolicy.DayCounts](q, "tlsrpt")
	if err != nil {
		return nil, err
	}
	return tlspolicy.NewReporter(tlspolicy.ReporterOptions{
		Store:        store,
		Organization: cfg.TLSReportOrganization(),
		Contact:      cfg.TLSReportContact(),
		Submitter:    cfg.Hostname,
		From:         cfg.TLSReportContact(),
		Mail:         reportSubmitter{p},
		Resolver:     cfg.Delivery.Resolver,
		Logger:       slogOf(log),
	})
}

// reportSubmitter queues mailed TLS reports through the submission
// pipeline, as a local program's message: same header rules, Received
// field and DKIM signature as any mail postern sends.
type reportSubmitter struct{ p *pipeline.Pipeline }

var _ tlspolicy.Submitter = reportSubmitter{}

func (r reportSubmitter) SubmitReport(ctx context.Context, from string, to []string, msg []byte) error {
	env := &queue.Envelope{From: from, Rcpts: to, Listener: "tls-reports"}
	o := &pipeline.Origin{UID: os.Getuid(), UserName: "postern tls-reports"}
	_, _, err := r.p.Submit(ctx, env, o, bufio.NewReader(bytes.NewReader(msg)))
	return err
}

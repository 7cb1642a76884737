package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"go.uber.org/zap"

	"postern/configs"
	"postern/queue"
	"postern/queue/reply"
	"postern/relay/capture"
	"postern/relay/outbound"
)

// newDeliverer translates the delivery section of the config into the
// queue's Deliverer: a capture Maildir in capture mode, otherwise a router
// over MX delivery and the configured smarthosts, and that MX deliverer
// (nil in capture mode), which serve gives the TLS policies once the queue
// they keep their state in is open. Smarthost passwords are read here,
// once: an unreadable password file or an unset variable stops serve with
// the key's name. shared, when not nil, is limits.redis: MX delivery shapes
// its destinations with the other nodes through it.
func newDeliverer(cfg *configs.Config, log *zap.Logger, shared outbound.SharedShaping) (queue.Deliverer, *outbound.MX, error) {
	dc := cfg.Delivery
	if dc.Mode == "capture" {
		m, err := capture.New(cfg.CaptureDir(), capture.Options{Hostname: cfg.Hostname, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("delivery.mode capture: %w", err)
		}
		log.Warn("delivery.mode is capture: messages are kept in a Maildir and never sent", zap.String("dir", m.Dir()))
		return m, nil, nil
	}

	tlsMode, err := outbound.ParseTLSMode(dc.TLS)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery.tls: %w", err)
	}
	shaping, err := shapingOf(dc.Shaping)
	if err != nil {
		return nil, nil, err
	}
	shaping.Shared = shared
	opts := outbound.Options{
		Hostname:       cfg.Hostname,
		Resolver:       dc.Resolver,
		Port:           dc.Port,
		TLS:            tlsMode,
		Logger:         log,
		Local:          listenAddrs(cfg),
		DialTimeout:    dc.Timeouts.Connect.D(),
		CommandTimeout: dc.Timeouts.Command.D(),
		DataTimeout:    dc.Timeouts.Data.D(),
		AttemptTimeout: dc.Timeouts.Attempt.D(),
		Shaping:        shaping,
	}
	mx := outbound.New(opts)

	hosts := map[string]*outbound.Smarthost{}
	var errs []error
	for i, sh := range dc.Smarthosts {
		key := fmt.Sprintf("delivery.smarthosts[%d]", i)
		t, err := outbound.ParseSmarthostTLS(sh.TLS)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.tls: %w", key, err))
			continue
		}
		h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
			Name:               sh.Name,
			Address:            sh.Address,
			TLS:                t,
			InsecureSkipVerify: sh.VerifyCertificate != nil && !*sh.VerifyCertificate,
			Username:           sh.Username,
			PasswordFile:       sh.PasswordFile,
			PasswordEnv:        sh.PasswordEnv,
		}, opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			continue
		}
		hosts[sh.Name] = h
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	// The config loader has checked every name; an unknown one here is
	// still an error, never a nil smarthost.
	path := func(key string, names configs.NameList) outbound.Path {
		if len(names) == 1 && names[0] == "mx" {
			return outbound.Path{MX: mx}
		}
		var f outbound.Failover
		for _, n := range names {
			h := hosts[n]
			if h == nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a smarthost name", key, n))
				continue
			}
			f = append(f, h)
		}
		return outbound.Path{Smarthosts: f}
	}
	var routes []outbound.Route
	for i, r := range dc.Routes {
		key := fmt.Sprintf("delivery.routes[%d]", i)
		rt := outbound.Route{
			Name:             fmt.Sprintf("routes[%d]", i),
			RecipientDomains: r.RecipientDomains,
			SenderDomains:    r.SenderDomains,
			Via:              path(key+".via", r.Via),
			FallbackAfter:    r.FallbackAfter,
		}
		if len(r.Fallback) > 0 {
			rt.Fallback = path(key+".fallback", r.Fallback)
		}
		routes = append(routes, rt)
	}
	def := path("delivery.default_route", dc.DefaultRoute)
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	router, err := outbound.NewRouter(routes, def)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: %w", err)
	}
	for _, rt := range routes {
		fields := []zap.Field{zap.String("route", rt.Name), zap.Strings("recipient_domains", rt.RecipientDomains),
			zap.Strings("sender_domains", rt.SenderDomains), zap.Stringer("via", rt.Via)}
		if rt.FallbackAfter > 0 {
			fields = append(fields, zap.Int("fallback_after", rt.FallbackAfter), zap.Stringer("fallback", rt.Fallback))
		}
		log.Info("route", fields...)
	}
	log.Info("route", zap.String("route", outbound.DefaultRouteName), zap.Stringer("via", def))
	return router, mx, nil
}

// shapingOf translates delivery.shaping. The loader has checked every
// value; an error here is still reported with its key, never ignored.
func shapingOf(sc configs.ShapingConfig) (outbound.Shaping, error) {
	var errs []error
	rate := func(key string, r configs.Rate) outbound.Rate {
		n, per, err := r.Parse()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
		return outbound.Rate{Messages: n, Per: per}
	}
	s := outbound.Shaping{Default: outbound.Limits{
		Connections:           sc.Default.Connections,
		MessagesPerConnection: sc.Default.MessagesPerConnection,
		Rate:                  rate("delivery.shaping.default.rate", sc.Default.Rate),
	}, DeadFor: sc.DeadFor.D(), DeadForMax: sc.DeadForMax.D()}
	for i, p := range sc.Providers {
		s.Providers = append(s.Providers, outbound.Provider{Name: p.Name, MXSuffixes: p.MXSuffixes, Limits: outbound.Limits{
			Connections:           p.Connections,
			MessagesPerConnection: p.MessagesPerConnection,
			Rate:                  rate(fmt.Sprintf("delivery.shaping.providers[%d].rate", i), p.Rate),
		}})
	}
	for i, p := range sc.RateLimitPatterns {
		key := fmt.Sprintf("delivery.shaping.rate_limit_patterns[%d]", i)
		enh, err := reply.ParseEnhanced(p.EnhancedCode)
		if p.EnhancedCode != "" && err != nil {
			errs = append(errs, fmt.Errorf("%s.enhanced_code: %w", key, err))
		}
		re, err := p.TextRE()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.text: %w", key, err))
		}
		s.RateLimitPatterns = append(s.RateLimitPatterns,
			outbound.RateLimitPattern{Code: p.Code, Enhanced: enh, Text: re, Suspend: p.Suspend.D()})
	}
	return s, errors.Join(errs...)
}

// listenAddrs are the addresses of postern's own SMTP listeners, so that
// delivery never dials itself (outbound.Options.Local). A listener given
// by host name is resolved now.
func listenAddrs(cfg *configs.Config) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range []string{cfg.Listen.Submission, cfg.Listen.Submissions, cfg.Listen.Relay} {
		if a == "" {
			continue
		}
		if ap, err := netip.ParseAddrPort(a); err == nil {
			out = append(out, ap)
			continue
		}
		if ta, err := net.ResolveTCPAddr("tcp", a); err == nil {
			out = append(out, ta.AddrPort())
		}
	}
	return out
}

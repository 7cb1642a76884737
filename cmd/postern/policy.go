package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"

	"go.uber.org/zap"

	"postern/auth"
	"postern/configs"
	"postern/relay/limits"
	"postern/relay/metrics"
	"postern/relay/outbound"
	"postern/relay/smtpd"
)

// newRelayPolicy is the anti-abuse policy of cfg; serve gives the same one
// to every listener.
func newRelayPolicy(cfg *configs.Config) *smtpd.Policy {
	l := cfg.Limits
	p := &smtpd.Policy{
		RelaySenderDomains:    cfg.Relay.AllowedSenderDomains,
		RelayRecipientDomains: cfg.Relay.AllowedRecipientDomains,
		FixHeaders:            true,
		MaxReceived:           50,
		ForbidBareNewline:     cfg.SMTP.ForbidBareNewline,
		BareNewlineExclusions: cfg.BareNewlineExclusions(),
		UserMessages:          smtpd.Rate{N: l.UserMessagesPerHour, Per: time.Hour},
		UserRecipients:        smtpd.Rate{N: l.UserRecipientsPerDay, Per: 24 * time.Hour},
		IPConnections:         l.IPMaxConnections,
		IPConnectionRate:      smtpd.Rate{N: l.IPConnectionsPerMinute, Per: time.Minute},
		LimitExempt:           cfg.TrustedPrefixes(),
		MaxConnections:        l.MaxConnections,
		ProxyFrom:             cfg.ProxyProtocolFrom(),
	}
	for _, name := range cfg.SMTP.CheckHeaderFrom {
		switch name {
		case "submission":
			p.CheckHeaderFrom = append(p.CheckHeaderFrom, smtpd.Submission)
		case "submissions":
			p.CheckHeaderFrom = append(p.CheckHeaderFrom, smtpd.Submissions)
		}
	}
	if l.AuthMaxFailures > 0 {
		p.AuthThrottle = &auth.Throttle{
			MaxFailures: l.AuthMaxFailures,
			Window:      l.AuthFailureWindow.D(),
			Cooldown:    l.AuthCooldown.D(),
		}
	}
	return p
}

var _ limits.Observer = (*metrics.Metrics)(nil)

// relay/limits implements what delivery shapes through with the other
// nodes.
var _ outbound.SharedShaping = (*limits.Redis)(nil)

// checkRedisPassword reads limits.redis.password_file as serve will, for
// `postern config check`.
func checkRedisPassword(cfg *configs.Config) []string {
	if r := cfg.Limits.Redis; r != nil && r.PasswordFile != "" {
		if _, err := outbound.ReadPasswordFile(r.PasswordFile); err != nil {
			return []string{fmt.Sprintf("%s: limits.redis.password_file: %v", cfg.File, err)}
		}
	}
	return nil
}

// openShared connects to limits.redis, when it is set (s.shared stays nil
// otherwise). Redis need not be reachable: until it is, and whenever it is
// not, every node counts alone (relay/limits logs and counts it). Only a
// password file that cannot be read stops the start, as for smarthosts.
func (s *server) openShared() error {
	r := s.cfg.Limits.Redis
	if r == nil {
		return nil
	}
	opts, err := redisOptions(r)
	if err != nil {
		return err
	}
	opts.Logger, opts.Observer = s.log, s.metrics
	s.shared = limits.Open(opts)
	s.log.Info("limits shared through Redis", zap.String("address", r.Address), zap.Bool("tls", r.TLS))
	return nil
}

// shareLimits makes p's rate limits, its AUTH throttle and the users'
// cache invalidation go through the shared store, when there is one.
func (s *server) shareLimits(p *smtpd.Policy) {
	if s.shared == nil {
		return
	}
	p.Shared = s.shared
	if p.AuthThrottle != nil {
		p.AuthThrottle.Shared = s.shared
	}
	if s.users != nil {
		s.users.Peers = s.shared
		s.shared.WatchUsersChanged(s.users.Invalidate)
	}
}

// sharedShaping is the store delivery shapes through: nil without
// limits.redis (a nil *limits.Redis in the interface would be a store
// that is set, and fails).
func (s *server) sharedShaping() outbound.SharedShaping {
	if s.shared == nil {
		return nil
	}
	return s.shared
}

// redisOptions are the shared store's options from limits.redis, with the
// password read from its file.
func redisOptions(r *configs.LimitsRedis) (limits.Options, error) {
	opts := limits.Options{Addr: r.Address, Prefix: r.Prefix}
	if r.PasswordFile != "" {
		pw, err := outbound.ReadPasswordFile(r.PasswordFile)
		if err != nil {
			return opts, fmt.Errorf("limits.redis.password_file: %w", err)
		}
		opts.Password = pw
	}
	if r.TLS {
		host, _, _ := net.SplitHostPort(r.Address)
		opts.TLS = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return opts, nil
}

// tellNodesUsersChanged is for the user commands that change or remove a
// password: with limits.redis, it tells every node at once, so that none
// keeps accepting the old password from its cache (the node whose file
// this is would notice only at its next AUTH, and nodes with files of their
// own, synced later, would not notice at all). The change is made already:
// failing to tell is a warning, and the caches then end with
// auth.cache_ttl.
func tellNodesUsersChanged(cfg *configs.Config, stderr io.Writer) {
	r := cfg.Limits.Redis
	if r == nil {
		return
	}
	opts, err := redisOptions(r)
	if err == nil {
		// A command, not an SMTP reply, waits: it may take longer.
		opts.Timeout = 2 * time.Second
		shared := limits.Open(opts)
		err = shared.PublishUsersChanged(context.Background())
		shared.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "warning: could not tell the other nodes through limits.redis (%s): %v; they may accept the old password from their caches until auth.cache_ttl ends\n", r.Address, err)
	}
}

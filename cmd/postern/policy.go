package main

import (
	"sync"
	"time"

	"postern/auth"
	"postern/configs"
	"postern/relay"
)

// policies holds the one relay.Policy of each configuration: every
// listener of a server must get the same Policy, because its counters (the
// connection cap, per-client and per-user limits, the AUTH throttle) are
// counted across listeners.
var policies sync.Map // *configs.Config -> *relay.Policy

// relayPolicy returns the anti-abuse policy of cfg, the same pointer on
// every call with the same cfg.
func relayPolicy(cfg *configs.Config) *relay.Policy {
	if p, ok := policies.Load(cfg); ok {
		return p.(*relay.Policy)
	}
	p, _ := policies.LoadOrStore(cfg, newRelayPolicy(cfg))
	return p.(*relay.Policy)
}

func newRelayPolicy(cfg *configs.Config) *relay.Policy {
	l := cfg.Limits
	p := &relay.Policy{
		RelaySenderDomains:    cfg.Relay.AllowedSenderDomains,
		RelayRecipientDomains: cfg.Relay.AllowedRecipientDomains,
		FixHeaders:            true,
		MaxReceived:           50,
		ForbidBareNewline:     cfg.SMTP.ForbidBareNewline,
		BareNewlineExclusions: cfg.BareNewlineExclusions(),
		UserMessages:          relay.Rate{N: l.UserMessagesPerHour, Per: time.Hour},
		UserRecipients:        relay.Rate{N: l.UserRecipientsPerDay, Per: 24 * time.Hour},
		IPConnections:         l.IPMaxConnections,
		IPConnectionRate:      relay.Rate{N: l.IPConnectionsPerMinute, Per: time.Minute},
		LimitExempt:           cfg.TrustedPrefixes(),
		MaxConnections:        l.MaxConnections,
		ProxyFrom:             cfg.ProxyProtocolFrom(),
	}
	for _, name := range cfg.SMTP.CheckHeaderFrom {
		switch name {
		case "submission":
			p.CheckHeaderFrom = append(p.CheckHeaderFrom, relay.Submission)
		case "submissions":
			p.CheckHeaderFrom = append(p.CheckHeaderFrom, relay.Submissions)
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

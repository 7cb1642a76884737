package main

import (
	"time"

	"postern/auth"
	"postern/configs"
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

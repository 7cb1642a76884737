package configs

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"postern/queue/reply"
)

// DeliveryTimeouts bound delivery attempts (relay/outbound's Options).
type DeliveryTimeouts struct {
	// Connect bounds a TCP connect to one address.
	Connect Duration `yaml:"connect"`
	// Command bounds the wait for each reply, the greeting included
	// (RFC 5321 §4.5.3.2: 5 minutes).
	Command Duration `yaml:"command"`
	// Data bounds sending a message and, apart, the reply to its end.
	Data Duration `yaml:"data"`
	// Attempt bounds a whole attempt: lookups, every address tried, the
	// transaction.
	Attempt Duration `yaml:"attempt"`
}

// ShapingConfig is how much mail each destination gets, and what a reply
// that says "slow down" looks like (relay/outbound's Shaping).
type ShapingConfig struct {
	// Default holds for every destination (the MX host set of a domain).
	Default ShapingLimits `yaml:"default"`
	// Providers group destinations by MX host suffix; their connections
	// and rate hold across the group. Giving the key replaces the whole
	// built-in list (`postern config default` prints it).
	Providers []ShapingProvider `yaml:"providers"`
	// RateLimitPatterns recognize rate-limit replies; the first that
	// matches decides. Giving the key replaces the built-in list.
	RateLimitPatterns []RateLimitPattern `yaml:"rate_limit_patterns"`
	// DeadFor is how long a destination whose hosts all fail to connect
	// or greet is left alone before one probe; it doubles while probes
	// fail, up to DeadForMax.
	DeadFor    Duration `yaml:"dead_for"`
	DeadForMax Duration `yaml:"dead_for_max"`
}

// ShapingLimits are the limits of a destination.
type ShapingLimits struct {
	Connections           int  `yaml:"connections"`             // attempts at once
	MessagesPerConnection int  `yaml:"messages_per_connection"` // 0: no limit
	Rate                  Rate `yaml:"rate"`                    // "unlimited", "100/s", "10/10s"
}

// ShapingProvider is a group of destinations known by MX host suffix.
type ShapingProvider struct {
	Name       string   `yaml:"name"`
	MXSuffixes []string `yaml:"mx_suffixes"`
	// Connections and Rate hold across the provider's destinations (0,
	// unlimited: none of its own); MessagesPerConnection, when not 0,
	// replaces the default's for them.
	Connections           int  `yaml:"connections"`
	MessagesPerConnection int  `yaml:"messages_per_connection"`
	Rate                  Rate `yaml:"rate"`
}

// RateLimitPattern recognizes a temporary (4xx) reply that says "slow
// down". Every field given must match.
type RateLimitPattern struct {
	Code         int    `yaml:"code"`          // 421; 0 is any 4xx
	EnhancedCode string `yaml:"enhanced_code"` // "4.7.28"; "" is any
	Text         string `yaml:"text"`          // a regular expression (RE2), case ignored; "" is any
	// Suspend, when set, suspends the destination or provider this long
	// instead of halving its rate and suspending it briefly.
	Suspend Duration `yaml:"suspend"`
}

// TextRE compiles Text as the loader checked it: case ignored. nil for "".
func (p RateLimitPattern) TextRE() (*regexp.Regexp, error) {
	if p.Text == "" {
		return nil, nil
	}
	if _, err := regexp.Compile(p.Text); err != nil {
		return nil, err // in the words the user wrote
	}
	return regexp.Compile("(?i)" + p.Text)
}

// Rate is a number of messages per period, written "N/UNIT" (s, min, h)
// or "N/DURATION" ("10/10s"); "unlimited" (or "") is no limit.
type Rate string

// Parse returns the messages and the period; 0, 0 for no limit.
func (r Rate) Parse() (int, time.Duration, error) {
	s := strings.TrimSpace(string(r))
	if s == "" || s == "unlimited" {
		return 0, 0, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if !ok || err != nil || n < 1 {
		return 0, 0, fmt.Errorf("%q is not a rate (N/s, N/min, N/h or N/DURATION such as 10/10s; or unlimited)", s)
	}
	unit = strings.TrimSpace(unit)
	var per time.Duration
	switch unit {
	case "s":
		per = time.Second
	case "min":
		per = time.Minute
	case "h":
		per = time.Hour
	default:
		per, err = time.ParseDuration(unit)
		if err != nil || per <= 0 {
			return 0, 0, fmt.Errorf("%q is not a rate: the period %q is not s, min, h or a duration such as 10s", s, unit)
		}
	}
	return n, per, nil
}

// validShapingName: a provider's name appears in logs, metrics and the
// destinations table.
var validShapingName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validateShaping checks delivery.timeouts and delivery.shaping.
func (c *Config) validateShaping(bad func(key, format string, args ...any)) {
	for _, t := range []struct {
		key string
		d   Duration
	}{
		{"delivery.timeouts.connect", c.Delivery.Timeouts.Connect},
		{"delivery.timeouts.command", c.Delivery.Timeouts.Command},
		{"delivery.timeouts.data", c.Delivery.Timeouts.Data},
		{"delivery.timeouts.attempt", c.Delivery.Timeouts.Attempt},
	} {
		if t.d <= 0 {
			bad(t.key, "must be positive (for example %s)", map[string]string{
				"delivery.timeouts.connect": "20s", "delivery.timeouts.command": "5m",
				"delivery.timeouts.data": "10m", "delivery.timeouts.attempt": "30m"}[t.key])
		}
	}

	sh := c.Delivery.Shaping
	if sh.DeadFor <= 0 {
		bad("delivery.shaping.dead_for", "must be positive (for example 1m)")
	}
	if sh.DeadForMax < sh.DeadFor {
		bad("delivery.shaping.dead_for_max", "%s is less than dead_for (%s)", sh.DeadForMax, sh.DeadFor)
	}
	d := sh.Default
	if d.Connections < 1 || d.Connections > 1000 {
		bad("delivery.shaping.default.connections", "%d is not from 1 to 1000", d.Connections)
	}
	if d.MessagesPerConnection < 0 {
		bad("delivery.shaping.default.messages_per_connection", "must not be negative (0 means no limit)")
	}
	if _, _, err := d.Rate.Parse(); err != nil {
		bad("delivery.shaping.default.rate", "%v", err)
	}

	names := map[string]int{}
	suffixes := map[string]string{}
	for i, p := range sh.Providers {
		key := fmt.Sprintf("delivery.shaping.providers[%d]", i)
		switch j, dup := names[p.Name]; {
		case !validShapingName.MatchString(p.Name):
			bad(key+".name", "%q is not a name (lower-case letters, digits, '.', '_' and '-')", p.Name)
		case dup:
			bad(key+".name", "%q is also delivery.shaping.providers[%d]", p.Name, j)
		}
		names[p.Name] = i
		if len(p.MXSuffixes) == 0 {
			bad(key+".mx_suffixes", "must list at least one MX host suffix, such as .google.com")
		}
		for j, s := range p.MXSuffixes {
			k := fmt.Sprintf("%s.mx_suffixes[%d]", key, j)
			ls := strings.ToLower(s)
			switch other, dup := suffixes[ls]; {
			case !strings.HasPrefix(s, ".") || !validHostname(s[1:]):
				bad(k, "%q is not a host name suffix with its leading dot, such as .google.com", s)
			case dup:
				bad(k, "%q is also a suffix of provider %q", s, other)
			}
			suffixes[ls] = p.Name
		}
		if p.Connections < 0 {
			bad(key+".connections", "must not be negative (0 means no limit of the provider's own)")
		}
		if p.MessagesPerConnection < 0 {
			bad(key+".messages_per_connection", "must not be negative (0 means the default's)")
		}
		if _, _, err := p.Rate.Parse(); err != nil {
			bad(key+".rate", "%v", err)
		}
	}

	for i, p := range sh.RateLimitPatterns {
		key := fmt.Sprintf("delivery.shaping.rate_limit_patterns[%d]", i)
		if p.Code == 0 && p.EnhancedCode == "" && p.Text == "" {
			bad(key, "matches every 4xx: give a code, an enhanced_code or a text")
		}
		if p.Code != 0 && (p.Code < 400 || p.Code > 499) {
			bad(key+".code", "%d is not a 4xx reply code (only temporary replies say \"slow down\")", p.Code)
		}
		if p.EnhancedCode != "" {
			if e, err := reply.ParseEnhanced(p.EnhancedCode); err != nil || e.Class != 4 {
				bad(key+".enhanced_code", "%q is not an enhanced status code of class 4, such as 4.7.28", p.EnhancedCode)
			}
		}
		if _, err := p.TextRE(); err != nil {
			bad(key+".text", "%q is not a regular expression: %v", p.Text, err)
		}
		if p.Suspend < 0 {
			bad(key+".suspend", "must not be negative (0 halves the rate and suspends briefly)")
		}
	}
}

package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Webhook is one endpoint that delivery events are posted to
// (relay/webhooks).
type Webhook struct {
	// Name keys the endpoint's pending deliveries in the queue: renaming
	// an endpoint (or changing the URL of one without a name) drops what
	// still waited for it. "" means DefaultWebhookName(URL).
	Name string `yaml:"name"`
	// URL is https, or http to a loopback host only (the body is mail
	// metadata, and the signature does not hide it).
	URL string `yaml:"url"`
	// SecretFile holds the signing secret, "whsec_" + base64 of 24 to 64
	// random bytes (the Standard Webhooks form).
	SecretFile string `yaml:"secret_file"`
	// Events are the event types posted; empty: all of them.
	Events []string `yaml:"events"`
	// Users limits the events to those of messages these users
	// submitted; empty: every message.
	Users []string `yaml:"users"`
	// RetryFor is how long after an event its delivery is retried
	// before it is given up (logged and counted).
	RetryFor Duration `yaml:"retry_for"`
}

// DefaultWebhookRetryFor is webhooks[].retry_for unless set.
const DefaultWebhookRetryFor = Duration(72 * time.Hour)

// WebhookEvents are the event types webhooks[].events may name: the
// queue's (queue.EventTypes; a test in cmd/postern keeps the two lists
// equal, since this package may not import the queue).
var WebhookEvents = []string{
	"message.accepted", "message.delivered", "message.deferred", "message.delayed",
	"message.bounced", "message.suppressed", "message.complained",
}

var webhookNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// DefaultWebhookName is the name of an endpoint configured without one:
// its URL's host and a hash of the whole URL, stable as long as the URL
// is.
func DefaultWebhookName(rawURL string) string {
	sum := sha256.Sum256([]byte(rawURL))
	host := "webhook"
	if u, err := url.Parse(rawURL); err == nil && u.Hostname() != "" {
		host = strings.Map(func(r rune) rune {
			if r < 128 && (r == '.' || r == '-' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
				return r
			}
			return '-'
		}, u.Hostname())
		host = strings.Trim(host, ".-")
		if len(host) > 40 {
			host = host[:40]
		}
	}
	return host + "-" + hex.EncodeToString(sum[:4])
}

// validateWebhooks checks webhooks; the secret files are read by config
// check and serve (relay/webhooks parses them).
func (c *Config) validateWebhooks(bad func(key, format string, args ...any)) {
	names := map[string]int{}
	for i, w := range c.Webhooks {
		key := fmt.Sprintf("webhooks[%d]", i)
		if !webhookNameRE.MatchString(w.Name) {
			bad(key+".name", "%q is not a name: up to 64 letters, digits, '.', '_' and '-', starting with a letter or digit", w.Name)
		} else if j, dup := names[w.Name]; dup {
			bad(key+".name", "%q is also webhooks[%d]'s name (an endpoint without a name is named after its URL: give each a name of its own)", w.Name, j)
		} else {
			names[w.Name] = i
		}
		if msg := checkWebhookURL(w.URL); msg != "" {
			bad(key+".url", "%s", msg)
		}
		if w.SecretFile == "" {
			bad(key+".secret_file", "must name the file that holds the signing secret (whsec_ and the base64 of 24 to 64 random bytes)")
		}
		for j, e := range w.Events {
			if !slices.Contains(WebhookEvents, e) {
				bad(fmt.Sprintf("%s.events[%d]", key, j), "%q is not an event: want one of %s (empty: all)", e, strings.Join(WebhookEvents, ", "))
			}
		}
		for j, u := range w.Users {
			if strings.TrimSpace(u) == "" {
				bad(fmt.Sprintf("%s.users[%d]", key, j), "must not be empty")
			}
		}
		if w.RetryFor <= 0 {
			bad(key+".retry_for", "must be positive (for example 72h)")
		}
	}
}

// checkWebhookURL says what is wrong with an endpoint's URL, or "".
func checkWebhookURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Sprintf("%q is not an absolute URL (for example https://hooks.example.com/postern)", s)
	}
	if u.User != nil {
		// The effective configuration is logged at start.
		return fmt.Sprintf("%q carries a user name or password: the endpoint authenticates postern by the signature, and URLs end up in logs", s)
	}
	if u.Fragment != "" {
		return fmt.Sprintf("%q has a fragment (#...), which is never sent", s)
	}
	switch u.Scheme {
	case "https":
	case "http":
		host := u.Hostname()
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Sprintf("%q is plain http to a host that is not loopback: use https (events name senders and recipients)", s)
		}
	default:
		return fmt.Sprintf("%q: the scheme must be https (or http to a loopback host)", s)
	}
	return ""
}

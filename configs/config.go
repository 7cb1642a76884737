// Package configs is postern's configuration: the schema, its defaults, a
// strict loader and the example files.
//
// Loading follows three rules (STYLE habit 11):
//   - defaults first: every key has a value before the file is read, so a
//     file only says what differs;
//   - strict decode: an unknown key is an error, with the nearest known key
//     as a hint, because a misspelt key silently ignored is a misconfigured
//     mail server;
//   - every problem at once: Load returns all errors, each naming the file,
//     the line and the key, so one run of `postern config check` shows
//     everything that is wrong.
package configs

import (
	_ "embed"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// Builtin is the name that selects the embedded default configuration
// instead of a file (`postern serve --config builtin`).
const Builtin = "builtin"

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration file.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Config is the whole configuration. The YAML keys are the field tags.
type Config struct {
	Hostname string         `yaml:"hostname"`
	DataDir  string         `yaml:"data_dir"`
	Log      LogConfig      `yaml:"log"`
	Listen   ListenConfig   `yaml:"listen"`
	TLS      TLSConfig      `yaml:"tls"`
	Auth     AuthConfig     `yaml:"auth"`
	Relay    RelayConfig    `yaml:"relay"`
	Limits   LimitsConfig   `yaml:"limits"`
	Delivery DeliveryConfig `yaml:"delivery"`
	Timeouts TimeoutsConfig `yaml:"timeouts"`
	SMTP     SMTPConfig     `yaml:"smtp"`
	// ListenProxyProtocolFrom lists the networks (load balancers) that may
	// send a PROXY protocol v1/v2 header on the SMTP listeners; their
	// connections must, others must not. Empty: PROXY protocol off.
	ListenProxyProtocolFrom []string    `yaml:"listen_proxy_protocol_from"`
	DKIM                    DKIMConfig  `yaml:"dkim"`
	Admin                   AdminConfig `yaml:"admin"`
	// Suppression is the list of addresses a user's mail is no longer
	// sent to (queue/suppress.go).
	Suppression     SuppressionConfig `yaml:"suppression"`
	Bounces         BouncesConfig     `yaml:"bounces"`
	API             APIConfig         `yaml:"api"`
	ShutdownTimeout Duration          `yaml:"shutdown_timeout"`
	// Webhooks are the endpoints that delivery events are posted to.
	Webhooks []Webhook `yaml:"webhooks"`
	// Queue chooses where the queue lives (queue.go).
	Queue QueueConfig `yaml:"queue"`

	// File is the path the configuration was read from, or Builtin.
	File string `yaml:"-"`
}

type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // console | json
}

// ListenConfig holds one address per listener; "" disables that listener.
type ListenConfig struct {
	Submission  string `yaml:"submission"`  // STARTTLS, AUTH required (RFC 6409)
	Submissions string `yaml:"submissions"` // implicit TLS, AUTH required (RFC 8314)
	Relay       string `yaml:"relay"`       // no AUTH, trusted networks only
	Admin       string `yaml:"admin"`       // HTTP admin and metrics
	API         string `yaml:"api"`         // HTTP send API for applications
	// MX receives bounces and complaint reports for bounces.domain (port
	// 25 in production), and nothing else.
	MX string `yaml:"mx"`
}

// BouncesConfig turns on VERP return paths and the bounce intake
// (listen.mx): mail is sent with MAIL FROM b+TOKEN@Domain, and the reports
// that come back there become events and suppressions.
type BouncesConfig struct {
	// Domain is the bounce domain; "" turns VERP off.
	Domain string `yaml:"domain"`
	// SecretFile holds the key that authenticates tokens; "" = one serve
	// generates in data_dir (GeneratedBounceSecretPath).
	SecretFile string `yaml:"secret_file"`
	// Keep is how long what a late report needs of a message is kept
	// after the message leaves the queue.
	Keep Duration `yaml:"keep"`
}

type AdminConfig struct {
	// TokenFile holds the bearer token the admin API requires; "" = a
	// token serve generates in data_dir (GeneratedAdminTokenPath).
	TokenFile string `yaml:"token_file"`
	// TLS serves the admin API over TLS with the listeners' certificate;
	// required, with a token, when listen.admin is not on loopback.
	TLS bool `yaml:"tls"`
	// AllowedHosts are the names, besides the listener's own address
	// (and localhost for a loopback one), that requests may carry in their
	// Host header: anything else is refused, so that a web page cannot
	// reach the API through DNS rebinding.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// SuppressionConfig turns the suppression list on: a recipient that
// failed for good because its address does not exist is not sent the
// user's later mail (refused at RCPT).
type SuppressionConfig struct {
	Enabled bool `yaml:"enabled"`
	// ExpireAfter is how long an automatic suppression lasts; 0: until an
	// operator removes it.
	ExpireAfter Duration `yaml:"expire_after"`
}

// APIConfig is the send API's listener (listen.api).
type APIConfig struct {
	// TLS serves the API over TLS with the listeners' certificate;
	// required when listen.api is not on loopback: an application key,
	// like a password, never travels in clear over a network.
	TLS bool `yaml:"tls"`
	// AllowedHosts: as admin.allowed_hosts, for the API's listener.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// BuiltinAPI is where the built-in configuration (make run) serves the
// send API. A config file leaves it off unless listen.api is set.
const BuiltinAPI = "127.0.0.1:8080"

type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ACME, when present, has certificates obtained and renewed from an
	// ACME CA (relay/acme) instead of the files. Absent (nil): off.
	ACME *ACMEConfig `yaml:"acme"`
}

// LetsEncryptDirectory is the default tls.acme.directory: Let's Encrypt's
// production CA.
const LetsEncryptDirectory = "https://acme-v02.api.letsencrypt.org/directory"

// ACMEConfig is tls.acme. Setting it accepts the CA's subscriber
// agreement.
type ACMEConfig struct {
	// Email is given to the CA with the account; "" for none.
	Email string `yaml:"email"`
	// Directory is the CA's ACME directory URL (default Let's Encrypt).
	Directory string `yaml:"directory"`
	// Challenge is how the CA checks that this host holds the names:
	// tls-alpn-01 (default; the CA connects to port 443), http-01 (port
	// 80) or dns-01 (DNSHook publishes a TXT record).
	Challenge string `yaml:"challenge"`
	// ChallengeListen is where tls-alpn-01 or http-01 is answered while a
	// challenge runs: "" is :443 or :80.
	ChallengeListen string `yaml:"challenge_listen"`
	// DNSHook is the command dns-01 runs to publish and remove records
	// (relative to the config file's directory).
	DNSHook string `yaml:"dns_hook"`
	// Hostnames are names to get certificates for besides hostname (the
	// names clients use to reach the submission ports, if not hostname).
	Hostnames []string `yaml:"hostnames"`
}

// ACME challenge types (RFC 8555 §8, RFC 8737).
const (
	ChallengeTLSALPN = "tls-alpn-01"
	ChallengeHTTP    = "http-01"
	ChallengeDNS     = "dns-01"
)

// CertNames are the names tls.acme gets certificates for: hostname first,
// then tls.acme.hostnames. Nil without tls.acme.
func (c *Config) CertNames() []string {
	if c.TLS.ACME == nil {
		return nil
	}
	return append([]string{c.Hostname}, c.TLS.ACME.Hostnames...)
}

// ACMEDir is where tls.acme keeps its account, keys and certificates.
func (c *Config) ACMEDir() string { return filepath.Join(c.DataDir, "acme") }

type AuthConfig struct {
	UsersFile string `yaml:"users_file"`
	// KeysFile holds the users' application passwords; "" means the users
	// file's path with ".keys" appended (filled in by Load).
	KeysFile string `yaml:"keys_file"`
	// CacheTTL is how long a password that passed a full bcrypt check is
	// remembered (as an HMAC), so that the same password again skips
	// bcrypt; 0 disables the cache.
	CacheTTL Duration `yaml:"cache_ttl"`
	// CacheSize bounds the cache: one entry per user, the oldest evicted.
	CacheSize int `yaml:"cache_size"`
}

// maxAuthCacheSize bounds auth.cache_size: an entry is a few hundred
// bytes, and a million users is far beyond what postern is for.
const maxAuthCacheSize = 1_000_000

type RelayConfig struct {
	TrustedNetworks []string `yaml:"trusted_networks"`
	// AllowedSenderDomains, when not empty, limits the envelope senders the
	// relay listener accepts to these domains (and <>).
	AllowedSenderDomains []string `yaml:"allowed_sender_domains"`
	// AllowedRecipientDomains, when not empty, limits the recipients the
	// relay listener accepts to these domains.
	AllowedRecipientDomains []string `yaml:"allowed_recipient_domains"`
	// DangerouslyTrustTheWholeInternet must be true for a relay listener on
	// a non-loopback address to trust 0.0.0.0/0 or ::/0: that is an open
	// relay, and serve refuses it otherwise.
	DangerouslyTrustTheWholeInternet bool `yaml:"dangerously_trust_the_whole_internet"`
}

type LimitsConfig struct {
	MaxMessageSize Size `yaml:"max_message_size"`
	MaxRecipients  int  `yaml:"max_recipients"`
	// Per authenticated user; 0 = unlimited.
	UserMessagesPerHour  int `yaml:"user_messages_per_hour"`
	UserRecipientsPerDay int `yaml:"user_recipients_per_day"`
	// Per client IP address (IPv6 grouped by /64); 0 = unlimited.
	IPMaxConnections       int `yaml:"ip_max_connections"`
	IPConnectionsPerMinute int `yaml:"ip_connections_per_minute"`
	// All SMTP listeners together; 0 = unlimited.
	MaxConnections int `yaml:"max_connections"`
	// Failed AUTH: after AuthMaxFailures failures from one IP (or for one
	// user name) within AuthFailureWindow, attempts are delayed, then
	// refused with 421 for AuthCooldown.
	AuthMaxFailures   int      `yaml:"auth_max_failures"`
	AuthFailureWindow Duration `yaml:"auth_failure_window"`
	AuthCooldown      Duration `yaml:"auth_cooldown"`
	// Redis, when set, is shared by several postern nodes, which then
	// enforce the per-user and per-IP rates and the AUTH counters
	// together; nil: every node counts alone.
	Redis *LimitsRedis `yaml:"redis"`
}

// LimitsRedis is limits.redis. When Redis cannot be reached, each node
// falls back to its own limits (and says so in its log and metrics):
// mail is never refused because Redis is down.
type LimitsRedis struct {
	// Address is host:port.
	Address string `yaml:"address"`
	// PasswordFile holds Redis's password (AUTH) on its first line; the
	// password itself never goes in the config. "" = no password.
	PasswordFile string `yaml:"password_file"`
	// Prefix starts every key and channel postern uses ("" = "postern"),
	// so that several clusters can share one Redis.
	Prefix string `yaml:"prefix"`
	// TLS connects with TLS, verifying Redis's certificate against the
	// system roots.
	TLS bool `yaml:"tls"`
}

// validateLimitsRedis checks limits.redis, when present.
func (c *Config) validateLimitsRedis(bad func(key, format string, args ...any)) {
	r := c.Limits.Redis
	if r == nil {
		return
	}
	if r.Address == "" {
		bad("limits.redis.address", "must be set (host:port of the Redis the nodes share, for example 10.0.0.5:6379); remove limits.redis to count limits per node")
	} else if host, port, err := net.SplitHostPort(r.Address); err != nil || host == "" {
		bad("limits.redis.address", "%q is not host:port (for example 10.0.0.5:6379)", r.Address)
	} else if !validPort(port) {
		bad("limits.redis.address", "%q: port must be a number from 1 to 65535", r.Address)
	} else if net.ParseIP(host) == nil && !validHostname(host) {
		bad("limits.redis.address", "%q: host must be an IP address or a host name", r.Address)
	}
	// Part of every key name: a separator or a glob character in it would
	// let one cluster's keys match another's patterns.
	if p := r.Prefix; p != "" && (len(p) > 64 || strings.IndexFunc(p, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
	}) >= 0) {
		bad("limits.redis.prefix", "%q may hold only letters, digits, '-', '_' and '.', at most 64 of them (empty means postern)", p)
	}
}

// TimeoutsConfig are the server's SMTP timeouts; defaults follow RFC 5321
// §4.5.3.2.
type TimeoutsConfig struct {
	Command Duration `yaml:"command"` // waiting for the next command (§4.5.3.2.7: 5 minutes)
	Data    Duration `yaml:"data"`    // the whole DATA transfer
	Idle    Duration `yaml:"idle"`    // a session without a completed transaction
}

// SMTPConfig holds protocol policy of the inbound side.
type SMTPConfig struct {
	// ForbidBareNewline refuses DATA containing a bare CR or LF (521 5.5.2,
	// as Postfix's smtpd_forbid_bare_newline) from clients outside
	// BareNewlineExclusions; excluded clients get them turned into CRLF.
	ForbidBareNewline bool `yaml:"forbid_bare_newline"`
	// BareNewlineExclusions are networks; the word "trusted_networks"
	// stands for relay.trusted_networks.
	BareNewlineExclusions []string `yaml:"bare_newline_exclusions"`
	// CheckHeaderFrom lists the listeners (submission, submissions) where
	// the From: and Sender: header addresses must be ones the
	// authenticated user may send as. Leave a listener out for service
	// accounts that send on behalf of others.
	CheckHeaderFrom []string `yaml:"check_header_from"`
}

type DeliveryConfig struct {
	Resolver string      `yaml:"resolver"` // host:port; "" = system resolver
	Port     int         `yaml:"port"`     // TCP port dialed on MX hosts
	TLS      string      `yaml:"tls"`      // opportunistic | required | disabled
	Workers  int         `yaml:"workers"`  // concurrent delivery attempts
	Retry    RetryConfig `yaml:"retry"`
	// Mode is "deliver" (send) or "capture" (keep every outgoing message
	// in a Maildir under data_dir/capture instead, for development).
	Mode string `yaml:"mode"`
	// Smarthosts are upstream relays, by name.
	Smarthosts []Smarthost `yaml:"smarthosts"`
	// DefaultRoute is "mx" (deliver to the recipients' MX hosts) or the
	// names of smarthosts, tried in order (failover).
	DefaultRoute NameList `yaml:"default_route"`
	// Routes are tried in order; the first that matches a message decides.
	Routes []Route `yaml:"routes"`
	// DelayWarning is when a sender is told a message is still being
	// retried (one DSN with Action: delayed); 0 disables.
	DelayWarning Duration `yaml:"delay_warning"`
	// KeepFailed is how long a failed message's record (not its body)
	// stays visible to `postern queue list --state failed`.
	KeepFailed Duration `yaml:"keep_failed"`
	// MTASTS enforces the MTA-STS policies recipient domains publish
	// (RFC 8461).
	MTASTS bool `yaml:"mta_sts"`
	// DANE authenticates MX hosts by their TLSA records (RFC 7672) when
	// Resolver is a validating resolver on loopback, whose AD bit can be
	// trusted.
	DANE bool `yaml:"dane"`
	// TLSPolicy are configured policies by recipient domain, for domains
	// that publish none; DANE and MTA-STS come first.
	TLSPolicy map[string]TLSPolicyEntry `yaml:"tls_policy"`
	// TLSReports configures TLS reports (RFC 8460) to the domains that
	// ask for them.
	TLSReports TLSReportsConfig `yaml:"tls_reports"`
	// Timeouts bound delivery attempts.
	Timeouts DeliveryTimeouts `yaml:"timeouts"`
	// Shaping limits what each destination and provider gets, and says
	// what a rate-limit reply looks like.
	Shaping ShapingConfig `yaml:"shaping"`
}

// TLSPolicyEntry is the configured policy of one domain.
type TLSPolicyEntry struct {
	// Mode is dane | mta-sts | verify | encrypt | may.
	Mode string `yaml:"mode"`
}

// TLSPolicyModes are the values of delivery.tls_policy's mode, as
// relay/tlspolicy names them.
var TLSPolicyModes = []string{"dane", "mta-sts", "verify", "encrypt", "may"}

// TLSReportsConfig configures TLS reports.
type TLSReportsConfig struct {
	Enabled bool `yaml:"enabled"`
	// Organization is the report's organization-name; "" = hostname.
	Organization string `yaml:"organization"`
	// Contact is the report's contact-info and the sender of mailed
	// reports; "" = postmaster@hostname.
	Contact string `yaml:"contact"`
}

// DANEResolver reports whether delivery.resolver may be trusted for
// DANE: delivery.dane is on and the resolver is on loopback, so no one
// between postern and it can forge its AD bit.
func (c *Config) DANEResolver() bool {
	if !c.Delivery.DANE || c.Delivery.Resolver == "" {
		return false
	}
	ap, err := netip.ParseAddrPort(c.Delivery.Resolver)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// TLSReportOrganization and TLSReportContact are delivery.tls_reports'
// values with their defaults filled in.
func (c *Config) TLSReportOrganization() string {
	if c.Delivery.TLSReports.Organization != "" {
		return c.Delivery.TLSReports.Organization
	}
	return c.Hostname
}

func (c *Config) TLSReportContact() string {
	if c.Delivery.TLSReports.Contact != "" {
		return c.Delivery.TLSReports.Contact
	}
	return "postmaster@" + c.Hostname
}

// Smarthost is an upstream relay.
type Smarthost struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"` // host:port
	TLS     string `yaml:"tls"`     // starttls | implicit | none
	// VerifyCertificate is on by default; turning it off still encrypts.
	VerifyCertificate *bool  `yaml:"verify_certificate"`
	Username          string `yaml:"username"`
	// The password comes from a file (first line) or an environment
	// variable, never from the config itself.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
}

// Route sends matching messages via smarthosts or straight to MX hosts.
type Route struct {
	// A route matches when the recipient's domain is in RecipientDomains
	// (if set) and the sender's domain is in SenderDomains (if set). A
	// domain entry ".example.test" also matches its subdomains.
	RecipientDomains []string `yaml:"recipient_domains"`
	SenderDomains    []string `yaml:"sender_domains"`
	// Via is "mx" or smarthost names (failover order).
	Via NameList `yaml:"via"`
	// FallbackAfter, with Fallback, sends through the Fallback smarthosts
	// once a direct (mx) delivery has failed this many times.
	FallbackAfter int      `yaml:"fallback_after"`
	Fallback      NameList `yaml:"fallback"`
}

type RetryConfig struct {
	Initial  Duration `yaml:"initial"`
	Max      Duration `yaml:"max"`
	Lifetime Duration `yaml:"lifetime"`
}

type DKIMConfig struct {
	Keys []DKIMKey `yaml:"keys"`
}

type DKIMKey struct {
	Domain         string `yaml:"domain"`
	Selector       string `yaml:"selector"`
	KeyFile        string `yaml:"key_file"`
	SignSubdomains bool   `yaml:"sign_subdomains"`
}

// Default returns the built-in configuration.
func Default() *Config {
	c, err := parse(defaultYAML, Builtin, &Config{})
	if err != nil {
		panic("configs: embedded default.yaml is invalid: " + err.Error())
	}
	return c
}

// Load reads the configuration from path (or the embedded default when path
// is Builtin), applies defaults, resolves relative paths against the file's
// directory and validates everything. The error, if any, is an Errors value
// listing every problem.
func Load(path string) (*Config, error) {
	if path == Builtin {
		c := Default()
		c.Listen.API = BuiltinAPI
		return c, c.resolvePaths(".")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fmt.Sprintf("cannot read: %v", unwrapPathErr(err))}}
	}
	c, err := parse(data, path, Default())
	if err != nil {
		return c, err
	}
	return c, c.resolvePaths(filepath.Dir(path))
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// parse decodes data over base and validates the result.
func parse(data []byte, file string, base *Config) (*Config, error) {
	errs, lines := decodeStrict(data, file, base)
	base.File = file
	base.fillListDefaults()
	// Semantic checks run even when some keys failed to decode, so one run
	// shows everything; a key that already has an error is not blamed twice
	// (it holds its default now). Each check points at its key's line, or
	// its nearest parent's.
	reported := map[string]bool{}
	for _, e := range errs {
		reported[e.Key] = true
	}
	for _, e := range base.validate() {
		if reported[e.Key] {
			continue
		}
		for k := e.Key; k != "" && e.Line == 0; k = parentKey(k) {
			e.Line = lines[k]
		}
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return base, errs
	}
	return base, nil
}

// fillListDefaults gives list items the defaults a YAML default file cannot
// (it has no items to put them on).
func (c *Config) fillListDefaults() {
	if a := c.TLS.ACME; a != nil {
		if a.Directory == "" {
			a.Directory = LetsEncryptDirectory
		}
		if a.Challenge == "" {
			a.Challenge = ChallengeTLSALPN
		}
	}
	for i := range c.Delivery.Smarthosts {
		if c.Delivery.Smarthosts[i].TLS == "" {
			c.Delivery.Smarthosts[i].TLS = "starttls" // RFC 8314 would prefer implicit; port 587 speaks STARTTLS
		}
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if w.Name == "" {
			w.Name = DefaultWebhookName(w.URL)
		}
		if w.RetryFor == 0 {
			w.RetryFor = DefaultWebhookRetryFor
		}
	}
}

// parentKey returns "a.b" for "a.b.c" and "a.b" for "a.b[2]".
func parentKey(k string) string {
	if i := strings.LastIndexAny(k, ".["); i >= 0 {
		return k[:i]
	}
	return ""
}

// resolvePaths makes every relative path relative to dir.
func (c *Config) resolvePaths(dir string) error {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	abs(&c.Auth.UsersFile)
	abs(&c.Auth.KeysFile)
	if c.Auth.KeysFile == "" && c.Auth.UsersFile != "" {
		c.Auth.KeysFile = c.Auth.UsersFile + ".keys" // auth.DefaultKeysFile
	}
	abs(&c.Admin.TokenFile)
	abs(&c.Bounces.SecretFile)
	abs(&c.Queue.Postgres.DSNFile)
	if c.TLS.ACME != nil {
		abs(&c.TLS.ACME.DNSHook)
	}
	for i := range c.DKIM.Keys {
		abs(&c.DKIM.Keys[i].KeyFile)
	}
	for i := range c.Delivery.Smarthosts {
		abs(&c.Delivery.Smarthosts[i].PasswordFile)
	}
	for i := range c.Webhooks {
		abs(&c.Webhooks[i].SecretFile)
	}
	if c.Limits.Redis != nil {
		abs(&c.Limits.Redis.PasswordFile)
	}
	return nil
}

// QueuePath is the queue database file.
func (c *Config) QueuePath() string { return filepath.Join(c.DataDir, "queue.db") }

// SpoolDir holds large message bodies referenced from the queue.
func (c *Config) SpoolDir() string { return filepath.Join(c.DataDir, "spool") }

// TrustedPrefixes returns relay.trusted_networks parsed. Valid after Load.
func (c *Config) TrustedPrefixes() []netip.Prefix { return prefixes(c.Relay.TrustedNetworks, nil) }

// BareNewlineExclusions returns smtp.bare_newline_exclusions parsed, with
// "trusted_networks" expanded. Valid after Load.
func (c *Config) BareNewlineExclusions() []netip.Prefix {
	return prefixes(c.SMTP.BareNewlineExclusions, c.Relay.TrustedNetworks)
}

// ProxyProtocolFrom returns listen_proxy_protocol_from parsed.
func (c *Config) ProxyProtocolFrom() []netip.Prefix { return prefixes(c.ListenProxyProtocolFrom, nil) }

// MaildropDir is where `postern sendmail` leaves messages the daemon
// could not take, for the daemon to pick up (relay/pickup).
func (c *Config) MaildropDir() string { return filepath.Join(c.DataDir, "maildrop") }

// GeneratedBounceSecretPath is where serve keeps the key of the VERP
// tokens when bounces.secret_file is not set.
func (c *Config) GeneratedBounceSecretPath() string {
	return filepath.Join(c.DataDir, "bounces.secret")
}

// GeneratedAdminTokenPath is where serve keeps the admin API's token when
// admin.token_file is not set.
func (c *Config) GeneratedAdminTokenPath() string { return filepath.Join(c.DataDir, "admin.token") }

// CaptureDir is where delivery.mode capture keeps messages (a Maildir).
func (c *Config) CaptureDir() string { return filepath.Join(c.DataDir, "capture") }

const trustedNetworksWord = "trusted_networks"

func prefixes(list, trusted []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		if s == trustedNetworksWord && trusted != nil {
			out = append(out, prefixes(trusted, nil)...)
			continue
		}
		if p, err := parsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// NameList is one name or a list of names: `default_route: provider` and
// `default_route: [provider, backup]` both work.
type NameList []string

// parsePrefix accepts a CIDR or a bare address (a /32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func (c *Config) validate() Errors {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, &Error{File: c.File, Key: key, Msg: fmt.Sprintf(format, args...)})
	}

	if c.Hostname == "" {
		bad("hostname", "must not be empty: it is the name postern gives in EHLO and Received headers")
	} else if !validHostname(c.Hostname) || strings.Contains(c.Hostname, "_") {
		bad("hostname", "%q is not a valid host name (letters, digits, '-' and '.', labels up to 63 characters)", c.Hostname)
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty: the queue lives there")
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "console", "json":
	default:
		bad("log.format", "%q is not one of console, json", c.Log.Format)
	}

	listeners := map[string]string{
		"listen.submission":  c.Listen.Submission,
		"listen.submissions": c.Listen.Submissions,
		"listen.relay":       c.Listen.Relay,
		"listen.admin":       c.Listen.Admin,
		"listen.mx":          c.Listen.MX,
		"listen.api":         c.Listen.API,
	}
	seen := map[string]string{}
	for _, key := range []string{"listen.submission", "listen.submissions", "listen.relay", "listen.admin", "listen.mx", "listen.api"} {
		addr := listeners[key]
		if addr == "" {
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(key, "%q is not host:port (for example 127.0.0.1:2587; empty disables the listener)", addr)
			continue
		}
		if host != "" && net.ParseIP(host) == nil && host != "localhost" {
			bad(key, "%q: host must be an IP address or localhost", addr)
		}
		if !validPort(port) {
			bad(key, "%q: port must be a number from 1 to 65535", addr)
		}
		if other, dup := seen[addr]; dup {
			bad(key, "%q is also used by %s", addr, other)
		}
		seen[addr] = key
	}
	if a := c.Listen.Admin; a != "" && !IsLoopback(a) && !c.Admin.TLS {
		bad("listen.admin", "%q is not a loopback address: set admin.tls: true, so that the admin token never travels in clear over a network", a)
	}
	checkAllowedHosts("admin.allowed_hosts", c.Admin.AllowedHosts, bad)
	if a := c.Listen.API; a != "" && !IsLoopback(a) && !c.API.TLS {
		bad("listen.api", "%q is not a loopback address: set api.tls: true, so that application keys never travel in clear over a network", a)
	}
	checkAllowedHosts("api.allowed_hosts", c.API.AllowedHosts, bad)
	if c.Listen.Submission == "" && c.Listen.Submissions == "" && c.Listen.Relay == "" {
		bad("listen", "no SMTP listener: set at least one of submission, submissions, relay")
	}

	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls", "cert_file and key_file go together: set both, or neither for a generated self-signed certificate")
	}
	c.validateACME(bad)

	if c.Auth.UsersFile == "" && (c.Listen.Submission != "" || c.Listen.Submissions != "" || c.Listen.API != "") {
		bad("auth.users_file", "must be set when a submission listener or listen.api is enabled (the API's keys are the users' application passwords)")
	}
	if c.Auth.KeysFile != "" && filepath.Clean(c.Auth.KeysFile) == filepath.Clean(c.Auth.UsersFile) {
		bad("auth.keys_file", "is auth.users_file: the application passwords need a file of their own (empty means the users file's path plus .keys)")
	}
	if c.Auth.CacheTTL < 0 {
		bad("auth.cache_ttl", "must not be negative (0s disables the cache)")
	}
	if c.Auth.CacheSize < 1 || c.Auth.CacheSize > maxAuthCacheSize {
		bad("auth.cache_size", "%d is not from 1 to %d (to disable the cache, set auth.cache_ttl: 0s)", c.Auth.CacheSize, maxAuthCacheSize)
	}

	for i, n := range c.Relay.TrustedNetworks {
		if _, err := parsePrefix(n); err != nil {
			bad(fmt.Sprintf("relay.trusted_networks[%d]", i), "%q is not a network (CIDR such as 192.0.2.0/24) or an address", n)
		}
	}

	if c.Limits.MaxMessageSize <= 0 {
		bad("limits.max_message_size", "must be positive (for example 25MiB)")
	} else if c.Limits.MaxMessageSize > 1<<30 {
		bad("limits.max_message_size", "%s is over the 1GiB postern supports", c.Limits.MaxMessageSize)
	}
	// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
	if c.Limits.MaxRecipients < 1 {
		bad("limits.max_recipients", "must be at least 1 (RFC 5321 §4.5.3.1.8 recommends 100)")
	}

	if c.Delivery.Resolver != "" {
		// An address, not a name: finding the DNS server would need
		// DNS, and a name that does not resolve would defer every
		// delivery until its lifetime ran out.
		if ap, err := netip.ParseAddrPort(c.Delivery.Resolver); err != nil || ap.Port() == 0 {
			bad("delivery.resolver", "%q is not IP:port (for example 127.0.0.1:53 or [::1]:53; empty uses the system resolver)", c.Delivery.Resolver)
		}
	}
	if c.Delivery.Port < 1 || c.Delivery.Port > 65535 {
		bad("delivery.port", "%d is not a port from 1 to 65535", c.Delivery.Port)
	}
	switch c.Delivery.TLS {
	case "opportunistic", "required", "disabled":
	default:
		bad("delivery.tls", "%q is not one of opportunistic, required, disabled", c.Delivery.TLS)
	}
	if c.Delivery.Workers < 1 || c.Delivery.Workers > 1000 {
		bad("delivery.workers", "%d is not from 1 to 1000", c.Delivery.Workers)
	}
	r := c.Delivery.Retry
	if r.Initial <= 0 {
		bad("delivery.retry.initial", "must be positive (for example 1m)")
	}
	if r.Max <= 0 {
		bad("delivery.retry.max", "must be positive (for example 1h)")
	} else if r.Initial > 0 && r.Max < r.Initial {
		bad("delivery.retry.max", "%s is shorter than delivery.retry.initial (%s)", r.Max, r.Initial)
	}
	if r.Lifetime <= 0 {
		bad("delivery.retry.lifetime", "must be positive (for example 120h)")
	}
	if c.Delivery.DelayWarning < 0 {
		bad("delivery.delay_warning", "must not be negative (0 disables delay warnings)")
	}
	if d := c.Bounces.Domain; d != "" && (!validHostname(d) || strings.Contains(d, "_") || !strings.Contains(d, ".")) {
		bad("bounces.domain", "%q is not a domain name (for example bounces.example.com; empty turns VERP off)", d)
	}
	if c.Listen.MX != "" && c.Bounces.Domain == "" {
		bad("listen.mx", "needs bounces.domain: the MX listener accepts mail for the bounce domain only")
	}
	if c.Bounces.Keep <= 0 {
		bad("bounces.keep", "must be positive (for example 168h): how long a late bounce can still be matched")
	}
	if c.Suppression.ExpireAfter < 0 {
		bad("suppression.expire_after", "must not be negative (0 keeps a suppression until it is removed)")
	}
	if c.Delivery.KeepFailed <= 0 {
		bad("delivery.keep_failed", "must be positive (for example 168h)")
	}

	c.validatePolicy(bad)
	c.validateQueue(bad)
	c.validateLimitsRedis(bad)
	c.validateRouting(bad)
	c.validateTLSPolicy(bad)
	c.validateWebhooks(bad)
	c.validateShaping(bad)

	type sel struct{ d, s string }
	dkimSeen := map[sel]int{}
	for i, k := range c.DKIM.Keys {
		key := fmt.Sprintf("dkim.keys[%d]", i)
		if k.Domain == "" || !validHostname(k.Domain) {
			bad(key+".domain", "%q is not a domain name", k.Domain)
		}
		if k.Selector == "" || !validHostname(k.Selector) {
			bad(key+".selector", "%q is not a valid selector (letters, digits, '-' and '.')", k.Selector)
		}
		if k.KeyFile == "" {
			bad(key+".key_file", "must name the private key file")
		}
		id := sel{strings.ToLower(k.Domain), strings.ToLower(k.Selector)}
		if j, dup := dkimSeen[id]; dup {
			bad(key, "domain %q selector %q is also dkim.keys[%d]", k.Domain, k.Selector, j)
		}
		dkimSeen[id] = i
	}

	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive (for example 30s)")
	}
	return errs
}

// checkAllowedHosts checks an allowed_hosts list: host names or host:port.
func checkAllowedHosts(key string, hosts []string, bad func(key, format string, args ...any)) {
	for i, h := range hosts {
		if h == "" || strings.ContainsAny(h, " /\\@") {
			bad(fmt.Sprintf("%s[%d]", key, i), "%q is not a host name or host:port", h)
		}
	}
}

func validPort(p string) bool {
	var n int
	if _, err := fmt.Sscanf(p, "%d", &n); err != nil || fmt.Sprint(n) != p {
		return false
	}
	return n >= 1 && n <= 65535
}

// validHostname checks RFC 1123 host name syntax, with '_' allowed: DKIM
// selectors and their domains may carry it (RFC 6376 §3.1); the server's
// own hostname is checked for '_' separately.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// Duration is a time.Duration written in Go syntax ("90s", "1h30m").
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// validateACME checks tls.acme, when present.
func (c *Config) validateACME(bad func(key, format string, args ...any)) {
	a := c.TLS.ACME
	if a == nil {
		return
	}
	if c.TLS.CertFile != "" || c.TLS.KeyFile != "" {
		bad("tls.acme", "is set with tls.cert_file/key_file: choose one (tls.acme obtains the certificate; the files bring one)")
	}
	if validHostname(c.Hostname) && (!strings.Contains(c.Hostname, ".") || strings.EqualFold(c.Hostname, "localhost")) {
		bad("hostname", "%q: tls.acme needs the host's public, fully qualified name (a CA checks it through DNS)", c.Hostname)
	}
	if a.Email != "" {
		if at := strings.LastIndexByte(a.Email, '@'); at < 1 || at == len(a.Email)-1 || strings.ContainsAny(a.Email, " \t<>,;") {
			bad("tls.acme.email", "%q is not an email address (or leave it empty)", a.Email)
		}
	}
	if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("tls.acme.directory", "%q is not an https URL of an ACME directory (the default is %s)", a.Directory, LetsEncryptDirectory)
	}
	dns, known := a.Challenge == ChallengeDNS, true
	switch a.Challenge {
	case ChallengeTLSALPN, ChallengeHTTP, ChallengeDNS:
	default:
		// What goes with the challenge cannot be judged without one.
		bad("tls.acme.challenge", "%q is not one of %s, %s, %s", a.Challenge, ChallengeTLSALPN, ChallengeHTTP, ChallengeDNS)
		known = false
	}
	if a.ChallengeListen != "" && known {
		if dns {
			bad("tls.acme.challenge_listen", "dns-01 listens nowhere: remove it, or choose tls-alpn-01 or http-01")
		} else if host, port, err := net.SplitHostPort(a.ChallengeListen); err != nil || !validPort(port) || host != "" && net.ParseIP(host) == nil {
			bad("tls.acme.challenge_listen", "%q is not [IP]:port (for example :443; empty is :443 for tls-alpn-01, :80 for http-01)", a.ChallengeListen)
		}
	}
	switch {
	case !known:
	case dns && a.DNSHook == "":
		bad("tls.acme.dns_hook", "must name the command that publishes the challenge's TXT record when challenge is dns-01")
	case !dns && a.DNSHook != "":
		bad("tls.acme.dns_hook", "goes with challenge: dns-01 only")
	}
	seen := map[string]bool{strings.ToLower(c.Hostname): true}
	for i, h := range a.Hostnames {
		key := fmt.Sprintf("tls.acme.hostnames[%d]", i)
		name, wild := strings.CutPrefix(h, "*.")
		switch {
		case !validHostname(name) || strings.Contains(name, "_") || !strings.Contains(name, "."):
			bad(key, "%q is not a fully qualified host name", h)
		case wild && !dns && known:
			bad(key, "%q: a wildcard certificate needs challenge: dns-01 (RFC 8555 §7.1.3)", h)
		case seen[strings.ToLower(h)]:
			bad(key, "%q is listed already (hostname is always included)", h)
		}
		seen[strings.ToLower(h)] = true
	}
}

// validatePolicy checks the keys of the hostile-client defences.
func (c *Config) validatePolicy(bad func(key, format string, args ...any)) {
	for _, d := range []struct {
		key  string
		list []string
	}{
		{"relay.allowed_sender_domains", c.Relay.AllowedSenderDomains},
		{"relay.allowed_recipient_domains", c.Relay.AllowedRecipientDomains},
	} {
		for i, dom := range d.list {
			if !validHostname(dom) {
				bad(fmt.Sprintf("%s[%d]", d.key, i), "%q is not a domain name", dom)
			}
		}
	}
	// No configuration may make postern an open relay by accident: trusting
	// every address on a listener others can reach needs a loud yes.
	if c.Listen.Relay != "" && !c.Relay.DangerouslyTrustTheWholeInternet && !loopbackListen(c.Listen.Relay) {
		for i, n := range c.Relay.TrustedNetworks {
			if p, err := parsePrefix(n); err == nil && p.Bits() == 0 {
				bad(fmt.Sprintf("relay.trusted_networks[%d]", i),
					"%q trusts every address while listen.relay (%s) is reachable from other hosts: that is an open relay (set relay.dangerously_trust_the_whole_internet: true if you really mean it)",
					n, c.Listen.Relay)
			}
		}
	}

	l := c.Limits
	for _, f := range []struct {
		key string
		v   int
	}{
		{"limits.user_messages_per_hour", l.UserMessagesPerHour},
		{"limits.user_recipients_per_day", l.UserRecipientsPerDay},
		{"limits.ip_max_connections", l.IPMaxConnections},
		{"limits.ip_connections_per_minute", l.IPConnectionsPerMinute},
		{"limits.max_connections", l.MaxConnections},
		{"limits.auth_max_failures", l.AuthMaxFailures},
	} {
		if f.v < 0 {
			bad(f.key, "must not be negative (0 means no limit)")
		}
	}
	if l.AuthMaxFailures > 0 {
		if l.AuthFailureWindow <= 0 {
			bad("limits.auth_failure_window", "must be positive when limits.auth_max_failures is set")
		}
		if l.AuthCooldown <= 0 {
			bad("limits.auth_cooldown", "must be positive when limits.auth_max_failures is set")
		}
	}
	for _, f := range []struct {
		key string
		d   Duration
	}{
		{"timeouts.command", c.Timeouts.Command},
		{"timeouts.data", c.Timeouts.Data},
		{"timeouts.idle", c.Timeouts.Idle},
	} {
		if f.d <= 0 {
			bad(f.key, "must be positive (RFC 5321 §4.5.3.2 suggests minutes, not seconds)")
		}
	}
	for i, n := range c.SMTP.BareNewlineExclusions {
		if n == trustedNetworksWord {
			continue
		}
		if _, err := parsePrefix(n); err != nil {
			bad(fmt.Sprintf("smtp.bare_newline_exclusions[%d]", i), "%q is not a network, an address or the word trusted_networks", n)
		}
	}
	for i, l := range c.SMTP.CheckHeaderFrom {
		if l != "submission" && l != "submissions" {
			bad(fmt.Sprintf("smtp.check_header_from[%d]", i), "%q is not submission or submissions (the listeners with AUTH)", l)
		}
	}
	for i, n := range c.ListenProxyProtocolFrom {
		if _, err := parsePrefix(n); err != nil {
			bad(fmt.Sprintf("listen_proxy_protocol_from[%d]", i), "%q is not a network (CIDR) or an address", n)
		}
	}
}

// loopbackListen reports whether a listen address only accepts local
// clients.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// validateRouting checks delivery mode, smarthosts and routes.
func (c *Config) validateRouting(bad func(key, format string, args ...any)) {
	d := c.Delivery
	switch d.Mode {
	case "deliver", "capture":
	default:
		bad("delivery.mode", "%q is not deliver or capture", d.Mode)
	}
	names := map[string]bool{}
	for i, h := range d.Smarthosts {
		key := fmt.Sprintf("delivery.smarthosts[%d]", i)
		switch {
		case h.Name == "":
			bad(key+".name", "must be set (routes refer to smarthosts by name)")
		case h.Name == "mx":
			bad(key+".name", `"mx" is reserved for direct delivery`)
		case names[h.Name]:
			bad(key+".name", "%q is used by another smarthost", h.Name)
		}
		names[h.Name] = true
		if host, port, err := net.SplitHostPort(h.Address); err != nil || host == "" || !validPort(port) {
			bad(key+".address", "%q is not host:port (for example smtp.example.net:587)", h.Address)
		}
		switch h.TLS {
		case "starttls", "implicit", "none":
		default:
			bad(key+".tls", "%q is not starttls, implicit or none", h.TLS)
		}
		switch {
		case h.Username != "" && h.PasswordFile == "" && h.PasswordEnv == "":
			bad(key, "username is set but neither password_file nor password_env is")
		case h.PasswordFile != "" && h.PasswordEnv != "":
			bad(key, "password_file and password_env are both set: choose one")
		case h.Username == "" && (h.PasswordFile != "" || h.PasswordEnv != ""):
			bad(key+".username", "must be set when a password is")
		}
		if h.Username != "" && h.TLS == "none" {
			bad(key+".tls", "none would send the password in clear text: use starttls or implicit")
		}
	}
	checkVia := func(key string, via NameList, allowMX bool) {
		if len(via) == 0 {
			bad(key, `must name "mx" or smarthosts`)
		}
		for _, n := range via {
			if n == "mx" {
				if !allowMX || len(via) > 1 {
					bad(key, `"mx" cannot be combined with smarthosts here`)
				}
				continue
			}
			if !names[n] {
				bad(key, "%q is not a smarthost name (known: %s)", n, strings.Join(smarthostNames(d.Smarthosts), ", "))
			}
		}
	}
	checkVia("delivery.default_route", d.DefaultRoute, true)
	for i, r := range d.Routes {
		key := fmt.Sprintf("delivery.routes[%d]", i)
		if len(r.RecipientDomains) == 0 && len(r.SenderDomains) == 0 {
			bad(key, "needs recipient_domains or sender_domains (a catch-all route is delivery.default_route)")
		}
		for _, l := range []struct {
			key  string
			list []string
		}{{".recipient_domains", r.RecipientDomains}, {".sender_domains", r.SenderDomains}} {
			for j, dom := range l.list {
				if !validHostname(strings.TrimPrefix(dom, ".")) {
					bad(fmt.Sprintf("%s%s[%d]", key, l.key, j), "%q is not a domain name", dom)
				}
			}
		}
		checkVia(key+".via", r.Via, true)
		if r.FallbackAfter < 0 {
			bad(key+".fallback_after", "must not be negative")
		}
		if (r.FallbackAfter > 0) != (len(r.Fallback) > 0) {
			bad(key, "fallback_after and fallback go together")
		}
		if len(r.Fallback) > 0 {
			if len(r.Via) != 1 || r.Via[0] != "mx" {
				bad(key+".fallback", `a fallback only follows direct delivery (via: mx)`)
			}
			checkVia(key+".fallback", r.Fallback, false)
		}
	}
}

func smarthostNames(hs []Smarthost) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	if len(out) == 0 {
		return []string{"none configured"}
	}
	return out
}

// IsLoopback reports whether a listen address (host:port) binds loopback
// only: 127.0.0.0/8, ::1 or localhost. An empty host (every address) is
// not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateTLSPolicy checks delivery.tls_policy and delivery.tls_reports.
func (c *Config) validateTLSPolicy(bad func(key, format string, args ...any)) {
	doms := make([]string, 0, len(c.Delivery.TLSPolicy))
	for d := range c.Delivery.TLSPolicy {
		doms = append(doms, d)
	}
	sort.Strings(doms)
	lower := map[string]string{}
	for _, d := range doms {
		key := fmt.Sprintf("delivery.tls_policy[%q]", d)
		if !validHostname(d) || strings.HasSuffix(d, ".") || strings.HasPrefix(d, ".") {
			bad(key, "%q is not a domain name (one domain per entry; subdomains are not included)", d)
		}
		if other, dup := lower[strings.ToLower(d)]; dup {
			bad(key, "%q is %q again (domains are compared without case)", d, other)
		}
		lower[strings.ToLower(d)] = d
		switch m := c.Delivery.TLSPolicy[d].Mode; {
		case m == "":
			bad(key+".mode", "must be set: one of %s", strings.Join(TLSPolicyModes, ", "))
		case !slices.Contains(TLSPolicyModes, m):
			bad(key+".mode", "%q is not one of %s", m, strings.Join(TLSPolicyModes, ", "))
		}
		if c.Delivery.TLSPolicy[d].Mode == "dane" && !c.DANEResolver() {
			bad(key+".mode", "dane needs delivery.dane: true and delivery.resolver set to a validating resolver on loopback (127.0.0.1:53, say): without them no host of %s could be used", d)
		}
	}
	r := c.Delivery.TLSReports
	if r.Contact != "" && strings.ContainsAny(r.Contact, " \t\r\n<>") {
		bad("delivery.tls_reports.contact", "%q is not an address or URI", r.Contact)
	}
	if c.Delivery.TLSReports.Enabled && c.TLSReportContact() != "" && !strings.Contains(c.TLSReportContact(), "@") {
		bad("delivery.tls_reports.contact", "%q: reports are mailed from this address, so it must be one", c.TLSReportContact())
	}
	if strings.ContainsAny(r.Organization, "\r\n") {
		bad("delivery.tls_reports.organization", "must be one line")
	}
}

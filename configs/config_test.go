package configs

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.want from the loader's current output")

// writeConfig writes text as postern.yaml in a new temporary directory and
// returns its path.
func writeConfig(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "postern.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadErrors loads path and returns its errors, failing the test when Load
// succeeds or returns anything but Errors.
func loadErrors(t *testing.T, path string) Errors {
	t.Helper()
	_, err := Load(path)
	if err == nil {
		t.Fatalf("Load(%s) succeeded, want errors", path)
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load(%s) returned %T (%v), want configs.Errors", path, err, err)
	}
	return errs
}

// defaultsFor is what Load gives for a file at path that sets nothing: the
// embedded defaults, with their relative paths resolved against the file's
// directory.
func defaultsFor(path string) *Config {
	c := Default()
	c.File = path
	c.resolvePaths(filepath.Dir(path))
	return c
}

func TestLoadBuiltin(t *testing.T) {
	c, err := Load(Builtin)
	if err != nil {
		t.Fatalf("Load(builtin): %v", err)
	}
	// Spelt out rather than compared with Default(), so a change to
	// default.yaml is a deliberate change to this test too.
	checks := []struct {
		key       string
		got, want any
	}{
		{"File", c.File, Builtin},
		{"hostname", c.Hostname, "localhost"},
		// Builtin paths are relative to the current directory.
		{"data_dir", c.DataDir, "data"},
		{"auth.users_file", c.Auth.UsersFile, filepath.Join("data", "users")},
		{"auth.keys_file", c.Auth.KeysFile, filepath.Join("data", "users.keys")},
		{"auth.cache_ttl", c.Auth.CacheTTL.D(), time.Hour},
		{"auth.cache_size", c.Auth.CacheSize, 10000},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "console"},
		{"listen.submission", c.Listen.Submission, "127.0.0.1:2587"},
		{"listen.submissions", c.Listen.Submissions, "127.0.0.1:2465"},
		{"listen.relay", c.Listen.Relay, "127.0.0.1:2525"},
		{"listen.admin", c.Listen.Admin, "127.0.0.1:8025"},
		{"tls.cert_file", c.TLS.CertFile, ""},
		{"tls.key_file", c.TLS.KeyFile, ""},
		{"relay.trusted_networks", c.Relay.TrustedNetworks, []string{"127.0.0.0/8", "::1/128"}},
		{"limits.max_message_size", c.Limits.MaxMessageSize, Size(25 << 20)},
		{"limits.max_recipients", c.Limits.MaxRecipients, 100},
		{"delivery.resolver", c.Delivery.Resolver, ""},
		{"delivery.port", c.Delivery.Port, 25},
		{"delivery.tls", c.Delivery.TLS, "opportunistic"},
		{"delivery.workers", c.Delivery.Workers, 256},
		{"delivery.retry.initial", c.Delivery.Retry.Initial.D(), time.Minute},
		{"delivery.retry.max", c.Delivery.Retry.Max.D(), time.Hour},
		{"delivery.retry.lifetime", c.Delivery.Retry.Lifetime.D(), 120 * time.Hour},
		{"delivery.timeouts", c.Delivery.Timeouts, DeliveryTimeouts{Connect: Duration(20 * time.Second),
			Command: Duration(5 * time.Minute), Data: Duration(10 * time.Minute), Attempt: Duration(30 * time.Minute)}},
		{"delivery.shaping.default", c.Delivery.Shaping.Default, ShapingLimits{Connections: 20, MessagesPerConnection: 100, Rate: "unlimited"}},
		{"delivery.shaping.providers[0]", c.Delivery.Shaping.Providers[0], ShapingProvider{Name: "google",
			MXSuffixes: []string{".google.com", ".googlemail.com"}, Connections: 5, MessagesPerConnection: 50}},
		{"delivery.shaping.providers", len(c.Delivery.Shaping.Providers), 7},
		{"delivery.shaping.rate_limit_patterns[0]", c.Delivery.Shaping.RateLimitPatterns[0], RateLimitPattern{EnhancedCode: "4.7.28"}},
		{"dkim.keys", len(c.DKIM.Keys), 0},
		{"shutdown_timeout", c.ShutdownTimeout.D(), 30 * time.Second},
		{"suppression.enabled", c.Suppression.Enabled, true},
		{"listen.mx", c.Listen.MX, ""},
		{"bounces.domain", c.Bounces.Domain, ""},
		{"bounces.secret_file", c.Bounces.SecretFile, ""},
		{"bounces.keep", c.Bounces.Keep.D(), 168 * time.Hour},
		{"suppression.expire_after", c.Suppression.ExpireAfter.D(), time.Duration(0)},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.key, ch.got, ch.want)
		}
	}
	if got, want := c.QueuePath(), filepath.Join("data", "queue.db"); got != want {
		t.Errorf("QueuePath() = %q, want %q", got, want)
	}
	if got, want := c.SpoolDir(), filepath.Join("data", "spool"); got != want {
		t.Errorf("SpoolDir() = %q, want %q", got, want)
	}
}

func TestDefaultYAMLIsACopy(t *testing.T) {
	b := DefaultYAML()
	for i := range b {
		b[i] = 'x'
	}
	if _, err := Load(Builtin); err != nil {
		t.Fatalf("changing DefaultYAML's result changed the embedded default: %v", err)
	}
}

// A file only says what differs from the defaults.
func TestLoadPartialFiles(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		change     func(*Config)
	}{
		{"empty", "", func(*Config) {}},
		{"comment only", "# nothing to change\n", func(*Config) {}},
		{"hostname only", "hostname: mail.example.com\n", func(c *Config) { c.Hostname = "mail.example.com" }},
		{"empty section keeps its defaults", "delivery:\n", func(*Config) {}},
		{"one nested key", "delivery:\n  retry:\n    max: 2h\n", func(c *Config) { c.Delivery.Retry.Max = Duration(2 * time.Hour) }},
		{"the password cache off", "auth: {cache_ttl: 0s}\n", func(c *Config) { c.Auth.CacheTTL = 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.text)
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := defaultsFor(path)
			tc.change(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load gave\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	errs := loadErrors(t, path)
	if len(errs) != 1 || errs[0].File != path || !strings.Contains(errs[0].Msg, "cannot read") {
		t.Errorf("got %q, want one \"cannot read\" error naming %s", errs, path)
	}
}

func TestRelativePathsFollowTheConfigFile(t *testing.T) {
	const text = `
data_dir: spool/../data
auth: {users_file: ./users, keys_file: secret/keys}
tls: {cert_file: tls/cert.pem, key_file: /etc/ssl/private/key.pem}
dkim:
  keys:
    - {domain: example.com, selector: a, key_file: dkim/a.pem}
    - {domain: example.com, selector: b, key_file: /etc/dkim/b.pem}
`
	check := func(t *testing.T, c *Config, dir string) {
		t.Helper()
		for _, p := range []struct{ key, got, want string }{
			{"data_dir", c.DataDir, filepath.Join(dir, "data")},
			{"auth.users_file", c.Auth.UsersFile, filepath.Join(dir, "users")},
			{"auth.keys_file", c.Auth.KeysFile, filepath.Join(dir, "secret", "keys")},
			{"tls.cert_file", c.TLS.CertFile, filepath.Join(dir, "tls", "cert.pem")},
			{"tls.key_file", c.TLS.KeyFile, "/etc/ssl/private/key.pem"},
			{"dkim.keys[0].key_file", c.DKIM.Keys[0].KeyFile, filepath.Join(dir, "dkim", "a.pem")},
			{"dkim.keys[1].key_file", c.DKIM.Keys[1].KeyFile, "/etc/dkim/b.pem"},
		} {
			if p.got != p.want {
				t.Errorf("%s = %q, want %q", p.key, p.got, p.want)
			}
		}
	}

	t.Run("absolute config path", func(t *testing.T) {
		path := writeConfig(t, text)
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c, filepath.Dir(path))
	})
	t.Run("relative config path", func(t *testing.T) {
		// The paths stay relative, but to the directory postern runs in,
		// which is where they will be opened from.
		path := writeConfig(t, text)
		t.Chdir(filepath.Dir(filepath.Dir(path)))
		rel := filepath.Join(filepath.Base(filepath.Dir(path)), "postern.yaml")
		c, err := Load(rel)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c, filepath.Dir(rel))
	})
	t.Run("defaults are relative to the file too", func(t *testing.T) {
		path := writeConfig(t, "hostname: mail.example.com\n")
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Dir(path)
		if want := filepath.Join(dir, "data"); c.DataDir != want {
			t.Errorf("data_dir = %q, want %q", c.DataDir, want)
		}
		if want := filepath.Join(dir, "data", "users"); c.Auth.UsersFile != want {
			t.Errorf("auth.users_file = %q, want %q", c.Auth.UsersFile, want)
		}
		if want := filepath.Join(dir, "data", "users.keys"); c.Auth.KeysFile != want {
			t.Errorf("auth.keys_file = %q, want %q", c.Auth.KeysFile, want)
		}
	})
	t.Run("the keys file follows a users file set elsewhere", func(t *testing.T) {
		path := writeConfig(t, "auth: {users_file: /etc/postern/users}\n")
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if c.Auth.KeysFile != "/etc/postern/users.keys" {
			t.Errorf("auth.keys_file = %q, want /etc/postern/users.keys", c.Auth.KeysFile)
		}
	})
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"25MiB", 25 << 20},
		{"512KiB", 512 << 10},
		{"1GiB", 1 << 30},
		{"1048576", 1 << 20},
		{"100B", 100},
		{"0", 0}, // a valid size; the limit check rejects it, not the parser
		{" 25 MiB ", 25 << 20},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, nil", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{
		"25MB",                   // decimal units are not accepted: MB vs MiB is a 5% surprise
		"25mib",                  // units are case sensitive
		"-1",                     // negative
		"-1MiB",                  // negative with a unit
		"1.5MiB",                 // fractions
		"",                       // nothing
		"MiB",                    // a unit without a number
		"0x10",                   // not decimal
		"9223372036854775807GiB", // overflows int64
	} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		} else if !strings.Contains(err.Error(), "is not a size") {
			t.Errorf("ParseSize(%q) error %q does not say what is wrong", in, err)
		}
	}
}

func TestSizeString(t *testing.T) {
	for _, tc := range []struct {
		in   Size
		want string
	}{
		{25 << 20, "25MiB"},
		{512 << 10, "512KiB"},
		{1 << 30, "1GiB"},
		{1536 << 20, "1536MiB"},
		{1<<20 + 1, "1048577"},
		{1000, "1000"},
		{0, "0"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tc.in), got, tc.want)
		}
		// What String prints, ParseSize reads back.
		if back, err := ParseSize(tc.in.String()); err != nil || back != tc.in {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in.String(), back, err, int64(tc.in))
		}
	}
}

func TestDurationDecode(t *testing.T) {
	var v struct {
		D Duration `yaml:"d"`
	}
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"30s", 30 * time.Second},
		{"1h30m", 90 * time.Minute},
		{"120h", 120 * time.Hour},
		{"250ms", 250 * time.Millisecond},
		{"0s", 0},
	} {
		if err := yaml.Unmarshal([]byte("d: "+tc.in), &v); err != nil || v.D.D() != tc.want {
			t.Errorf("decode %q = %v, %v; want %v", tc.in, v.D, err, tc.want)
		}
		// MarshalYAML prints what UnmarshalYAML reads back.
		out, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			D Duration `yaml:"d"`
		}
		if err := yaml.Unmarshal(out, &back); err != nil || back.D != v.D {
			t.Errorf("round trip of %v through %q gave %v, %v", v.D, out, back.D, err)
		}
	}
	for _, in := range []string{"60", "5 minutes", "1d", "[1m]", "{m: 1}", "''"} {
		err := yaml.Unmarshal([]byte("d: "+in), &v)
		if err == nil {
			t.Errorf("decode %q succeeded, want an error", in)
		} else if !strings.Contains(err.Error(), "duration") {
			t.Errorf("decode %q: error %q does not mention a duration", in, err)
		}
	}
}

func TestTrustedPrefixes(t *testing.T) {
	c := Default()
	c.Relay.TrustedNetworks = []string{"10.1.2.3/8", "192.0.2.7", "2001:db8::1", "::ffff:192.0.2.8"}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
		netip.MustParsePrefix("192.0.2.8/32"),
	}
	if got := c.TrustedPrefixes(); !slices.Equal(got, want) {
		t.Errorf("TrustedPrefixes() = %v, want %v", got, want)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "p.yaml", Line: 3, Key: "log.level", Msg: "bad"}, "p.yaml:3: log.level: bad"},
		{Error{File: "p.yaml", Key: "listen", Msg: "bad"}, "p.yaml: listen: bad"},
		{Error{File: "p.yaml", Line: 1, Msg: "bad"}, "p.yaml:1: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
	es := Errors{{File: "a", Line: 1, Msg: "x"}, {File: "a", Line: 2, Msg: "y"}}
	if got, want := es.Error(), "a:1: x\na:2: y"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

// badCases is the matrix of bad configurations (after chasquid's
// test/t-20-bad_configs): testdata/bad/NAME.yaml is the input and NAME.want
// the exact output of `Load`, one error a line. Run with -update to rewrite
// the .want files, then read the diff.
var badCases = []string{
	"bad_tls_policy",
	"unknown_top_key",
	"unknown_nested_key",
	"unknown_key_no_hint",
	"wrong_type",
	"wrong_type_section",
	"bad_size",
	"size_too_big",
	"bad_duration",
	"bad_listen_address",
	"duplicate_listen_address",
	"no_smtp_listener",
	"cert_without_key",
	"bad_trusted_network",
	"bad_log_level",
	"bad_delivery_tls",
	"retry_max_below_initial",
	"dkim_duplicate_selector",
	"dkim_incomplete_key",
	"bad_hostname",
	"not_yaml",
	"tab_indent",
	"ini_file",
	"top_level_list",
	"top_level_scalar",
	"several_errors",
	"bad_resolver_and_smarthost_address",
	"bad_shaping",
}

func TestBadConfigs(t *testing.T) {
	// Every file in testdata/bad belongs to a listed case, so a case cannot
	// be added and forgotten, nor silently dropped.
	files, err := filepath.Glob(filepath.Join("testdata", "bad", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(f), ".yaml"), ".want")
		if !slices.Contains(badCases, name) {
			t.Errorf("%s is not in badCases", f)
		}
	}

	for _, name := range badCases {
		t.Run(name, func(t *testing.T) {
			// A path relative to the package directory (where go test
			// runs) keeps the output, and so the golden file, stable.
			in := "testdata/bad/" + name + ".yaml"
			golden := "testdata/bad/" + name + ".want"
			errs := loadErrors(t, in)
			for i, e := range errs {
				if e.File != in || e.Msg == "" {
					t.Errorf("error %d %q: want File %q and a message", i, e, in)
				}
				if i > 0 && e.Line < errs[i-1].Line {
					t.Errorf("error %d (line %d) comes after line %d: not in file order", i, e.Line, errs[i-1].Line)
				}
			}
			got := errs.Error() + "\n"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Load(%s) errors differ from %s\ngot:\n%s\nwant:\n%s", in, golden, got, want)
			}
		})
	}
}

// baseline is a complete, valid configuration that sets every key. Each
// subtest of TestOneThingWrong changes one line of it.
const baseline = `hostname: mail.example.com
data_dir: /var/lib/postern
log:
  level: info
  format: json
listen:
  submission: 0.0.0.0:587
  submissions: 0.0.0.0:465
  relay: 10.0.0.1:25
  admin: 127.0.0.1:8025
tls:
  cert_file: /etc/postern/cert.pem
  key_file: /etc/postern/key.pem
auth:
  users_file: /etc/postern/users
  keys_file: /etc/postern/app-passwords
  cache_ttl: 30m
  cache_size: 500
relay:
  trusted_networks:
    - 10.0.0.0/8
    - 2001:db8::/32
limits:
  max_message_size: 50MiB
  max_recipients: 200
  redis:
    address: redis.internal:6380
    password_file: redis.password
    prefix: mail-eu.1
    tls: true
delivery:
  resolver: 127.0.0.1:53
  port: 25
  tls: required
  workers: 16
  retry:
    initial: 5m
    max: 2h
    lifetime: 96h
  timeouts:
    connect: 15s
    command: 4m
    data: 8m
    attempt: 20m
  shaping:
    default:
      connections: 10
      messages_per_connection: 50
      rate: 100/s
    providers:
      - name: bigmail
        mx_suffixes: [.bigmail.example]
        connections: 4
        messages_per_connection: 20
        rate: 10/10s
    rate_limit_patterns:
      - code: 421
        enhanced_code: 4.7.28
        text: slow down
        suspend: 1h
dkim:
  keys:
    - domain: example.com
      selector: s2024
      key_file: /etc/postern/dkim/example.com.pem
      sign_subdomains: true
    - domain: example.org
      selector: s2024
      key_file: /etc/postern/dkim/example.org.pem
suppression:
  enabled: true
  expire_after: 720h
bounces:
  domain: bounces.example.com
  secret_file: /etc/postern/bounces.secret
  keep: 72h
shutdown_timeout: 1m
webhooks:
  - name: app
    url: https://hooks.example.com/postern
    secret_file: /etc/postern/webhook.secret
    events: [message.delivered, message.bounced]
    users: [alice]
    retry_for: 48h
  - url: http://127.0.0.1:9000/hook
    secret_file: /etc/postern/local.secret
`

// TestOneThingWrong (STYLE habit 9): the baseline loads cleanly; each
// subtest replaces one line and must get exactly one error, naming the key
// that changed, at the changed line.
func TestOneThingWrong(t *testing.T) {
	t.Run("baseline", func(t *testing.T) {
		c, err := Load(writeConfig(t, baseline))
		if err != nil {
			t.Fatalf("the baseline does not load: %v", err)
		}
		if r := c.Limits.Redis; r == nil || r.Address != "redis.internal:6380" || !filepath.IsAbs(r.PasswordFile) || filepath.Base(r.PasswordFile) != "redis.password" || r.Prefix != "mail-eu.1" || !r.TLS {
			t.Errorf("the baseline's limits.redis loaded as %+v (password_file resolved against the config's directory)", r)
		}
		if c.Auth.KeysFile != "/etc/postern/app-passwords" || c.Auth.CacheTTL.D() != 30*time.Minute || c.Auth.CacheSize != 500 {
			t.Errorf("the baseline's auth section loaded as %+v", c.Auth)
		}
		if c.Limits.MaxMessageSize != 50<<20 || c.Delivery.Retry.Lifetime.D() != 96*time.Hour ||
			len(c.DKIM.Keys) != 2 || !c.DKIM.Keys[0].SignSubdomains || c.Relay.TrustedNetworks[1] != "2001:db8::/32" {
			t.Errorf("the baseline loaded as %+v", c)
		}
		if w := c.Webhooks; len(w) != 2 || w[0].Name != "app" || w[0].RetryFor.D() != 48*time.Hour ||
			!strings.HasPrefix(w[1].Name, "127.0.0.1-") || w[1].RetryFor != DefaultWebhookRetryFor {
			t.Errorf("the baseline's webhooks loaded as %+v", c.Webhooks)
		}
		if c.Bounces.Domain != "bounces.example.com" || c.Bounces.SecretFile != "/etc/postern/bounces.secret" || c.Bounces.Keep.D() != 72*time.Hour {
			t.Errorf("the baseline's bounces section loaded as %+v", c.Bounces)
		}
		if !c.Suppression.Enabled || c.Suppression.ExpireAfter.D() != 720*time.Hour {
			t.Errorf("the baseline's suppression section loaded as %+v", c.Suppression)
		}
	})

	for _, tc := range []struct {
		old, new string // one whole line of baseline, and its replacement
		key      string // the one error's key
		line     string // the line the error points at, when not the changed one
	}{
		{"hostname: mail.example.com", "hostname: mail..example.com", "hostname", ""},
		{"  expire_after: 720h", "  expire_after: -1h", "suppression.expire_after", ""},
		{"  expire_after: 720h", "  expire_after: 30 days", "suppression.expire_after", ""},
		{"  expire_after: 720h", "  expire_afer: 720h", "suppression.expire_afer", ""},
		{"  enabled: true", "  enabled: yes please", "suppression.enabled", ""},
		{"hostname: mail.example.com", `hostname: ""`, "hostname", ""},
		{"hostname: mail.example.com", "hostname: [mail.example.com]", "hostname", ""},
		{"hostname: mail.example.com", "hostnme: mail.example.com", "hostnme", ""},
		{"data_dir: /var/lib/postern", `data_dir: ""`, "data_dir", ""},
		{"  level: info", "  level: trace", "log.level", ""},
		{"  format: json", "  format: xml", "log.format", ""},
		{"  format: json", "  fromat: json", "log.fromat", ""},
		{"  submission: 0.0.0.0:587", "  submission: 0.0.0.0", "listen.submission", ""},
		{"  submission: 0.0.0.0:587", "  submission: 0.0.0.0:0", "listen.submission", ""},
		{"  submissions: 0.0.0.0:465", "  submissions: mail.example.com:465", "listen.submissions", ""},
		{"  relay: 10.0.0.1:25", "  relay: 0.0.0.0:587", "listen.relay", ""},
		{"  admin: 127.0.0.1:8025", "  admin: 0.0.0.0:8025", "listen.admin", ""}, // not loopback, without TLS and a token
		{"  admin: 127.0.0.1:8025", "  admin: 127.0.0.1:http", "listen.admin", ""},
		{"  admin: 127.0.0.1:8025", "  admin: 127.0.0.1:8025\n  mx: 0.0.0.0:465", "listen.mx", "  mx: 0.0.0.0:465"}, // the port of submissions
		{"  domain: bounces.example.com", "  domain: bounces..example.com", "bounces.domain", ""},
		{"  domain: bounces.example.com", "  domain: localhost", "bounces.domain", ""},
		{"  keep: 72h", "  keep: 0s", "bounces.keep", ""},
		{"  key_file: /etc/postern/key.pem", `  key_file: ""`, "tls", "tls:"},
		{"  users_file: /etc/postern/users", `  users_file: ""`, "auth.users_file", ""},
		{"  keys_file: /etc/postern/app-passwords", "  keys_file: /etc/postern/./users", "auth.keys_file", ""},
		{"  cache_ttl: 30m", "  cache_ttl: -1s", "auth.cache_ttl", ""},
		{"  cache_ttl: 30m", "  cache_ttl: 30", "auth.cache_ttl", ""},
		{"  cache_size: 500", "  cache_size: 0", "auth.cache_size", ""},
		{"  cache_size: 500", "  cache_size: 1000001", "auth.cache_size", ""},
		{"  cache_size: 500", "  cache_size: many", "auth.cache_size", ""},
		{"    - 2001:db8::/32", "    - 2001:db8::/129", "relay.trusted_networks[1]", ""},
		{"    - 2001:db8::/32", "    - [10.0.0.0/8]", "relay.trusted_networks[1]", ""},
		{"  max_message_size: 50MiB", "  max_message_size: 50MB", "limits.max_message_size", ""},
		{"  max_message_size: 50MiB", "  max_message_size: 0", "limits.max_message_size", ""},
		{"  max_message_size: 50MiB", "  max_message_size: 1025MiB", "limits.max_message_size", ""},
		{"  max_recipients: 200", "  max_recipients: 0", "limits.max_recipients", ""},
		{"  max_recipients: 200", "  max_recipients: 2e", "limits.max_recipients", ""},
		{"    address: redis.internal:6380", "    address: redis.internal", "limits.redis.address", ""},
		{"    address: redis.internal:6380", "    address: redis.internal:0", "limits.redis.address", ""},
		{"    address: redis.internal:6380", `    address: ""`, "limits.redis.address", ""},
		{"    address: redis.internal:6380", "    address: redis_internal!:6379", "limits.redis.address", ""},
		{"    prefix: mail-eu.1", "    prefix: mail:eu", "limits.redis.prefix", ""},
		{"    prefix: mail-eu.1", "    prefix: mail*", "limits.redis.prefix", ""},
		{"    tls: true", "    tls: maybe", "limits.redis.tls", ""},
		{"    tls: true", "    tsl: true", "limits.redis.tsl", ""},
		{"  resolver: 127.0.0.1:53", "  resolver: 127.0.0.1", "delivery.resolver", ""},
		{"  port: 25", "  port: 0", "delivery.port", ""},
		{"  port: 25", "  port: 65536", "delivery.port", ""},
		{"  tls: required", "  tls: yes", "delivery.tls", ""},
		{"  workers: 16", "  workers: 0", "delivery.workers", ""},
		{"  workers: 16", "  workers: 1001", "delivery.workers", ""},
		{"    initial: 5m", "    initial: 0s", "delivery.retry.initial", ""},
		{"    initial: 5m", "    initial: 5", "delivery.retry.initial", ""},
		{"    max: 2h", "    max: 1m", "delivery.retry.max", ""},
		{"    max: 2h", "    max: -2h", "delivery.retry.max", ""},
		{"    lifetime: 96h", "    lifetime: 4d", "delivery.retry.lifetime", ""},
		{"    lifetime: 96h", "    lifetime: 0s", "delivery.retry.lifetime", ""},
		{"    - domain: example.org", "    - domain: EXAMPLE.com", "dkim.keys[1]", ""}, // same as keys[0]: case is ignored
		{"    - domain: example.org", "    - domain: example..org", "dkim.keys[1].domain", ""},
		{"      selector: s2024\n      key_file: /etc/postern/dkim/example.com.pem", "      selector: s_2024!\n      key_file: /etc/postern/dkim/example.com.pem", "dkim.keys[0].selector", "      selector: s_2024!"},
		{"      key_file: /etc/postern/dkim/example.org.pem", `      key_file: ""`, "dkim.keys[1].key_file", ""},
		{"  - name: app", "  - name: my app", "webhooks[0].name", ""},
		{"  - url: http://127.0.0.1:9000/hook", "  - name: app  # again\n    url: http://127.0.0.1:9000/hook", "webhooks[1].name", "  - name: app  # again"},
		{"    url: https://hooks.example.com/postern", "    url: http://hooks.example.com/postern", "webhooks[0].url", ""}, // plain http off loopback
		{"    url: https://hooks.example.com/postern", "    url: ftp://hooks.example.com/postern", "webhooks[0].url", ""},
		{"    url: https://hooks.example.com/postern", "    url: https://user:pw@hooks.example.com/postern", "webhooks[0].url", ""},
		{"    url: https://hooks.example.com/postern", "    url: /postern", "webhooks[0].url", ""},
		{"    secret_file: /etc/postern/local.secret", `    secret_file: ""`, "webhooks[1].secret_file", ""},
		{"    events: [message.delivered, message.bounced]", "    events: [message.delivered, message.opened]", "webhooks[0].events[1]", ""},
		{"    users: [alice]", `    users: [""]`, "webhooks[0].users[0]", ""},
		{"    retry_for: 48h", "    retry_for: -1h", "webhooks[0].retry_for", ""},
		{"    retry_for: 48h", "    retry_for: 2d", "webhooks[0].retry_for", ""},
		{"      sign_subdomains: true", "      sign_subdomains: sometimes", "dkim.keys[0].sign_subdomains", ""},
		{"shutdown_timeout: 1m", "shutdown_timeout: 0s", "shutdown_timeout", ""},
		{"    connect: 15s", "    connect: 0s", "delivery.timeouts.connect", ""},
		{"    attempt: 20m", "    attempt: soon", "delivery.timeouts.attempt", ""},
		{"      connections: 10", "      connections: 0", "delivery.shaping.default.connections", ""},
		{"      connections: 10", "      conections: 10", "delivery.shaping.default.conections", ""},
		{"      messages_per_connection: 50", "      messages_per_connection: -1", "delivery.shaping.default.messages_per_connection", ""},
		{"      rate: 100/s", "      rate: fast", "delivery.shaping.default.rate", ""},
		{"      rate: 100/s", "      rate: 100/0s", "delivery.shaping.default.rate", ""},
		{"      - name: bigmail", "      - name: Big Mail", "delivery.shaping.providers[0].name", ""},
		{"        mx_suffixes: [.bigmail.example]", "        mx_suffixes: [bigmail.example]", "delivery.shaping.providers[0].mx_suffixes[0]", ""},
		{"        mx_suffixes: [.bigmail.example]", "        mx_suffixes: []", "delivery.shaping.providers[0].mx_suffixes", ""},
		{"        connections: 4", "        connections: -4", "delivery.shaping.providers[0].connections", ""},
		{"        rate: 10/10s", "        rate: 10/s/s", "delivery.shaping.providers[0].rate", ""},
		{"      - code: 421", "      - code: 550", "delivery.shaping.rate_limit_patterns[0].code", ""},
		{"        enhanced_code: 4.7.28", "        enhanced_code: 5.7.28", "delivery.shaping.rate_limit_patterns[0].enhanced_code", ""},
		{"        text: slow down", "        text: slow (down", "delivery.shaping.rate_limit_patterns[0].text", ""},
		{"        suspend: 1h", "        suspend: -1h", "delivery.shaping.rate_limit_patterns[0].suspend", ""},
	} {
		t.Run(tc.key+"="+strings.TrimSpace(tc.new), func(t *testing.T) {
			if n := strings.Count(baseline, tc.old+"\n"); n != 1 {
				t.Fatalf("%q is %d lines of the baseline, want 1", tc.old, n)
			}
			text := strings.Replace(baseline, tc.old+"\n", tc.new+"\n", 1)
			path := writeConfig(t, text)
			errs := loadErrors(t, path)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), errs)
			}
			e := errs[0]
			if e.Key != tc.key {
				t.Errorf("error %q names key %q, want %q", e, e.Key, tc.key)
			}
			at := tc.line
			if at == "" {
				at = tc.new
			}
			if want := lineOf(text, at); e.Line != want {
				t.Errorf("error %q is at line %d, want %d", e, e.Line, want)
			}
			if e.File != path {
				t.Errorf("error %q names file %q, want %q", e, e.File, path)
			}
		})
	}

	// The one case that needs three lines changed.
	t.Run("listen=no SMTP listener", func(t *testing.T) {
		text := baseline
		for _, l := range []string{"  submission: 0.0.0.0:587\n", "  submissions: 0.0.0.0:465\n", "  relay: 10.0.0.1:25\n"} {
			name, _, _ := strings.Cut(l, ":")
			text = strings.Replace(text, l, name+": \"\"\n", 1)
		}
		errs := loadErrors(t, writeConfig(t, text))
		if len(errs) != 1 || errs[0].Key != "listen" || errs[0].Line != lineOf(text, "listen:") {
			t.Errorf("got %q, want one error for key listen at its line", errs)
		}
	})
}

// lineOf returns the 1-based line number at which s (a line or the first
// of several) starts in text, or 0.
func lineOf(text, s string) int {
	first, _, _ := strings.Cut(s, "\n")
	for i, l := range strings.Split(text, "\n") {
		if l == first {
			return i + 1
		}
	}
	return 0
}

func TestExampleFileLoads(t *testing.T) {
	// The example shipped next to the loader must stay valid: a reader
	// copies it first.
	c, err := Load("postern.example.yaml")
	if err != nil {
		t.Fatalf("postern.example.yaml: %v", err)
	}
	if c.Hostname == "" {
		t.Error("postern.example.yaml loaded with no hostname")
	}
}

// A key given twice is a mistake whose effect the reader cannot guess. It
// must be reported like any other problem: one error, at the second line,
// naming the key, and not lost when the file has other problems too.
func TestDuplicateKeys(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // "LINE KEY" of each error, in order
	}{
		{"alone", "hostname: a.example\nhostname: b.example\n", []string{"2 hostname"}},
		{"nested", "listen:\n  relay: 127.0.0.1:25\n  relay: 127.0.0.1:26\n", []string{"3 listen.relay"}},
		{"with another error", "limits: {max_message_size: 25MB}\nlimits: {max_recipients: 0}\n",
			[]string{"1 limits.max_message_size", "2 limits"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, writeConfig(t, tc.text))
			var got []string
			for _, e := range errs {
				got = append(got, fmt.Sprintf("%d %s", e.Line, e.Key))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got errors\n%v\nwant (line key) %q", errs, tc.want)
			}
		})
	}
}

// yaml.Unmarshal reads the first document only; a second one, which can
// only be a mistake in a config file, is silently ignored.
func TestSecondDocumentIsAnError(t *testing.T) {
	errs := loadErrors(t, writeConfig(t, "hostname: a.example\n---\nhostname: b.example\n"))
	if len(errs) != 1 || errs[0].Line != 2 {
		t.Errorf("got %v, want one error at line 2", errs)
	}
}

// yaml.v3 leaves "line N: " out of syntax errors on the first line, so the
// error has no line and keeps yaml.v3's "yaml: " prefix.
func TestSyntaxErrorOnFirstLine(t *testing.T) {
	errs := loadErrors(t, writeConfig(t, "\thostname: a.example\n"))
	if len(errs) != 1 || errs[0].Line != 1 || strings.Contains(errs[0].Msg, "yaml:") {
		t.Errorf("got %q, want one error at line 1 without yaml.v3's prefix", errs)
	}
}

// acmeBaseline is a valid configuration with tls.acme; each subtest of
// TestACMEOneThingWrong changes one line of it.
const acmeBaseline = `hostname: mail.example.com
tls:
  acme:
    email: postmaster@example.com
    directory: https://acme.example.net/dir
    challenge: dns-01
    dns_hook: hooks/dns
    hostnames:
      - smtp.example.com
      - "*.mx.example.com"
auth: {users_file: users}
`

// TestACMEOneThingWrong: tls.acme as STYLE habit 9 wants it: the baseline
// loads, with defaults and paths filled in; each broken line gets exactly
// one error, naming its key, at its line.
func TestACMEOneThingWrong(t *testing.T) {
	t.Run("baseline", func(t *testing.T) {
		path := writeConfig(t, acmeBaseline)
		c, err := Load(path)
		if err != nil {
			t.Fatalf("the baseline does not load: %v", err)
		}
		a := c.TLS.ACME
		if a == nil || a.DNSHook != filepath.Join(filepath.Dir(path), "hooks/dns") || a.Challenge != ChallengeDNS {
			t.Fatalf("tls.acme loaded as %+v", a)
		}
		if got := c.CertNames(); !slices.Equal(got, []string{"mail.example.com", "smtp.example.com", "*.mx.example.com"}) {
			t.Errorf("CertNames = %v", got)
		}
		c, err = Load(writeConfig(t, "hostname: mail.example.com\ntls: {acme: {}}\nauth: {users_file: users}\n"))
		if err != nil {
			t.Fatalf("acme: {} does not load: %v", err)
		}
		if a := c.TLS.ACME; a == nil || a.Directory != LetsEncryptDirectory || a.Challenge != ChallengeTLSALPN {
			t.Errorf("acme: {} loaded as %+v, want the defaults", a)
		}
		if c, err := Load(writeConfig(t, "hostname: mail.example.com\n")); err != nil || c.TLS.ACME != nil || c.CertNames() != nil {
			t.Errorf("without tls.acme: %v, %+v", err, c.TLS)
		}
	})
	for _, tc := range []struct {
		old, new string
		key      string
		line     string
	}{
		{"hostname: mail.example.com", "hostname: mail", "hostname", ""},
		{"hostname: mail.example.com", "hostname: localhost", "hostname", ""},
		{"  acme:", "  cert_file: /c.pem\n  key_file: /k.pem\n  acme:", "tls.acme", "  acme:"},
		{"    email: postmaster@example.com", "    email: postmaster", "tls.acme.email", ""},
		{"    email: postmaster@example.com", "    email: a b@example.com", "tls.acme.email", ""},
		{"    directory: https://acme.example.net/dir", "    directory: http://acme.example.net/dir", "tls.acme.directory", ""},
		{"    directory: https://acme.example.net/dir", "    directory: acme.example.net", "tls.acme.directory", ""},
		{"    challenge: dns-01", "    challenge: tls-sni-01", "tls.acme.challenge", ""},
		{"    challenge: dns-01", "    challenge: dns-01\n    challenge_listen: :443", "tls.acme.challenge_listen", "    challenge_listen: :443"},
		{"    dns_hook: hooks/dns", `    dns_hook: ""`, "tls.acme.dns_hook", ""},
		{"      - smtp.example.com", "      - smtp", "tls.acme.hostnames[0]", ""},
		{"      - smtp.example.com", "      - mail.example.com", "tls.acme.hostnames[0]", ""},
		{"      - smtp.example.com", "      - smtp..example.com", "tls.acme.hostnames[0]", ""},
		{"  acme:", "  acme:\n    challenge_listen: 443", "tls.acme.challenge_listen", "    challenge_listen: 443"},
	} {
		t.Run(tc.key+"="+strings.TrimSpace(tc.new), func(t *testing.T) {
			text := strings.Replace(acmeBaseline, tc.old+"\n", tc.new+"\n", 1)
			if text == acmeBaseline {
				t.Fatalf("%q is not a line of the baseline", tc.old)
			}
			if strings.Contains(tc.new, "challenge_listen: 443") {
				// Keep dns-01 out of it: the listener itself is wrong.
				text = strings.Replace(text, "    challenge: dns-01\n    dns_hook: hooks/dns\n", "    challenge: http-01\n", 1)
				text = strings.Replace(text, "      - \"*.mx.example.com\"\n", "", 1)
			}
			errs := loadErrors(t, writeConfig(t, text))
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(errs), errs)
			}
			at := tc.line
			if at == "" {
				at = tc.new
			}
			if e := errs[0]; e.Key != tc.key || e.Line != lineOf(text, at) {
				t.Errorf("error %q: key %q at line %d, want %q at line %d", e, e.Key, e.Line, tc.key, lineOf(text, at))
			}
		})
	}
	t.Run("wildcard without dns-01", func(t *testing.T) {
		text := strings.Replace(acmeBaseline, "    challenge: dns-01\n    dns_hook: hooks/dns\n", "    challenge: http-01\n", 1)
		errs := loadErrors(t, writeConfig(t, text))
		if len(errs) != 1 || errs[0].Key != "tls.acme.hostnames[1]" {
			t.Errorf("got %v, want one error for tls.acme.hostnames[1]", errs)
		}
	})
	t.Run("acme with no value", func(t *testing.T) {
		errs := loadErrors(t, writeConfig(t, "hostname: mail.example.com\ntls:\n  acme:\nauth: {users_file: users}\n"))
		if len(errs) != 1 || errs[0].Key != "tls.acme" || errs[0].Line != 3 {
			t.Errorf("got %v, want one error for tls.acme at line 3", errs)
		}
	})
}

// TestAdminOffLoopback: an admin listener beyond loopback is allowed with
// TLS and refused without; allowed_hosts is read.
func TestAdminOffLoopback(t *testing.T) {
	base := "hostname: mail.example.com\nlisten: {admin: \"0.0.0.0:8025\", relay: \"127.0.0.1:2525\", submission: \"\", submissions: \"\"}\n"
	for _, tt := range []struct {
		admin string
		ok    bool
	}{
		{"admin: {tls: true, token_file: token, allowed_hosts: [postern.example.com, \"10.0.0.5:8025\"]}\n", true},
		{"admin: {tls: true, allowed_hosts: [a.example, b.example]}\n", true},
		{"admin: {token_file: token}\n", false},
		{"admin: {tls: true, token_file: token, allowed_hosts: [\"a b\"]}\n", false},
	} {
		path := writeConfig(t, base+tt.admin)
		if tt.ok {
			if c, err := Load(path); err != nil || len(c.Admin.AllowedHosts) != 2 {
				t.Errorf("%s: %v", tt.admin, err)
			}
			continue
		}
		if errs := loadErrors(t, path); len(errs) != 1 {
			t.Errorf("%s: errors %v, want 1", tt.admin, errs)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:8025": true, "127.1.2.3:1": true, "[::1]:8025": true, "localhost:8025": true,
		"0.0.0.0:8025": false, ":8025": false, "[::]:8025": false, "10.0.0.5:8025": false, "8025": false} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) = %v", addr, !want)
		}
	}
}

// TestTLSPolicyLoads: a valid delivery.tls_policy and tls_reports load as
// written; DANE is trusted only with a loopback resolver.
func TestTLSPolicyLoads(t *testing.T) {
	c, err := Load(writeConfig(t, `hostname: mail.example.test
delivery:
  resolver: 127.0.0.1:53
  tls_policy:
    example.org: {mode: dane}
    bank.example: {mode: verify}
  tls_reports: {enabled: false, organization: Example, contact: tlsrpt@example.test}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Delivery.TLSPolicy) != 2 || c.Delivery.TLSPolicy["example.org"].Mode != "dane" || c.Delivery.TLSPolicy["bank.example"].Mode != "verify" {
		t.Errorf("tls_policy = %v", c.Delivery.TLSPolicy)
	}
	if !c.Delivery.MTASTS || !c.DANEResolver() || c.Delivery.TLSReports.Enabled || c.TLSReportContact() != "tlsrpt@example.test" || c.TLSReportOrganization() != "Example" {
		t.Errorf("delivery = %+v", c.Delivery)
	}
	c.Delivery.Resolver = "192.0.2.53:53"
	if c.DANEResolver() {
		t.Error("DANE trusts a resolver off this machine")
	}
	c.Delivery.Resolver, c.Delivery.DANE = "127.0.0.1:53", false
	if c.DANEResolver() {
		t.Error("DANE on with delivery.dane: false")
	}
	if d := Default(); d.TLSReportContact() != "postmaster@localhost" || !d.Delivery.TLSReports.Enabled {
		t.Errorf("defaults: contact %q, enabled %v", d.TLSReportContact(), d.Delivery.TLSReports.Enabled)
	}
}

// TestMXNeedsBounceDomain: listen.mx accepts mail for the bounce domain
// only, so it cannot run without one.
func TestMXNeedsBounceDomain(t *testing.T) {
	text := strings.Replace(baseline, "  domain: bounces.example.com\n", "  domain: \"\"\n", 1)
	text = strings.Replace(text, "  admin: 127.0.0.1:8025\n", "  admin: 127.0.0.1:8025\n  mx: 0.0.0.0:25\n", 1)
	errs := loadErrors(t, writeConfig(t, text))
	if len(errs) != 1 || errs[0].Key != "listen.mx" {
		t.Errorf("got %q, want one error for listen.mx", errs)
	}
	if _, err := Load(writeConfig(t, strings.Replace(text, "  domain: \"\"\n", "  domain: bounces.example.com\n", 1))); err != nil {
		t.Errorf("with the domain: %v", err)
	}
}

// TestAPIListener: listen.api is off in a config file that does not set
// it, on in the built-in config, refused off loopback without api.tls, and
// needs the users file whose keys it accepts.
func TestAPIListener(t *testing.T) {
	if c, err := Load(writeConfig(t, "hostname: mail.example.com\n")); err != nil || c.Listen.API != "" {
		t.Errorf("config file without listen.api: API %q, %v; want off", c.Listen.API, err)
	}
	if c, err := Load(Builtin); err != nil || c.Listen.API != BuiltinAPI {
		t.Errorf("built-in config: API %q, %v; want %s", c.Listen.API, err, BuiltinAPI)
	}
	base := "hostname: mail.example.com\n"
	for _, tt := range []struct {
		conf string
		keys []string // the keys blamed; none: valid
	}{
		{"listen: {api: \"127.0.0.1:8080\"}\n", nil},
		{"listen: {api: \"0.0.0.0:443\"}\napi: {tls: true, allowed_hosts: [api.example.com]}\n", nil},
		{"listen: {api: \"0.0.0.0:8080\"}\n", []string{"listen.api"}},
		{"listen: {api: \"127.0.0.1:8080\"}\napi: {allowed_hosts: [\"a/b\"]}\n", []string{"api.allowed_hosts[0]"}},
		{"listen: {api: \"127.0.0.1:8025\"}\n", []string{"listen.api"}}, // the admin listener's address
		{"listen: {api: \"127.0.0.1:8080\", submission: \"\", submissions: \"\"}\nauth: {users_file: \"\"}\n", []string{"auth.users_file"}},
	} {
		path := writeConfig(t, base+tt.conf)
		if tt.keys == nil {
			if _, err := Load(path); err != nil {
				t.Errorf("%s: %v", tt.conf, err)
			}
			continue
		}
		errs := loadErrors(t, path)
		var got []string
		for _, e := range errs {
			got = append(got, e.Key)
		}
		if !slices.Equal(got, tt.keys) {
			t.Errorf("%s: errors %v, want keys %v", tt.conf, errs, tt.keys)
		}
	}
}

// TestDefaultRateLimitPatterns: the built-in patterns compile and tell the
// providers' "slow down" replies from other temporary failures.
func TestDefaultRateLimitPatterns(t *testing.T) {
	matches := func(code int, enh, text string) bool {
		for _, p := range Default().Delivery.Shaping.RateLimitPatterns {
			re, err := p.TextRE()
			if err != nil {
				t.Fatalf("%+v: %v", p, err)
			}
			if (p.Code == 0 || p.Code == code) && (p.EnhancedCode == "" || p.EnhancedCode == enh) && (re == nil || re.MatchString(text)) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		code      int
		enh, text string
		want      bool
	}{
		{421, "4.7.28", "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address", true},
		{421, "4.7.0", "Try again later, closing connection.", true},
		{421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints", true},
		{451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", true},
		{421, "", "Too many concurrent SMTP connections from this IP address; please try again later", true},
		{450, "4.2.0", "Greylisted, please try again later", false},
		{452, "4.5.3", "Too many recipients", false},
		{451, "4.3.0", "Temporary local problem", false},
	} {
		if got := matches(tc.code, tc.enh, tc.text); got != tc.want {
			t.Errorf("%d %s %s: rate limit %v, want %v", tc.code, tc.enh, tc.text, got, tc.want)
		}
	}
}

// TestShapingDeadFor: the dead-destination waits are positive and in
// order.
func TestShapingDeadFor(t *testing.T) {
	base := "hostname: mail.example.com\n"
	for _, tt := range []struct {
		conf string
		keys []string
	}{
		{"delivery: {shaping: {dead_for: 30s, dead_for_max: 10m}}\n", nil},
		{"delivery: {shaping: {dead_for: 0s}}\n", []string{"delivery.shaping.dead_for"}},
		{"delivery: {shaping: {dead_for: 2h}}\n", []string{"delivery.shaping.dead_for_max"}},
	} {
		path := writeConfig(t, base+tt.conf)
		if tt.keys == nil {
			c, err := Load(path)
			if err != nil || c.Delivery.Shaping.DeadFor.D() != 30*time.Second || c.Delivery.Shaping.DeadForMax.D() != 10*time.Minute {
				t.Errorf("%s: %+v, %v", tt.conf, c.Delivery.Shaping, err)
			}
			continue
		}
		var got []string
		for _, e := range loadErrors(t, path) {
			got = append(got, e.Key)
		}
		if !slices.Equal(got, tt.keys) {
			t.Errorf("%s: errors %v, want keys %v", tt.conf, got, tt.keys)
		}
	}
}

package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The challenge types a Manager can answer (RFC 8555 §8.3, §8.4; RFC 8737).
const (
	TLSALPN01 = "tls-alpn-01"
	HTTP01    = "http-01"
	DNS01     = "dns-01"
)

// LetsEncrypt is Let's Encrypt's production directory, the default CA.
const LetsEncrypt = "https://acme-v02.api.letsencrypt.org/directory"

// DefaultChallengePort is the port the CA connects to for each challenge:
// RFC 8737 §3 (443 for tls-alpn-01) and RFC 8555 §8.3 (80 for http-01). A
// ChallengeListen on another port needs a port forward from that one.
var DefaultChallengePort = map[string]int{TLSALPN01: 443, HTTP01: 80}

// Options configure a Manager. Names, Challenge and StorageDir are
// required; so is DNSHook for dns-01.
type Options struct {
	// Names are the host names to hold certificates for, one certificate
	// each. The first is the server's hostname: its certificate is the one
	// served to clients that name no server (SNI) or one not in Names.
	Names []string
	// Email is given to the CA for the account ("" for none); Let's
	// Encrypt no longer mails expiry notices, but other CAs may.
	Email string
	// Directory is the CA's ACME directory URL; "" is LetsEncrypt.
	// Configuring a CA is taken as accepting its subscriber agreement.
	Directory string
	// Challenge is TLSALPN01, HTTP01 or DNS01.
	Challenge string
	// ChallengeListen is the address tls-alpn-01 or http-01 is answered
	// on while a challenge is being solved ("" is ":" and the challenge's
	// DefaultChallengePort). Unused for dns-01.
	ChallengeListen string
	// DNSHook is the command that publishes and removes dns-01 records
	// (see hook.go).
	DNSHook string
	// Resolver is the DNS server ("IP:port") asked whether a dns-01
	// record is visible yet; "" uses the system's.
	Resolver string
	// StorageDir holds the account, keys and certificates (data_dir/acme).
	StorageDir string
	// Logger receives postern's lines about certificates; certmagic's
	// own lines go to it too, from warning level up.
	Logger *zap.Logger

	// CARoots, when set, are the roots trusted for the CA's HTTPS API
	// (nil: the system's). For tests against a local CA.
	CARoots *x509.CertPool
	// RenewCheckInterval is how often certificates are checked for
	// renewal; 0 is certmagic's 10 minutes. For tests.
	RenewCheckInterval time.Duration
	// PropagationTimeout bounds how long dns-01 waits for its record to
	// be visible before letting the CA look anyway; 0 is 2 minutes.
	PropagationTimeout time.Duration
}

// Manager obtains and renews certificates for Options.Names in the
// background and hands out the current ones.
type Manager struct {
	names  []string
	cache  *certmagic.Cache
	magic  *certmagic.Config
	log    *zap.Logger
	cancel context.CancelFunc
}

// New checks opts and returns a Manager that has not started yet.
func New(opts Options) (*Manager, error) {
	if len(opts.Names) == 0 {
		return nil, errors.New("acme: no names")
	}
	names := make([]string, len(opts.Names))
	for i, n := range opts.Names {
		names[i] = strings.ToLower(strings.TrimSuffix(n, "."))
	}
	if opts.StorageDir == "" {
		return nil, errors.New("acme: no storage directory")
	}
	if opts.Directory == "" {
		opts.Directory = LetsEncrypt
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	// certmagic reports every step at info level; postern logs what an
	// operator needs from its events (event below) and keeps only
	// certmagic's warnings and errors, which carry the CA's words.
	quiet := log.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)).Named("certmagic")

	m := &Manager{names: names, log: log}
	iss := certmagic.ACMEIssuer{
		CA:           opts.Directory,
		Email:        opts.Email,
		Agreed:       true,
		TrustedRoots: opts.CARoots,
		Logger:       quiet,
	}
	switch opts.Challenge {
	case TLSALPN01, HTTP01:
		host, port, err := challengeAddr(opts.Challenge, opts.ChallengeListen)
		if err != nil {
			return nil, err
		}
		iss.ListenHost = host
		iss.DisableHTTPChallenge = opts.Challenge != HTTP01
		iss.DisableTLSALPNChallenge = opts.Challenge != TLSALPN01
		if opts.Challenge == HTTP01 {
			iss.AltHTTPPort = port
		} else {
			iss.AltTLSALPNPort = port
		}
	case DNS01:
		if opts.DNSHook == "" {
			return nil, errors.New("acme: dns-01 needs a hook command")
		}
		// With a dns-01 solver certmagic tries no other challenge.
		iss.DNS01Solver = &hookSolver{
			command: opts.DNSHook,
			lookup:  txtLookup(opts.Resolver),
			timeout: opts.PropagationTimeout,
			log:     log,
		}
	default:
		return nil, fmt.Errorf("acme: challenge %q is not %s, %s or %s", opts.Challenge, TLSALPN01, HTTP01, DNS01)
	}

	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: opts.RenewCheckInterval,
		Logger:             quiet,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage:           &certmagic.FileStorage{Path: opts.StorageDir},
		DefaultServerName: names[0],
		OnEvent:           m.event,
		Logger:            quiet,
	})
	m.magic.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(m.magic, iss)}
	return m, nil
}

// challengeAddr splits ChallengeListen, defaulting the port.
func challengeAddr(challenge, listen string) (string, int, error) {
	if listen == "" {
		return "", DefaultChallengePort[challenge], nil
	}
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("acme: challenge listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("acme: challenge listen address %q: bad port", listen)
	}
	return host, port, nil
}

// Start begins managing the certificates: each is loaded from storage, or
// obtained from the CA, in the background, and renewed when due. It does
// not wait: until a name has a certificate, Certificate returns nil for
// it. A failure is logged and retried with backoff by certmagic.
func (m *Manager) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	if err := m.magic.ManageAsync(ctx, m.names); err != nil {
		cancel()
		return fmt.Errorf("acme: %w", err)
	}
	return nil
}

// Stop ends renewals and obtains in progress.
func (m *Manager) Stop() {
	if m.cancel != nil {
		m.cancel()
	}
	m.cache.Stop()
}

// Certificate returns the certificate for a TLS handshake, or nil when
// there is none yet (relay/certs then serves its own). A client that
// names no server, or one this Manager holds no certificate for, gets
// the hostname's: SMTP clients often send no SNI, or connect by address.
// It never reaches the network: only certificates already obtained are
// served.
func (m *Manager) Certificate(hello *tls.ClientHelloInfo) *tls.Certificate {
	h := *hello
	if !m.holds(h.ServerName) {
		h.ServerName = m.names[0]
	}
	// No challenge certificate here: challenges are answered on their own
	// listener, never on a mail port.
	h.SupportedProtos = nil
	c, err := m.magic.GetCertificate(&h)
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return nil
	}
	return c
}

// Stored returns the certificate chain stored for name under storageDir
// (the newest, when several CAs issued one), or nil, nil when there is
// none: what a Manager on that directory serves once it runs. For `postern
// doctor`, which reads it without starting one.
func Stored(storageDir, name string) ([]*x509.Certificate, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	// certmagic's layout: certificates/<CA>/<name>/<name>.crt
	files, err := filepath.Glob(filepath.Join(storageDir, "certificates", "*", name, name+".crt"))
	if err != nil {
		return nil, err
	}
	var newest []*x509.Certificate
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var chain []*x509.Certificate
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if c, err := x509.ParseCertificate(b.Bytes); err == nil {
				chain = append(chain, c)
			}
		}
		if len(chain) > 0 && (newest == nil || chain[0].NotAfter.After(newest[0].NotAfter)) {
			newest = chain
		}
	}
	return newest, nil
}

// holds reports whether name is one of the names, or matches a wildcard
// one ("*.example.test" holds "a.example.test", one label deep).
func (m *Manager) holds(name string) bool {
	name = strings.ToLower(name)
	for _, n := range m.names {
		if n == name {
			return true
		}
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			if i := strings.IndexByte(name, '.'); i > 0 && name[i+1:] == rest {
				return true
			}
		}
	}
	return false
}

// event turns certmagic's events into postern's log lines. Certmagic
// renews a certificate once a third of its lifetime is left (30 days of
// Let's Encrypt's 90), and retries a failed renewal at every check (10
// minutes), so a failure is warned about weeks before the certificate
// expires, each time with the time left.
func (m *Manager) event(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtained":
		if renewal {
			m.log.Info("TLS certificate renewed", zap.String("name", name))
		} else {
			m.log.Info("TLS certificate obtained", zap.String("name", name))
		}
	case "cert_failed":
		err, _ := data["error"].(error)
		if renewal {
			left, _ := data["remaining"].(time.Duration)
			m.log.Warn("TLS certificate renewal failed: the old certificate stays in service, and renewal is retried",
				zap.String("name", name), zap.Duration("expires_in", left.Round(time.Second)), zap.Error(err))
		} else {
			m.log.Warn("could not obtain a TLS certificate: the self-signed (or configured) one stays in service, and postern retries",
				zap.String("name", name), zap.Error(err))
		}
	case "cached_managed_cert":
		// Just obtained, or loaded from storage at start: served from now
		// on. (A renewed certificate replaces the old one without an
		// event of its own, right after "TLS certificate renewed".)
		sans, _ := data["sans"].([]string)
		m.log.Info("TLS certificate in service", zap.Strings("names", sans))
	}
	return nil
}

package outbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"postern/queue"
	"postern/relay/status"
	"postern/relay/tlspolicy"
)

// SmarthostTLS is how a smarthost connection is encrypted. There is no
// opportunistic mode: a smarthost is a server we chose, so it either does
// TLS or it is configured not to.
type SmarthostTLS int

const (
	// STARTTLS upgrades the connection (RFC 3207, port 587 or 25); a
	// smarthost that does not offer it gets no message.
	STARTTLS SmarthostTLS = iota
	// ImplicitTLS starts TLS at once (RFC 8314 §3.3, port 465).
	ImplicitTLS
	// NoTLS never encrypts; AUTH is refused then.
	NoTLS
)

func (t SmarthostTLS) String() string {
	switch t {
	case STARTTLS:
		return "starttls"
	case ImplicitTLS:
		return "implicit"
	case NoTLS:
		return "none"
	}
	return fmt.Sprintf("SmarthostTLS(%d)", int(t))
}

// ParseSmarthostTLS parses a config value: "starttls", "implicit" or
// "none". The empty string is the default, STARTTLS.
func ParseSmarthostTLS(s string) (SmarthostTLS, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "starttls":
		return STARTTLS, nil
	case "implicit":
		return ImplicitTLS, nil
	case "none":
		return NoTLS, nil
	}
	return 0, fmt.Errorf("unknown smarthost TLS mode %q (want starttls, implicit or none)", s)
}

// SmarthostConfig describes one upstream relay. The zero value of each
// optional field is the safe choice: STARTTLS, a verified certificate, no
// AUTH.
type SmarthostConfig struct {
	// Name identifies the smarthost in routes, logs and Result.RemoteMTA.
	Name string
	// Address is "host:port". The certificate must be valid for host.
	Address string
	TLS     SmarthostTLS
	// InsecureSkipVerify accepts any certificate: the connection is still
	// encrypted, but not authenticated, so an active attacker could read
	// the password.
	InsecureSkipVerify bool
	// Username, when set, makes every session authenticate with AUTH PLAIN
	// or LOGIN, over TLS only. The password is the first line of
	// PasswordFile or the value of the environment variable PasswordEnv,
	// read once by NewSmarthost.
	Username     string
	PasswordFile string
	PasswordEnv  string
}

// Errors of NewSmarthost, for errors.Is.
var (
	ErrNoPassword    = errors.New("no password")
	ErrClearPassword = errors.New("the password would be sent without TLS")
)

// Smarthost delivers every message to one upstream relay, whatever the
// recipients' domain. It implements queue.Deliverer; Failover tries
// several in turn.
type Smarthost struct {
	client
	cfg  SmarthostConfig
	host string
	auth *credentials
}

var _ queue.Deliverer = (*Smarthost)(nil)

// NewSmarthost checks cfg, reads the password when a username is set, and
// returns the smarthost. Of opts, Port, Resolver and TLS do not apply;
// RootCAs is the pool certificates are verified against (nil: the
// system's).
func NewSmarthost(cfg SmarthostConfig, opts Options) (*Smarthost, error) {
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil || host == "" {
		return nil, fmt.Errorf("smarthost %q: address %q is not host:port", cfg.Name, cfg.Address)
	}
	h := &Smarthost{cfg: cfg, host: host}
	if cfg.Username != "" {
		if cfg.TLS == NoTLS {
			return nil, fmt.Errorf("smarthost %q: %w: a username is set with tls none", cfg.Name, ErrClearPassword)
		}
		pw, err := password(cfg)
		if err != nil {
			return nil, fmt.Errorf("smarthost %q: %w", cfg.Name, err)
		}
		h.auth = &credentials{username: cfg.Username, password: secret(pw)}
	}
	opts = opts.withDefaults()
	h.client = newClient(opts)
	return h, nil
}

// Close closes the connections kept open for reuse; see MX.Close.
func (h *Smarthost) Close() error {
	h.pool.close()
	return nil
}

// password reads the password cfg points to.
func password(cfg SmarthostConfig) (string, error) {
	switch {
	case cfg.PasswordFile != "":
		pw, err := ReadPasswordFile(cfg.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("password_file: %w", err)
		}
		return pw, nil
	case cfg.PasswordEnv != "":
		pw, ok := os.LookupEnv(cfg.PasswordEnv)
		if !ok || pw == "" {
			return "", fmt.Errorf("%w: environment variable %s is not set", ErrNoPassword, cfg.PasswordEnv)
		}
		return pw, nil
	}
	return "", fmt.Errorf("%w: a username is set without password_file or password_env", ErrNoPassword)
}

// ReadPasswordFile returns the first line of the file at path, without its
// line end. An empty first line is an error. Errors never quote the
// file's content.
func ReadPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("%w: %s: the first line is empty", ErrNoPassword, path)
	}
	return line, nil
}

// RemoteMTA is what Result.RemoteMTA says for this smarthost: the host
// name first, as the Remote-MTA field of a DSN wants it (RFC 3464
// §2.3.5), then the route in a comment, so that `postern queue show` and
// bounces tell a smarthost from an MX.
func (h *Smarthost) RemoteMTA() string {
	return h.host + " (smarthost " + h.cfg.Name + ")"
}

// Deliver makes one attempt through this smarthost alone. See Failover.
func (h *Smarthost) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	return Failover{h}.Deliver(ctx, d)
}

func (h *Smarthost) peer(route string, failover bool) peer {
	p := peer{
		addr:     h.cfg.Address,
		host:     h.host,
		kind:     kindSmarthost,
		name:     h.cfg.Name,
		mta:      h.RemoteMTA(),
		route:    route,
		mode:     Required,
		implicit: h.cfg.TLS == ImplicitTLS,
		verify:   !h.cfg.InsecureSkipVerify,
		auth:     h.auth,
		failover: failover,
	}
	if h.cfg.TLS == NoTLS {
		p.mode = Disabled
	}
	return p
}

// Failover delivers through smarthosts, tried in order within one
// attempt. It implements queue.Deliverer.
//
// The next smarthost is tried when one cannot be reached, fails TLS
// (STARTTLS not offered, a certificate that does not verify), refuses our
// credentials, or answers with a 4xx that leaves nothing delivered: to
// MAIL, to every RCPT, or to DATA. Once a smarthost may hold the message
// (the final dot sent, no reply), no other is tried, so that nothing is
// delivered twice. When every smarthost fails, all recipients are
// Temporary with the last failure's words.
//
// A 5xx is final as it is from an MX, with two exceptions that say the
// configuration is wrong rather than the message: a refused AUTH (535)
// and 530 "Authentication required" to MAIL (RFC 4954 §6). Both are
// Temporary, so that a wrong password means retries (and a log line
// saying why at warn level), never bounces.
type Failover []*Smarthost

var _ queue.Deliverer = Failover(nil)

// Deliver makes one delivery attempt. See queue.Deliverer for the
// contract.
func (f Failover) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	return f.deliver(ctx, d, "")
}

func (f Failover) deliver(ctx context.Context, d *queue.Delivery, route string) []queue.Result {
	if len(d.Rcpts) == 0 {
		return []queue.Result{}
	}
	// RFC 3463 X.3.5 "System incorrectly configured".
	var last error = status.New(451, 3, 5, "no smarthost configured")
	var lastMTA string
	// other: as in MX.deliver, a failure that was not a REQUIRETLS
	// refusal makes the attempt temporary, since that smarthost may take
	// the message later.
	var other error
	for i, h := range f {
		if err := ctx.Err(); err != nil {
			return failAll(ctx, len(d.Rcpts), err, lastMTA)
		}
		p := h.peer(route, i < len(f)-1)
		var err error
		var res []queue.Result
		if d.RequireTLS {
			p.requireTLS = true
			err = h.canRequireTLS()
		}
		if err == nil {
			res, err = h.session(ctx, d, p)
		}
		if err == nil {
			return res
		}
		last, lastMTA = err, h.RemoteMTA()
		if !isRequireTLS(err) {
			other = err
		}
	}
	if isRequireTLS(last) && other != nil {
		last = other
	}
	return failAll(ctx, len(d.Rcpts), last, lastMTA)
}

// canRequireTLS says whether a REQUIRETLS message may go to this
// smarthost at all: only over TLS whose certificate is verified (RFC 8689
// wants the next hop authenticated; a smarthost's name comes from the
// configuration, not from DNS, so its WebPKI certificate does that). The
// server must then also offer REQUIRETLS after EHLO (requireTLSOffered).
func (h *Smarthost) canRequireTLS() error {
	switch {
	case h.cfg.TLS == NoTLS:
		return requireTLSError(tlspolicy.RequireTLSFailure(h.host, "is configured without TLS"))
	case h.cfg.InsecureSkipVerify:
		return requireTLSError(tlspolicy.RequireTLSFailure(h.host, "is configured without certificate verification"))
	}
	return nil
}

// Close closes the connections every smarthost keeps for reuse; see
// MX.Close.
func (f Failover) Close() error {
	for _, h := range f {
		h.Close()
	}
	return nil
}

// Names lists the smarthosts' names, for logs.
func (f Failover) Names() []string {
	var out []string
	for _, h := range f {
		out = append(out, h.cfg.Name)
	}
	return out
}

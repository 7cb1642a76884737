package main

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"postern/configs"
	"postern/queue/durable"
)

// adminTimeout bounds every call to the admin API: an operator at a prompt
// would rather see an error than a hang.
const adminTimeout = 10 * time.Second

// queueNow is the clock of the queue commands' relative times; tests fix it.
var queueNow = time.Now

// cmdQueue runs "postern queue SUB": it is a client of the running server's
// admin API (listen.admin), never of the queue file, which the server holds
// locked; "queue migrate" alone opens the file, of a stopped node.
func cmdQueue(sub string, args []string, stdout, stderr io.Writer) error {
	if sub == "migrate" {
		// Not a client of the admin API: it needs the node stopped.
		return cmdQueueMigrate(args, stdout)
	}
	fs, cfgFlag := newFlags("queue " + sub)
	var (
		asJSON bool
		state  string
		all    bool
	)
	switch sub {
	case "list":
		fs.BoolVar(&asJSON, "json", false, "print the API's JSON array")
		fs.StringVar(&state, "state", "", "only messages in this state: queued, deferred, held, failed")
	case "show":
		fs.BoolVar(&asJSON, "json", false, "print the API's JSON object")
	case "destinations":
		fs.BoolVar(&asJSON, "json", false, "print the API's JSON array")
	case "retry":
		fs.BoolVar(&all, "all", false, "retry every message that is not held")
	case "hold", "release", "delete", "bounce":
	default:
		return usageErr("unknown command \"queue %s\"", sub)
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	switch {
	case (sub == "list" || sub == "destinations") && len(pos) > 0:
		return usageErr("queue %s takes no arguments, got %q", sub, pos)
	case sub == "destinations": // no ID
	case sub == "retry" && all && len(pos) > 0:
		return usageErr("queue retry: give an ID or --all, not both")
	case sub == "retry" && all:
	case sub != "list" && len(pos) != 1:
		return usageErr("queue %s needs one message ID", sub)
	case sub != "list" && pos[0] == "":
		// An empty ID would make the path /api/queue//retry, which the
		// router cleans into /api/queue/retry: retry everything.
		return usageErr("queue %s: the message ID is empty", sub)
	}
	c, err := adminClientFor(*cfgFlag)
	if err != nil {
		return err
	}

	switch sub {
	case "destinations":
		return queueDestinations(c, asJSON, stdout)
	case "list":
		path := "/api/queue"
		if state != "" {
			path += "?state=" + url.QueryEscape(state)
		}
		var ms []apiMessage
		return c.get(path, "", asJSON, stdout, &ms, func() error { return writeQueueTable(stdout, ms, queueNow()) })
	case "show":
		var m apiMessage
		return c.get("/api/queue/"+url.PathEscape(pos[0]), pos[0], asJSON, stdout, &m,
			func() error { return writeMessage(stdout, &m, queueNow()) })
	case "retry":
		if all {
			body, err := c.call(http.MethodPost, "/api/queue/retry", "")
			if err != nil {
				return err
			}
			var r struct {
				Retried int `json:"retried"`
			}
			if err := json.Unmarshal(body, &r); err != nil {
				return fmt.Errorf("the admin API at %s sent an unreadable reply: %v", c.addr, err)
			}
			fmt.Fprintf(stdout, "%d %s due for delivery now\n", r.Retried, plural(r.Retried, "message", "messages"))
			return nil
		}
	}

	// One action on one message.
	id := pos[0]
	method, path := http.MethodPost, "/api/queue/"+url.PathEscape(id)+"/"+sub
	if sub == "delete" {
		method, path = http.MethodDelete, "/api/queue/"+url.PathEscape(id)
	}
	if _, err := c.call(method, path, id); err != nil {
		return err
	}
	done := map[string]string{
		"retry":   "due for delivery now",
		"hold":    "held: no delivery until `postern queue release`",
		"release": "released",
		"delete":  "deleted; no bounce sent",
		"bounce":  "bounced: the sender gets a failure notice",
	}[sub]
	fmt.Fprintf(stdout, "%s: %s\n", id, done)
	return nil
}

// adminClient calls the admin API of the server the config describes.
type adminClient struct {
	addr  string // host:port, as dialed
	base  string // "http://" + addr
	token string
	http  *http.Client
}

// adminClientFor is the admin client of the config at path (--config).
func adminClientFor(path string) (*adminClient, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	return newAdminClient(cfg)
}

func newAdminClient(cfg *configs.Config) (*adminClient, error) {
	if cfg.Listen.Admin == "" {
		return nil, exitError{exitFail, fmt.Sprintf("postern: listen.admin is empty in %s: the queue commands need the admin API", cfg.File)}
	}
	addr := dialAddr(cfg.Listen.Admin)
	// Never through an HTTP proxy from the environment: the request
	// carries the admin token.
	tr := &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: adminTimeout}).DialContext}
	scheme := "http"
	if cfg.Admin.TLS {
		tc, err := adminTLSConfig(cfg)
		if err != nil {
			return nil, exitError{exitFail, "postern: " + err.Error()}
		}
		tr.TLSClientConfig = tc
		scheme = "https"
	}
	c := &adminClient{
		addr: addr,
		base: scheme + "://" + addr,
		http: &http.Client{
			Timeout:   adminTimeout,
			Transport: tr,
			// Never follow a redirect: the API sends none, and a
			// cleaned-up path could turn one action into another.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	path := cfg.Admin.TokenFile
	if path == "" {
		path = cfg.GeneratedAdminTokenPath()
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			path = "" // the server has never run: it will say it is down
		}
	}
	token, err := readAdminToken(path)
	if errors.Is(err, fs.ErrPermission) {
		return nil, exitError{exitFail, "postern: " + err.Error() + " (run this as the server's user, or root)"}
	}
	if err != nil {
		return nil, exitError{exitFail, "postern: " + err.Error()}
	}
	c.token = token
	return c, nil
}

// adminTLSConfig verifies the admin listener's certificate, which is the
// server's own (tls.cert_file, or the self-signed one in data_dir): it is
// trusted as itself, beside the system roots, and checked for the
// configured hostname, whichever address the CLI dials.
func adminTLSConfig(cfg *configs.Config) (*tls.Config, error) {
	certFile := cfg.TLS.CertFile
	if certFile == "" {
		certFile = filepath.Join(cfg.DataDir, "selfsigned.crt")
	}
	pem, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("admin.tls: the admin API's certificate: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("admin.tls: no certificate in %s", certFile)
	}
	return &tls.Config{RootCAs: roots, ServerName: cfg.Hostname, MinVersion: tls.VersionTLS12}, nil
}

// ensureAdminToken returns the token the server generated in data_dir
// when admin.token_file is not set, creating it (mode 0600) on first
// start: the admin API never answers changes without a token, and the CLI
// of a user who can read data_dir finds it there.
func ensureAdminToken(cfg *configs.Config) (string, error) {
	path := cfg.GeneratedAdminTokenPath()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		b := make([]byte, 32)
		rand.Read(b)
		if err := durable.WriteFile(path, []byte(base64.RawURLEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("admin token: %w", err)
		}
	}
	return readAdminToken(path)
}

// readAdminToken reads admin.token_file ("" = no token) the same way for
// the server and for the CLI: surrounding whitespace, such as the newline an
// editor leaves, is not part of the token. An empty file is an error, not
// "no token": the operator asked for one, and serving the API without it
// would be the silent opposite.
func readAdminToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("admin.token_file: %s is empty", path)
	}
	// It travels in an HTTP header: a token no client could send would
	// lock everyone out of the API.
	for _, r := range token {
		if r <= ' ' || r == 0x7f || r > '~' {
			return "", fmt.Errorf("admin.token_file: %s: the token must be one line of printable ASCII without spaces", path)
		}
	}
	return token, nil
}

// dialAddr turns a listen address into one to connect to: a server
// listening on every address (":8025", "0.0.0.0:8025", "[::]:8025") is
// reached on loopback.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen // the config check already vetted it; let dialing report
	}
	switch ip := net.ParseIP(host); {
	case host == "":
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified() && ip.To4() == nil:
		host = "::1"
	case ip != nil && ip.IsUnspecified():
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// call makes one request and returns the body of a 2xx reply. Every failure
// becomes one line for the operator; id, if not "", names the message a 404
// is about.
func (c *adminClient) call(method, path, id string) ([]byte, error) {
	resp, err := c.do(method, path)
	if err != nil {
		// url.Error repeats the method and URL; the cause is enough.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, exitError{exitFail, fmt.Sprintf("postern: cannot reach the admin API at %s: is postern running? (%v)", c.addr, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, exitError{exitFail, fmt.Sprintf("postern: reading the reply of the admin API at %s: %v", c.addr, err)}
	}
	if resp.StatusCode/100 == 2 {
		return body, nil
	}
	var apiErr struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &apiErr) == nil && apiErr.Error != "" {
		msg = apiErr.Error
	}
	switch {
	case resp.StatusCode == http.StatusNotFound && id != "":
		return nil, exitError{exitFail, fmt.Sprintf("postern: no message %s in the queue", id)}
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, exitError{exitFail, fmt.Sprintf("postern: the admin API at %s refused the token (admin.token_file): %s", c.addr, msg)}
	}
	if msg == "" {
		msg = resp.Status
	}
	return nil, exitError{exitFail, "postern: " + msg}
}

// do sends one request with the token, and returns the transport's error
// as it is.
func (c *adminClient) do(method, path string) (*http.Response, error) {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return c.http.Do(req)
}

// get GETs path (id, if not "", names the message a 404 is about) and
// prints the reply: as the API sent it with asJSON, else decoded into v
// and printed by print.
func (c *adminClient) get(path, id string, asJSON bool, stdout io.Writer, v any, print func() error) error {
	body, err := c.call(http.MethodGet, path, id)
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(body)
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("the admin API at %s sent an unreadable reply: %v", c.addr, err)
	}
	return print()
}

// apiMessage and apiRecipient are the admin API's JSON for a queued
// message. The CLI decodes its own copy, so it depends on the wire format,
// not on the queue package's Go types.
type apiMessage struct {
	ID         string         `json:"id"`
	From       string         `json:"from"`
	Size       int64          `json:"size"`
	CreatedAt  time.Time      `json:"created_at"`
	Held       bool           `json:"held"`
	State      string         `json:"state"`
	Recipients []apiRecipient `json:"recipients"`
}

type apiRecipient struct {
	Address     string    `json:"address"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastAttempt time.Time `json:"last_attempt"`
	LastReply   string    `json:"last_reply"`
	RemoteMTA   string    `json:"remote_mta"`
}

// Layout of the queue table, after Postfix's mailq: the ID with a
// one-character flag ('!' = held), the size, the arrival time, then the
// sender; recipients line up under the sender.
const (
	rowFmt     = "%-16s%c %8s %-19s  %s\n"
	arrivalFmt = "Mon Jan _2 15:04:05" // 19 characters, like mailq's
)

var (
	tableHeader = fmt.Sprintf("%-17s %8s %-19s  %s\n", "-Queue ID-", "--Size--", "----Arrival Time---", "-Sender/Recipient-------")
	rcptIndent  = strings.Repeat(" ", 16+1+1+8+1+19+2) // under the sender
)

// writeQueueTable prints ms like mailq. Times are shown in now's location;
// now is a parameter so tests have a fixed clock.
func writeQueueTable(w io.Writer, ms []apiMessage, now time.Time) error {
	if len(ms) == 0 {
		_, err := fmt.Fprintln(w, "Mail queue is empty")
		return err
	}
	var b strings.Builder
	b.WriteString(tableHeader)
	var total int64
	for i, m := range ms {
		if i > 0 {
			b.WriteString("\n")
		}
		total += m.Size
		flag := ' '
		if m.Held {
			flag = '!'
		}
		fmt.Fprintf(&b, rowFmt, m.ID, flag, fmt.Sprint(m.Size), m.CreatedAt.In(now.Location()).Format(arrivalFmt), sender(m.From))
		for _, r := range m.Recipients {
			fmt.Fprintf(&b, "%s%s  (%s)\n", rcptIndent, r.Address, rcptStatus(r, now))
			if r.LastReply != "" {
				fmt.Fprintf(&b, "%s  %s\n", rcptIndent, oneLine(r.LastReply))
			}
		}
	}
	kb := (total + 1023) / 1024
	fmt.Fprintf(&b, "\n-- %d Kbytes in %d %s.\n", kb, len(ms), plural(len(ms), "message", "messages"))
	_, err := io.WriteString(w, b.String())
	return err
}

// rcptStatus is the short state of one recipient: "deferred, 3 attempts,
// next in 12m".
func rcptStatus(r apiRecipient, now time.Time) string {
	s := r.State
	if r.Attempts > 0 {
		s += fmt.Sprintf(", %d %s", r.Attempts, plural(r.Attempts, "attempt", "attempts"))
	}
	if (r.State == "queued" || r.State == "deferred") && !r.NextAttempt.IsZero() {
		s += ", next " + relative(r.NextAttempt, now)
	}
	return s
}

// writeMessage prints every field of one message, one per line.
func writeMessage(w io.Writer, m *apiMessage, now time.Time) error {
	var b strings.Builder
	field := func(indent, name, value string) {
		fmt.Fprintf(&b, "%s%-14s %s\n", indent, name+":", value)
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.In(now.Location()).Format("2006-01-02 15:04:05 MST") + " (" + relative(t, now) + ")"
	}
	orNone := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	field("", "ID", m.ID)
	field("", "State", orNone(m.State))
	held := "no"
	if m.Held {
		held = "yes (release with `postern queue release " + m.ID + "`)"
	}
	field("", "Held", held)
	field("", "From", sender(m.From))
	field("", "Size", fmt.Sprintf("%d bytes", m.Size))
	field("", "Arrived", when(m.CreatedAt))
	field("", "Recipients", fmt.Sprint(len(m.Recipients)))
	for _, r := range m.Recipients {
		fmt.Fprintf(&b, "\n  %s\n", r.Address)
		field("    ", "State", orNone(r.State))
		field("    ", "Attempts", fmt.Sprint(r.Attempts))
		field("    ", "Last attempt", when(r.LastAttempt))
		field("    ", "Next attempt", when(r.NextAttempt))
		field("    ", "Remote MTA", orNone(r.RemoteMTA))
		field("    ", "Last reply", orNone(oneLine(r.LastReply)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sender shows the null reverse-path as "<>" (RFC 5321 §4.5.5) rather than
// as nothing.
func sender(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

// oneLine folds a multi-line SMTP reply onto one line, so a remote's reply
// cannot break the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// relative says how far t is from now: "in 12m", "3h5m ago", "now".
func relative(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d == 0:
		return "now"
	case d > 0:
		return "in " + shortDuration(d)
	default:
		return shortDuration(-d) + " ago"
	}
}

// shortDuration is time.Duration's String without the zero units: "12m",
// "3h5m", "45s", "2d4h".
func shortDuration(d time.Duration) string {
	if d >= time.Hour {
		d = d.Round(time.Minute) // seconds are noise at this scale
	}
	if d >= 24*time.Hour {
		days := d / (24 * time.Hour)
		rest := (d % (24 * time.Hour)).Truncate(time.Hour)
		s := fmt.Sprintf("%dd", days)
		if rest > 0 {
			s += shortDuration(rest)
		}
		return s
	}
	s := d.String()
	s = strings.Replace(s, "m0s", "m", 1)
	s = strings.Replace(s, "h0m", "h", 1)
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

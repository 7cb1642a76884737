package httpapi

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// Options configure NewHandler. Only Queue is required.
type Options struct {
	// Queue serves the /api/queue endpoints.
	Queue Queue
	// Suppressions, when set, serves the /api/suppressions endpoints.
	Suppressions Suppressions
	// Token, if not empty, is the bearer token every /api/ request must
	// present. "" serves the API to anyone who can connect: keep the
	// listener on loopback then.
	Token string
	// Ready reports whether postern is ready to serve (for /readyz); a
	// non-nil error is the reason it is not. nil means always ready.
	Ready func() error
	// Webhooks serves GET /api/webhooks (token required, like the queue
	// endpoints); nil answers 404 there.
	Webhooks Webhooks
	// Metrics is served on /metrics (relay/metrics' Handler); nil answers
	// 404 there.
	Metrics http.Handler
	// Destinations serves /api/destinations; nil answers an empty list.
	Destinations Destinations
	// Drainer serves /api/drain (token required); nil answers 404 there.
	Drainer Drainer
	// Logger receives one line per mutating action and per refused
	// token; nil discards them.
	Logger *zap.Logger

	// Listen is the listener's address (host:port). On loopback, a
	// request must name it, or localhost, in its Host header: a web page
	// whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot
	// reach the API. "" (tests) checks no Host.
	Listen string
	// AllowedHosts are more names ("host" for any port, or "host:port")
	// that Host may carry. Off loopback, where TLS and the token protect
	// the API, Host is checked only when this is set.
	AllowedHosts []string
	// Hostname is the server's own name (hostname in the config), which
	// its certificate carries: Host may always name it, on any port.
	Hostname string
}

type handler struct {
	q     Queue
	sups  Suppressions // nil: no /api/suppressions
	wh    Webhooks     // nil: no /api/webhooks
	dests Destinations
	drain Drainer            // nil: no /api/drain
	token *[sha256.Size]byte // nil: no token required
	ready func() error
	m     http.Handler
	log   *zap.Logger
}

// NewHandler returns the handler of the daemon's HTTP listener: each group
// of endpoints (the admin API, the probes, the metrics) mounted on one mux,
// each with the authentication it needs. It panics if opts.Queue is nil:
// that is a wiring mistake to catch at startup.
func NewHandler(opts Options) http.Handler {
	if opts.Queue == nil {
		panic("httpapi: NewHandler without Options.Queue")
	}
	h := &handler{q: opts.Queue, sups: opts.Suppressions, wh: opts.Webhooks, dests: opts.Destinations, drain: opts.Drainer, ready: opts.Ready, m: opts.Metrics, log: opts.Logger}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = &sum
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}

	// Patterns carry no method: each handler checks it (methods), so that
	// a wrong method gets a JSON 405 like every other error (ServeMux's
	// own 405 is plain text).
	mux := http.NewServeMux()
	mux.Handle("/api/", h.authenticate(h.api()))
	mux.Handle("/healthz", methods(healthz, http.MethodGet, http.MethodHead))
	mux.Handle("/readyz", methods(h.readyz, http.MethodGet, http.MethodHead))
	if h.m != nil {
		mux.Handle("/metrics", methods(h.m.ServeHTTP, http.MethodGet, http.MethodHead))
	}
	mux.HandleFunc("/", notFound)

	return guard(mux, newHostPolicy(opts.Listen, opts.Hostname, opts.AllowedHosts), h.log, "admin", writeError)
}

// guard refuses, before next sees them, requests whose Host the listener
// does not answer to (421 Misdirected Request, RFC 9110 §15.5.20: a web
// page that points its own name at 127.0.0.1, DNS rebinding, reaches
// nothing) and a browser's cross-site requests that would change something
// (403: a form or a fetch on a page the operator opens). Go's
// CrossOriginProtection compares Sec-Fetch-Site, or Origin with Host, and
// lets safe methods and non-browser clients (the CLI, curl, applications)
// through. fail writes the refusal in the surface's own error format.
func guard(next http.Handler, p hostPolicy, log *zap.Logger, surface string, fail func(w http.ResponseWriter, code int, msg string)) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Warn(surface+": cross-origin request refused", zap.String("remote", r.RemoteAddr),
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("origin", r.Header.Get("Origin")))
		fail(w, http.StatusForbidden, "cross-origin request refused")
	}))
	checked := cop.Handler(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.allows(r.Host) {
			log.Warn(surface+": request for another host refused", zap.String("remote", r.RemoteAddr),
				zap.String("host", r.Host), zap.String("path", r.URL.Path))
			fail(w, http.StatusMisdirectedRequest, "this server does not answer for host "+strconv.Quote(r.Host))
			return
		}
		checked.ServeHTTP(w, r)
	})
}

// hostPolicy is which Host headers the listener answers.
type hostPolicy struct {
	any      bool            // no check
	names    map[string]bool // host names, any port (lower case)
	hostPort map[string]bool // host:port (lower case)
}

func newHostPolicy(listen, hostname string, extra []string) hostPolicy {
	p := hostPolicy{names: map[string]bool{}, hostPort: map[string]bool{}}
	host, port, err := net.SplitHostPort(listen)
	if listen == "" || err != nil {
		p.any = true
		return p
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || ip != nil && ip.IsLoopback()
	if !loopback && len(extra) == 0 {
		p.any = true // TLS and the token protect it (configs requires both)
		return p
	}
	// A wildcard listener (0.0.0.0, [::]) also answers on loopback, where
	// the CLI reaches it.
	if loopback || host == "" || ip != nil && ip.IsUnspecified() {
		for _, n := range []string{"localhost", "127.0.0.1", "[::1]"} {
			p.hostPort[n+":"+port] = true
		}
	}
	if host != "" {
		p.hostPort[strings.ToLower(net.JoinHostPort(host, port))] = true
	}
	if hostname != "" {
		p.names[strings.ToLower(hostname)] = true
	}
	for _, e := range extra {
		e = strings.ToLower(e)
		if _, _, err := net.SplitHostPort(e); err == nil {
			p.hostPort[e] = true
		} else {
			p.names[strings.Trim(e, "[]")] = true
		}
	}
	return p
}

func (p hostPolicy) allows(hostHeader string) bool {
	if p.any {
		return true
	}
	h := strings.ToLower(hostHeader)
	if p.hostPort[h] {
		return true
	}
	name := h
	if n, _, err := net.SplitHostPort(h); err == nil {
		name = n
	}
	return p.names[strings.Trim(name, "[]")]
}

// methods lets only the given methods through to f.
func methods(f http.HandlerFunc, allowed ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if methodAllowed(w, r, allowed) {
			f(w, r)
			return
		}
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, strings.Join(allowed, " or ")))
	})
}

// methodAllowed reports whether r's method is one of allowed, and sets
// the Allow header of the 405 its caller answers when not (RFC 9110
// §15.5.6).
func methodAllowed(w http.ResponseWriter, r *http.Request, allowed []string) bool {
	for _, m := range allowed {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return false
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
}

// authenticate requires the bearer token, if one is configured.
func (h *handler) authenticate(next http.Handler) http.Handler {
	if h.token == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearer(r)
		// Comparing digests keeps the time independent of where the
		// strings differ and of the token's length.
		sum := sha256.Sum256([]byte(got))
		if ok && subtle.ConstantTimeCompare(sum[:], h.token[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		msg, challenge := "missing bearer token", `Bearer realm="postern"`
		if ok {
			// RFC 6750 §3.1.
			msg, challenge = "wrong bearer token", `Bearer realm="postern", error="invalid_token"`
		}
		h.log.Warn("admin: request refused", zap.String("remote", r.RemoteAddr),
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("reason", msg))
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, http.StatusUnauthorized, msg)
	})
}

// bearer extracts the token of an "Authorization: Bearer ..." header. The
// scheme is case-insensitive (RFC 9110 §11.1).
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

func healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.ready != nil {
		if err := h.ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
	}
	io.WriteString(w, "ready\n")
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{msg})
}

// writeJSON encodes v before writing the status, so that an encoding
// failure can still become a 500.
func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Message-IDs and addresses read as written ("<a@b>", not
	// "\u003ca@b\u003e"); the body is never HTML (nosniff below).
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		code = http.StatusInternalServerError
		buf.Reset()
		json.NewEncoder(&buf).Encode(map[string]string{"error": "encoding the reply: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

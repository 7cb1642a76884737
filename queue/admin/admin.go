package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"postern/queue"
)

// Depther reports how many messages wait in each state. It is all Metrics
// needs of the queue.
type Depther interface {
	// Depth counts messages per state. It is called at every scrape, so it
	// must be cheap enough for that and must not block for long.
	Depth() map[queue.State]int
}

// Queue is what the admin API needs of the queue. *queue.Queue implements
// it; tests use a fake.
//
// Every method that takes an id returns an error wrapping queue.ErrNotFound
// when no message has that id (including a malformed id), and
// queue.ErrClosed after the queue is closed. An error wrapping
// queue.ErrHeld, queue.ErrNotHeld or queue.ErrFinal means the message's
// state forbids the action (409). The mutating methods commit before they
// return: a nil error means the change is durable.
type Queue interface {
	Depther
	// List returns the messages the filter selects, oldest first.
	List(f queue.Filter) ([]*queue.Message, error)
	// Get returns one message.
	Get(id string) (*queue.Message, error)
	// Hold stops delivery attempts for the message until Release
	// (ErrFinal if no recipient is pending).
	Hold(id string) error
	// Release makes a held message due now (ErrNotHeld if it is not
	// held).
	Release(id string) error
	// Retry makes every pending recipient of the message due now
	// (ErrHeld for a held message: release it instead; ErrFinal if none
	// is pending).
	Retry(id string) error
	// RetryAll does what Retry does for every message that is neither
	// held nor final, and returns how many messages that is.
	RetryAll() (int, error)
	// Delete removes the message, failed record or not, without any DSN.
	Delete(id string) error
	// Bounce fails every pending recipient and queues the DSN the sender
	// asked for (ErrFinal if none is pending).
	Bounce(id string) error
}

// Compile-time checks that the real types fit the interfaces this package
// consumes and provides.
var (
	_ Queue          = (*queue.Queue)(nil)
	_ queue.Observer = (*Metrics)(nil)
)

// Options configure NewHandler. Only Queue is required.
type Options struct {
	// Queue serves the /api/queue endpoints.
	Queue Queue
	// Token, if not empty, is the bearer token every /api/ request must
	// present. "" serves the API to anyone who can connect: keep the
	// listener on loopback then.
	Token string
	// Ready reports whether postern is ready to serve (for /readyz); a
	// non-nil error is the reason it is not. nil means always ready.
	Ready func() error
	// Metrics is served on /metrics; nil answers 404 there.
	Metrics *Metrics
	// Logger receives one line per mutating action and per refused
	// token; nil discards them.
	Logger *zap.Logger
}

// states are the values the state filter accepts, in the order the error
// message lists them.
var states = []queue.State{queue.StateQueued, queue.StateDeferred, queue.StateHeld, queue.StateFailed}

type handler struct {
	q     Queue
	token *[sha256.Size]byte // nil: no token required
	ready func() error
	m     *Metrics
	log   *zap.Logger
}

// NewHandler returns the admin HTTP handler. It panics if opts.Queue is nil:
// that is a wiring mistake to catch at startup.
func NewHandler(opts Options) http.Handler {
	if opts.Queue == nil {
		panic("admin: NewHandler without Options.Queue")
	}
	h := &handler{q: opts.Queue, ready: opts.Ready, m: opts.Metrics, log: opts.Logger}
	if opts.Token != "" {
		sum := sha256.Sum256([]byte(opts.Token))
		h.token = &sum
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}

	// Patterns carry no method: each handler checks it, so that a wrong
	// method gets a JSON 405 like every other error (ServeMux's own 405
	// is plain text).
	api := http.NewServeMux()
	api.Handle("/api/queue", methods(h.list, http.MethodGet))
	api.Handle("/api/queue/retry", methods(h.retryAll, http.MethodPost))
	api.Handle("/api/queue/{id}", methods(h.message, http.MethodGet, http.MethodDelete))
	api.Handle("/api/queue/{id}/{action}", methods(h.action, http.MethodPost))
	api.HandleFunc("/", notFound)

	mux := http.NewServeMux()
	mux.Handle("/api/", h.authenticate(api))
	mux.Handle("/healthz", methods(healthz, http.MethodGet, http.MethodHead))
	mux.Handle("/readyz", methods(h.readyz, http.MethodGet, http.MethodHead))
	if h.m != nil {
		mux.Handle("/metrics", methods(h.m.handler.ServeHTTP, http.MethodGet, http.MethodHead))
	}
	mux.HandleFunc("/", notFound)
	return mux
}

// methods lets only the given methods through to f.
func methods(f http.HandlerFunc, allowed ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range allowed {
			if r.Method == m {
				f(w, r)
				return
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, strings.Join(allowed, " or ")))
	})
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

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	var f queue.Filter
	if s := r.URL.Query().Get("state"); s != "" {
		f.State = queue.State(s)
		if !knownState(f.State) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown state %q: want one of %s", s, stateList()))
			return
		}
	}
	ms, err := h.q.List(f)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if ms == nil {
		ms = []*queue.Message{} // "[]", not "null"
	}
	writeJSON(w, http.StatusOK, ms)
}

func stateList() string {
	s := make([]string, len(states))
	for i, st := range states {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

// message serves GET and DELETE on /api/queue/{id}.
func (h *handler) message(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodDelete {
		h.mutate(w, r, "delete", h.q.Delete)
		return
	}
	m, err := h.q.Get(r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// action serves POST /api/queue/{id}/{action}.
func (h *handler) action(w http.ResponseWriter, r *http.Request) {
	var f func(string) error
	switch a := r.PathValue("action"); a {
	case "retry":
		f = h.q.Retry
	case "hold":
		f = h.q.Hold
	case "release":
		f = h.q.Release
	case "bounce":
		f = h.q.Bounce
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such action %q: want retry, hold, release or bounce", a))
		return
	}
	h.mutate(w, r, r.PathValue("action"), f)
}

// mutate runs one action on one message and logs it, success or not.
func (h *handler) mutate(w http.ResponseWriter, r *http.Request, action string, f func(string) error) {
	id := r.PathValue("id")
	if err := f(id); err != nil {
		h.log.Info("admin: action failed", zap.String("remote", r.RemoteAddr),
			zap.String("action", action), zap.String("id", id), zap.Error(err))
		h.fail(w, r, err)
		return
	}
	h.log.Info("admin: action", zap.String("remote", r.RemoteAddr),
		zap.String("action", action), zap.String("id", id))
	writeJSON(w, http.StatusOK, struct {
		ID     string `json:"id"`
		Action string `json:"action"`
	}{id, action})
}

func (h *handler) retryAll(w http.ResponseWriter, r *http.Request) {
	n, err := h.q.RetryAll()
	if err != nil {
		h.log.Info("admin: action failed", zap.String("remote", r.RemoteAddr),
			zap.String("action", "retry-all"), zap.Error(err))
		h.fail(w, r, err)
		return
	}
	h.log.Info("admin: action", zap.String("remote", r.RemoteAddr),
		zap.String("action", "retry-all"), zap.Int("retried", n))
	writeJSON(w, http.StatusOK, struct {
		Retried int `json:"retried"`
	}{n})
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

// fail answers with the status statusOf gives err. Server-side failures are
// logged too: the operator reading the reply may not be the one who can fix
// the disk.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		h.log.Error("admin: queue error", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	msg := err.Error()
	if code == http.StatusNotFound {
		// The queue's error may add why the id is unknown
		// ("want 16 hex digits"); the reply states the fact.
		msg = "no message " + r.PathValue("id") + " in the queue"
	}
	writeError(w, code, msg)
}

// isConflict reports whether err says the message's state forbids the
// action: retrying a held message, releasing one that is not held, holding,
// retrying or bouncing one with no pending recipient.
func isConflict(err error) bool {
	return errors.Is(err, queue.ErrHeld) || errors.Is(err, queue.ErrNotHeld) || errors.Is(err, queue.ErrFinal)
}

// statusOf is the one place that turns a queue error into an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return http.StatusNotFound
	case isConflict(err):
		return http.StatusConflict
	case errors.Is(err, queue.ErrClosed):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
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
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		code = http.StatusInternalServerError
		buf.Reset()
		json.NewEncoder(&buf).Encode(map[string]string{"error": "encoding the reply: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

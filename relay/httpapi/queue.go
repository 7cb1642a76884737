package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"postern/queue"
)

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

// The real queue fits the interface this package consumes.
var _ Queue = (*queue.Queue)(nil)

// api serves the /api/ endpoints: the queue's, and the destinations'
// (destinations.go).
func (h *handler) api() http.Handler {
	api := http.NewServeMux()
	api.Handle("/api/destinations", methods(h.destinations, http.MethodGet))
	api.Handle("/api/queue", methods(h.list, http.MethodGet))
	api.Handle("/api/queue/retry", methods(h.retryAll, http.MethodPost))
	api.Handle("/api/queue/{id}", methods(h.message, http.MethodGet, http.MethodDelete))
	api.Handle("/api/queue/{id}/{action}", methods(h.action, http.MethodPost))
	h.mountSuppressions(api)
	api.Handle("/api/webhooks", methods(h.webhooks, http.MethodGet))
	h.mountDrain(api)
	api.HandleFunc("/", notFound)
	return api
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	var f queue.Filter
	if s := r.URL.Query().Get("state"); s != "" {
		f.State = queue.State(s)
		if !f.State.IsMessageState() {
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
	states := queue.MessageStates()
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

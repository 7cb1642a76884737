package httpapi

import (
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Drainer is the daemon's drain: it stops taking mail, delivers what is
// due, and exits (postern drain). cmd/postern implements it.
type Drainer interface {
	// Drain begins a drain that gives the deliveries timeout, unless one
	// is under way already (its timeout stands then). It returns once
	// /readyz fails, so that a load balancer's next check sees it.
	Drain(timeout time.Duration) DrainStatus
	// DrainStatus is the drain's progress; Draining is false before one
	// began.
	DrainStatus() DrainStatus
}

// DrainStatus is the JSON of /api/drain.
type DrainStatus struct {
	Draining bool `json:"draining"`
	// Since is when the drain began, Deadline when it stops waiting for
	// deliveries (then the ordinary shutdown runs).
	Since    time.Time `json:"since,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
	// InFlight counts the delivery attempts running; Due is whether
	// something else is due now (it will be attempted before the exit).
	InFlight int  `json:"in_flight"`
	Due      bool `json:"due"`
	// Queued, Deferred and Held count the messages in the local queue by
	// state, as GET /api/queue?state= does.
	Queued   int `json:"queued"`
	Deferred int `json:"deferred"`
	Held     int `json:"held"`
}

// maxDrainTimeout bounds ?timeout=: a typo of units ("5000h") should not
// leave a node half-drained for months.
const maxDrainTimeout = 24 * time.Hour

// mountDrain adds /api/drain when the daemon offers a drain.
func (h *handler) mountDrain(api *http.ServeMux) {
	if h.drain == nil {
		return
	}
	api.Handle("/api/drain", methods(h.drainHandler, http.MethodGet, http.MethodPost))
}

// drainHandler serves GET /api/drain (the status) and POST
// /api/drain?timeout=D (begin; 202, then the status).
func (h *handler) drainHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		writeJSON(w, http.StatusOK, h.drain.DrainStatus())
		return
	}
	timeout := defaultDrainTimeout
	if s := r.URL.Query().Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > maxDrainTimeout {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("timeout %q: want a duration such as 5m, above 0 and at most %s", s, maxDrainTimeout))
			return
		}
		timeout = d
	}
	st := h.drain.Drain(timeout)
	h.log.Info("admin: action", zap.String("remote", r.RemoteAddr), zap.String("action", "drain"),
		zap.Time("deadline", st.Deadline))
	writeJSON(w, http.StatusAccepted, st)
}

// defaultDrainTimeout is the drain's timeout when the request gives none:
// postern drain's default.
const defaultDrainTimeout = 5 * time.Minute

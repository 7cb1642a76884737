package httpapi

import (
	"net/http"

	"postern/queue"
)

// Destinations is what the admin API needs of delivery to show how each
// destination is shaped: relay/outbound's MX deliverer and Router
// implement it, and cmd/postern plugs them in (this package may not
// import delivery). The type it returns is the queue's, shared with the
// metrics.
type Destinations interface {
	// Destinations describes every destination, provider and smarthost
	// list that has state now. It is called per request: it must be
	// quick and safe for concurrent use.
	Destinations() []queue.Destination
}

// destinations serves GET /api/destinations: the JSON array of
// queue.Destination, [] when delivery keeps no such state (capture mode).
func (h *handler) destinations(w http.ResponseWriter, r *http.Request) {
	var ds []queue.Destination
	if h.dests != nil {
		ds = h.dests.Destinations()
	}
	if ds == nil {
		ds = []queue.Destination{}
	}
	writeJSON(w, http.StatusOK, ds)
}

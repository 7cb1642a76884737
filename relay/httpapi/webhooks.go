package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"postern/queue"
)

// Webhooks is what GET /api/webhooks needs of the queue; *queue.Queue
// implements it. EventBacklogs returns, for every configured endpoint in
// config order, how many deliveries wait and fail, and the first limit of
// them in recording order.
type Webhooks interface {
	EventBacklogs(limit int) ([]queue.EventBacklog, error)
}

var _ Webhooks = (*queue.Queue)(nil)

// WebhookBacklog is one endpoint in GET /api/webhooks.
type WebhookBacklog struct {
	Endpoint string `json:"endpoint"`
	// Pending counts every delivery waiting, Failing those with at
	// least one failed attempt.
	Pending int `json:"pending"`
	Failing int `json:"failing"`
	// Deliveries are the first ones, oldest first, at most ?limit=
	// (default 100).
	Deliveries []WebhookDelivery `json:"deliveries"`
}

// WebhookDelivery is one event waiting for one endpoint.
type WebhookDelivery struct {
	EventID     string          `json:"event_id"`
	Type        queue.EventType `json:"type"`
	Time        time.Time       `json:"time"`
	QueueID     string          `json:"queue_id,omitempty"`
	Recipient   string          `json:"recipient,omitempty"`
	Attempts    int             `json:"attempts"`
	NextAttempt time.Time       `json:"next_attempt"`
	LastError   string          `json:"last_error,omitempty"`
}

const (
	defaultWebhookLimit = 100
	maxWebhookLimit     = 10000
)

// webhooks serves GET /api/webhooks[?limit=N].
func (h *handler) webhooks(w http.ResponseWriter, r *http.Request) {
	if h.wh == nil {
		writeError(w, http.StatusNotFound, "this server does not deliver webhooks")
		return
	}
	limit := defaultWebhookLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxWebhookLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not a number from 0 to %d", s, maxWebhookLimit))
			return
		}
		limit = n
	}
	bs, err := h.wh.EventBacklogs(limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]WebhookBacklog, len(bs))
	for i, b := range bs {
		out[i] = WebhookBacklog{Endpoint: b.Subscriber, Pending: b.Pending, Failing: b.Failing, Deliveries: []WebhookDelivery{}}
		for _, d := range b.First {
			out[i].Deliveries = append(out[i].Deliveries, WebhookDelivery{
				EventID: d.Event.ID, Type: d.Event.Type, Time: d.Event.Time, QueueID: d.Event.QueueID,
				Recipient: d.Event.Recipient, Attempts: d.Attempts, NextAttempt: d.Next, LastError: d.LastError,
			})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

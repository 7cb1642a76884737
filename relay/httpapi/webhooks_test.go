package httpapi

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"postern/queue"
)

type fakeWebhooks struct {
	limit int
	err   error
}

func (f *fakeWebhooks) EventBacklogs(limit int) ([]queue.EventBacklog, error) {
	f.limit = limit
	at := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	return []queue.EventBacklog{
		{Subscriber: "app", Pending: 2, Failing: 1, First: []queue.EventDelivery{{
			Seq: 7, Attempts: 3, Next: at.Add(time.Hour), LastError: "HTTP 500",
			Event: queue.Event{ID: "ev_1", Type: queue.EventBounced, Time: at, QueueID: "00000000000000AA", Recipient: "b@x.test"},
		}}},
		{Subscriber: "crm"},
	}, f.err
}

func TestWebhooksEndpoint(t *testing.T) {
	f := &fakeWebhooks{}
	e := newEnv(t, Options{Token: testToken, Webhooks: f})
	if w := e.do(http.MethodGet, "/api/webhooks", ""); w.Code != http.StatusUnauthorized {
		t.Errorf("without the token: %d, want 401", w.Code)
	}
	w := e.do(http.MethodGet, "/api/webhooks", "Bearer "+testToken)
	if w.Code != http.StatusOK || f.limit != defaultWebhookLimit {
		t.Fatalf("GET: %d %s (limit %d)", w.Code, w.Body, f.limit)
	}
	var got []WebhookBacklog
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Endpoint != "app" || got[0].Pending != 2 || got[0].Failing != 1 ||
		len(got[0].Deliveries) != 1 || got[1].Deliveries == nil {
		t.Fatalf("reply %s", w.Body)
	}
	d := got[0].Deliveries[0]
	if d.EventID != "ev_1" || d.Type != queue.EventBounced || d.QueueID != "00000000000000AA" || d.Recipient != "b@x.test" ||
		d.Attempts != 3 || d.LastError != "HTTP 500" || !d.NextAttempt.Equal(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("delivery %+v", d)
	}
	if w := e.do(http.MethodGet, "/api/webhooks?limit=5", "Bearer "+testToken); w.Code != http.StatusOK || f.limit != 5 {
		t.Errorf("?limit=5: %d, limit %d", w.Code, f.limit)
	}
	for _, bad := range []string{"-1", "x", "10001"} {
		if w := e.do(http.MethodGet, "/api/webhooks?limit="+bad, "Bearer "+testToken); w.Code != http.StatusBadRequest {
			t.Errorf("?limit=%s: %d, want 400", bad, w.Code)
		}
	}
	if w := e.do(http.MethodPost, "/api/webhooks", "Bearer "+testToken); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", w.Code)
	}
	f.err = queue.ErrClosed
	if w := e.do(http.MethodGet, "/api/webhooks", "Bearer "+testToken); w.Code != http.StatusServiceUnavailable {
		t.Errorf("closed queue: %d, want 503", w.Code)
	}
	none := newEnv(t, Options{Token: testToken})
	if w := none.do(http.MethodGet, "/api/webhooks", "Bearer "+testToken); w.Code != http.StatusNotFound {
		t.Errorf("without Webhooks: %d, want 404", w.Code)
	}
}

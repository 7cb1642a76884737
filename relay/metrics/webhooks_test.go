package metrics

import (
	"errors"
	"testing"

	"postern/queue"
	"postern/relay/webhooks"
)

// Metrics is what webhook senders report to.
var _ webhooks.Observer = (*Metrics)(nil)

type fakeBacklogs struct {
	bs  []queue.EventBacklog
	err error
}

func (f *fakeBacklogs) EventBacklogs(limit int) ([]queue.EventBacklog, error) {
	if limit != 0 {
		panic("a scrape read events")
	}
	return f.bs, f.err
}

func TestWebhookMetrics(t *testing.T) {
	m := NewMetrics()
	m.WebhookResult("app", "delivered")
	m.WebhookResult("app", "delivered")
	m.WebhookResult("app", "retried")
	m.WebhookResult("crm", "given_up")
	fams, _ := scrape(t, m)
	if _, ok := fams["postern_webhook_pending"]; ok {
		t.Error("postern_webhook_pending has series before WatchWebhooks")
	}
	f := &fakeBacklogs{bs: []queue.EventBacklog{{Subscriber: "app", Pending: 3, Failing: 1}, {Subscriber: "crm"}}}
	m.WatchWebhooks(f)
	fams, _ = scrape(t, m)
	for _, tc := range []struct {
		fam, labels string
		want        float64
	}{
		{"postern_webhook_deliveries_total", "endpoint=app,result=delivered", 2},
		{"postern_webhook_deliveries_total", "endpoint=app,result=retried", 1},
		{"postern_webhook_deliveries_total", "endpoint=crm,result=given_up", 1},
		{"postern_webhook_pending", "endpoint=app", 3},
		{"postern_webhook_pending", "endpoint=crm", 0}, // an empty backlog shows 0, not nothing
	} {
		if got, ok := value(fams, tc.fam, tc.labels); !ok || got != tc.want {
			t.Errorf("%s{%s} = %v (present %v), want %v", tc.fam, tc.labels, got, ok, tc.want)
		}
	}
	f.err = errors.New("queue: closed")
	fams, _ = scrape(t, m) // no failed scrape
	if _, ok := fams["postern_webhook_pending"]; ok {
		t.Error("series from a closed queue")
	}
	var nilM *Metrics
	nilM.WebhookResult("app", "delivered")
	nilM.WatchWebhooks(f)
}

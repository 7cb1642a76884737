package webhooks

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"postern/queue"
)

// BenchmarkDelivery measures webhook throughput: events recorded in the
// queue on disk (one message each, so they may go concurrently) posted
// to one local endpoint that answers 204 at once, with the default
// concurrency. Each delivery is a signed HTTP request on a kept-alive
// connection plus the EventDone commit (an fsync), which is what bounds
// it. Recording the events is not timed. make bench runs it; the README's
// Performance section quotes it.
func BenchmarkDelivery(b *testing.B) {
	q, err := queue.Open(queue.Options{
		Path:        filepath.Join(b.TempDir(), "queue.db"),
		Subscribers: []queue.Subscriber{{Name: "bench"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close(context.Background())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	secret, _ := ParseSecret(testSecret)
	done := make(results, 1024)

	const batch = 500
	for i := 0; i < b.N; i += batch {
		var evs []queue.Event
		for j := i; j < min(i+batch, b.N); j++ {
			e := ev(fmt.Sprintf("%016X", j), "bob@example.org")
			e.Type, e.Tags, e.Metadata = queue.EventDelivered, []string{"bench"}, map[string]string{"n": fmt.Sprint(j)}
			evs = append(evs, e)
		}
		if err := q.RecordEvents(evs...); err != nil {
			b.Fatal(err)
		}
	}
	m := New(Options{Source: q, Endpoints: []Endpoint{{Name: "bench", URL: srv.URL, Secret: secret}}, Observer: done})
	b.ResetTimer()
	start := time.Now()
	m.Start()
	for range b.N {
		if r := <-done; r != "bench delivered" {
			b.Fatalf("result %s", r)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	m.Stop(context.Background())
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}

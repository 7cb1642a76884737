package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"postern/queue"
	"postern/relay/httpapi"
	"postern/relay/metrics"
)

// Example serves the admin API for a queue, as postern serve does on
// listen.admin, and calls it the way `postern queue` does.
func Example() {
	dir, err := os.MkdirTemp("", "postern-admin-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// Without a Deliverer the queue can be inspected but delivers nothing.
	q, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db")})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close(context.Background())

	m := metrics.NewMetrics()
	m.WatchQueue(q) // postern_queue_depth reads q.Depth() at each scrape
	srv := httptest.NewServer(httpapi.NewHandler(httpapi.Options{
		Queue:   q,
		Token:   "s3cret",
		Metrics: m.Handler(),
		Ready:   func() error { return nil },
	}))
	defer srv.Close()

	call := func(method, path, token string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	call("GET", "/api/queue", "")
	call("GET", "/api/queue", "s3cret")
	call("GET", "/api/queue?state=held", "s3cret")
	call("POST", "/api/queue/retry", "s3cret")
	call("POST", "/api/queue/0000000000000001/hold", "s3cret")
	call("GET", "/api/queue?state=stuck", "s3cret")
	call("GET", "/healthz", "")
	call("GET", "/readyz", "")
	// Output:
	// 401 {"error":"missing bearer token"}
	// 200 []
	// 200 []
	// 200 {"retried":0}
	// 404 {"error":"no message 0000000000000001 in the queue"}
	// 400 {"error":"unknown state \"stuck\": want one of queued, deferred, held, failed"}
	// 200 ok
	// 200 ready
}

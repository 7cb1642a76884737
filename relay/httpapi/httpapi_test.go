package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/metrics"
)

const testToken = "s3cret-token"

type env struct {
	q    *fakeQueue
	h    http.Handler
	logs *observer.ObservedLogs
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	e := &env{q: newFakeQueue(), logs: logs}
	if opts.Queue == nil {
		opts.Queue = e.q
	}
	opts.Logger = zap.New(core)
	e.h = NewHandler(opts)
	return e
}

// do sends one request with the given Authorization header ("" = none).
func (e *env) do(method, target, authz string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = "192.0.2.7:40000"
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

// errorOf decodes an {"error": ...} reply, failing if the body is not one.
func errorOf(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var v struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || v.Error == nil {
		t.Fatalf("body %q is not {\"error\": ...} (%v)", w.Body, err)
	}
	return *v.Error
}

// ids decodes a list reply into its message IDs.
func ids(t *testing.T, body []byte) []string {
	t.Helper()
	var ms []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &ms); err != nil {
		t.Fatalf("list reply %q: %v", body, err)
	}
	out := []string{}
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func TestEndpoints(t *testing.T) {
	const (
		id1, id2, held, failed = "0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004"
		missing                = "00000000000000FF"
	)
	for _, tc := range []struct {
		method, target string
		code           int
		call           string // the fake call the request must make; "" = none
		body           string // substring of the body
	}{
		{"GET", "/api/queue", 200, "list ", id1},
		{"GET", "/api/queue?state=deferred", 200, "list deferred", id2},
		{"GET", "/api/queue?state=bogus", 400, "", `unknown state \"bogus\": want one of queued, deferred, held, failed`},
		{"GET", "/api/queue/" + id1, 200, "get " + id1, id1},
		{"GET", "/api/queue/" + missing, 404, "get " + missing, "no message " + missing + " in the queue"},
		{"GET", "/api/queue/not-an-id", 404, "get not-an-id", "no message not-an-id in the queue"},

		{"POST", "/api/queue/" + id2 + "/retry", 200, "retry " + id2, `{"id":"` + id2 + `","action":"retry"}`},
		{"POST", "/api/queue/" + held + "/retry", 409, "retry " + held, `{"error":"queue: message is held"}`},
		{"POST", "/api/queue/" + failed + "/retry", 409, "retry " + failed, "no pending recipient"},
		{"POST", "/api/queue/" + missing + "/retry", 404, "retry " + missing, "no message"},
		{"POST", "/api/queue/retry", 200, "retry-all", `{"retried":2}`},
		{"POST", "/api/queue/" + id1 + "/hold", 200, "hold " + id1, `"action":"hold"`},
		{"POST", "/api/queue/" + held + "/release", 200, "release " + held, `"action":"release"`},
		{"POST", "/api/queue/" + id1 + "/release", 409, "release " + id1, "not held"},
		{"POST", "/api/queue/" + failed + "/hold", 409, "hold " + failed, "no pending recipient"},
		{"POST", "/api/queue/" + id1 + "/bounce", 200, "bounce " + id1, `"action":"bounce"`},
		{"POST", "/api/queue/" + missing + "/bounce", 404, "bounce " + missing, "no message"},
		{"POST", "/api/queue/" + failed + "/bounce", 409, "bounce " + failed, "no pending recipient"},
		{"DELETE", "/api/queue/" + failed, 200, "delete " + failed, `"action":"delete"`},
		{"DELETE", "/api/queue/" + id1, 200, "delete " + id1, `"action":"delete"`},
		{"DELETE", "/api/queue/" + missing, 404, "delete " + missing, "no message"},

		{"POST", "/api/queue/" + id1 + "/frobnicate", 404, "", `no such action \"frobnicate\"`},
		{"GET", "/api/nothing", 404, "", "no such endpoint: /api/nothing"},
		{"GET", "/nothing", 404, "", "no such endpoint: /nothing"},

		{"POST", "/api/queue", 405, "", "method POST not allowed; use GET"},
		{"GET", "/api/queue/retry", 405, "", "use POST"},
		{"GET", "/api/queue/" + id1 + "/hold", 405, "", "use POST"},
		{"PUT", "/api/queue/" + id1, 405, "", "use GET or DELETE"},
		{"POST", "/healthz", 405, "", "use GET or HEAD"},
		{"DELETE", "/metrics", 405, "", "use GET or HEAD"},

		{"GET", "/healthz", 200, "", "ok\n"},
		{"GET", "/readyz", 200, "", "ready\n"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			e := newEnv(t, Options{Token: testToken, Metrics: metrics.NewMetrics().Handler()})
			w := e.do(tc.method, tc.target, "Bearer "+testToken)
			if w.Code != tc.code {
				t.Fatalf("status = %d, want %d; body %q", w.Code, tc.code, w.Body)
			}
			if !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("body = %q, want it to contain %q", w.Body, tc.body)
			}
			if tc.code >= 400 {
				errorOf(t, w) // every error is JSON
			}
			if tc.code == 405 && w.Header().Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
			calls := e.q.Calls()
			if tc.call == "" && len(calls) > 0 {
				t.Errorf("queue calls = %q, want none", calls)
			}
			if tc.call != "" && !slices.Equal(calls, []string{tc.call}) {
				t.Errorf("queue calls = %q, want [%q]", calls, tc.call)
			}
		})
	}
}

func TestListFilter(t *testing.T) {
	e := newEnv(t, Options{})
	for state, want := range map[string][]string{
		"":         {"0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004"},
		"queued":   {"0000000000000001"},
		"deferred": {"0000000000000002"},
		"held":     {"0000000000000003"},
		"failed":   {"0000000000000004"},
	} {
		w := e.do("GET", "/api/queue?state="+state, "")
		if w.Code != 200 {
			t.Fatalf("state %q: status %d: %s", state, w.Code, w.Body)
		}
		if got := ids(t, w.Body.Bytes()); !slices.Equal(got, want) {
			t.Errorf("state %q: ids = %q, want %q", state, got, want)
		}
	}

	// An empty list is [], not null.
	e.q.msgs = nil
	if w := e.do("GET", "/api/queue", ""); strings.TrimSpace(w.Body.String()) != "[]" {
		t.Errorf("empty queue: %d %q, want []", w.Code, w.Body)
	}
}

// TestMessageJSON checks the reply is queue.Message's own JSON, the wire
// format the CLI decodes.
func TestMessageJSON(t *testing.T) {
	e := newEnv(t, Options{})
	w := e.do("GET", "/api/queue/0000000000000003", "")
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("%s: %v", w.Body, err)
	}
	for k, want := range map[string]any{"id": "0000000000000003", "from": "", "held": true, "state": "held", "size": 1000.0} {
		if got[k] != want {
			t.Errorf("%q = %#v, want %#v (body %s)", k, got[k], want, w.Body)
		}
	}
	if rs, _ := got["recipients"].([]any); len(rs) != 1 {
		t.Errorf("recipients = %#v", got["recipients"])
	}
}

// TestMutationsTakeEffect checks that the handler reaches the queue, not
// just that it answers 200: a held message shows up under state=held.
func TestMutationsTakeEffect(t *testing.T) {
	e := newEnv(t, Options{})
	if w := e.do("POST", "/api/queue/0000000000000001/hold", ""); w.Code != 200 {
		t.Fatalf("hold: %d %s", w.Code, w.Body)
	}
	w := e.do("GET", "/api/queue?state=held", "")
	if got := ids(t, w.Body.Bytes()); !slices.Equal(got, []string{"0000000000000001", "0000000000000003"}) {
		t.Errorf("held after hold = %q", got)
	}
	if w := e.do("DELETE", "/api/queue/0000000000000001", ""); w.Code != 200 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	if w := e.do("GET", "/api/queue/0000000000000001", ""); w.Code != 404 {
		t.Errorf("get after delete: %d, want 404", w.Code)
	}
}

func TestToken(t *testing.T) {
	// Baseline: the right token passes; each case changes one thing.
	for _, tc := range []struct {
		name, authz string
		code        int
		challenge   string
	}{
		{"right", "Bearer " + testToken, 200, ""},
		{"scheme case-insensitive", "bearer " + testToken, 200, ""},
		{"missing", "", 401, `Bearer realm="postern"`},
		{"wrong", "Bearer " + testToken + "x", 401, `Bearer realm="postern", error="invalid_token"`},
		{"prefix", "Bearer " + testToken[:4], 401, `Bearer realm="postern", error="invalid_token"`},
		{"empty", "Bearer ", 401, `Bearer realm="postern", error="invalid_token"`},
		{"basic scheme", "Basic " + testToken, 401, `Bearer realm="postern"`},
		{"bare token", testToken, 401, `Bearer realm="postern"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Options{Token: testToken})
			for _, target := range []string{"/api/queue", "/api/queue/0000000000000001", "/api/unknown"} {
				w := e.do("GET", target, tc.authz)
				if tc.code == 200 {
					if w.Code == 401 {
						t.Errorf("%s: refused: %s", target, w.Body)
					}
					continue
				}
				if w.Code != tc.code {
					t.Errorf("%s: status %d, want %d", target, w.Code, tc.code)
				}
				if got := w.Header().Get("WWW-Authenticate"); got != tc.challenge {
					t.Errorf("%s: WWW-Authenticate = %q, want %q", target, got, tc.challenge)
				}
				errorOf(t, w)
			}
			if tc.code == 401 {
				if calls := e.q.Calls(); len(calls) > 0 {
					t.Errorf("refused requests reached the queue: %q", calls)
				}
				if n := e.logs.FilterMessage("admin: request refused").Len(); n != 3 {
					t.Errorf("%d refusals logged, want 3", n)
				}
			}
		})
	}
}

// TestNoTokenNeeded checks the documented choice: probes and metrics are
// open even when the API needs a token, and without a token the API is
// open.
func TestNoTokenNeeded(t *testing.T) {
	e := newEnv(t, Options{Token: testToken, Metrics: metrics.NewMetrics().Handler()})
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if w := e.do("GET", p, ""); w.Code != 200 {
			t.Errorf("%s without token: %d", p, w.Code)
		}
	}
	open := newEnv(t, Options{})
	if w := open.do("GET", "/api/queue", ""); w.Code != 200 {
		t.Errorf("API without a configured token: %d", w.Code)
	}
	if w := open.do("GET", "/metrics", ""); w.Code != 404 {
		t.Errorf("/metrics with nil Metrics: %d, want 404", w.Code)
	}
}

func TestReadyz(t *testing.T) {
	var reason error
	e := newEnv(t, Options{Ready: func() error { return reason }})
	if w := e.do("GET", "/readyz", ""); w.Code != 200 || w.Body.String() != "ready\n" {
		t.Errorf("ready: %d %q", w.Code, w.Body)
	}
	reason = errors.New("queue not open yet")
	if w := e.do("GET", "/readyz", ""); w.Code != 503 || w.Body.String() != "not ready: queue not open yet\n" {
		t.Errorf("not ready: %d %q", w.Code, w.Body)
	}
	// Liveness does not follow readiness.
	if w := e.do("GET", "/healthz", ""); w.Code != 200 || w.Body.String() != "ok\n" {
		t.Errorf("healthz while not ready: %d %q", w.Code, w.Body)
	}
}

func TestQueueErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("wrapped: %w", queue.ErrNotFound), 404},
		{fmt.Errorf("wrapped: %w", queue.ErrHeld), 409},
		{fmt.Errorf("wrapped: %w", queue.ErrNotHeld), 409},
		{queue.ErrFinal, 409},
		{queue.ErrClosed, 503},
		{errors.New("disk on fire"), 500},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			e := newEnv(t, Options{})
			e.q.err = tc.err
			for _, req := range [][2]string{
				{"GET", "/api/queue"},
				{"GET", "/api/queue/0000000000000001"},
				{"POST", "/api/queue/0000000000000001/retry"},
				{"POST", "/api/queue/retry"},
				{"DELETE", "/api/queue/0000000000000001"},
			} {
				w := e.do(req[0], req[1], "")
				if w.Code != tc.code {
					t.Errorf("%s %s: status %d, want %d", req[0], req[1], w.Code, tc.code)
				}
				msg := errorOf(t, w)
				if tc.code == 500 && msg != "disk on fire" {
					t.Errorf("%s %s: error %q", req[0], req[1], msg)
				}
			}
		})
	}
}

func TestActionsLogged(t *testing.T) {
	e := newEnv(t, Options{})
	e.do("POST", "/api/queue/0000000000000002/hold", "")
	e.do("POST", "/api/queue/0000000000000003/retry", "") // 409
	e.do("POST", "/api/queue/retry", "")
	e.do("GET", "/api/queue", "") // reads are not logged

	var got []string
	for _, l := range e.logs.All() {
		c := l.ContextMap()
		got = append(got, fmt.Sprintf("%s remote=%v action=%v id=%v", l.Message, c["remote"], c["action"], c["id"]))
	}
	want := []string{
		"admin: action remote=192.0.2.7:40000 action=hold id=0000000000000002",
		"admin: action failed remote=192.0.2.7:40000 action=retry id=0000000000000003",
		"admin: action remote=192.0.2.7:40000 action=retry-all id=<nil>",
	}
	if !slices.Equal(got, want) {
		t.Errorf("logs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNewHandlerNilQueue(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewHandler without a Queue did not panic")
		}
	}()
	NewHandler(Options{})
}

// TestHEAD checks the probes answer HEAD, which some load balancers use.
func TestHEAD(t *testing.T) {
	srv := httptest.NewServer(newEnv(t, Options{Metrics: metrics.NewMetrics().Handler()}).h)
	defer srv.Close()
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Head(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("HEAD %s: %d", p, resp.StatusCode)
		}
	}
}

// TestHostCheck: on a loopback listener, a request must name the listener
// (or localhost) in Host: a web page reaching 127.0.0.1 through DNS
// rebinding carries its own name and is refused, probes and metrics
// included; configured names pass; off loopback without names, Host is
// free (TLS and the token protect the API there).
func TestHostCheck(t *testing.T) {
	e := newEnv(t, Options{Listen: "127.0.0.1:8025", Hostname: "Mail.Example.org", AllowedHosts: []string{"postern.example.org", "admin.example.org:9000"},
		Metrics: metrics.NewMetrics().Handler()})
	for _, tt := range []struct {
		host string
		code int
	}{
		{"127.0.0.1:8025", 200},
		{"localhost:8025", 200},
		{"LOCALHOST:8025", 200},
		{"[::1]:8025", 200},
		{"postern.example.org", 200},
		{"postern.example.org:8025", 200},
		{"admin.example.org:9000", 200},
		{"mail.example.org:8025", 200},
		{"MAIL.example.org", 200},
		{"admin.example.org:8025", 421},
		{"rebind.attacker.example:8025", 421},
		{"127.0.0.1:9999", 421},
		{"", 421},
	} {
		for _, path := range []string{"/api/queue", "/healthz", "/metrics"} {
			r := httptest.NewRequest("GET", path, nil)
			r.Host = tt.host
			w := httptest.NewRecorder()
			e.h.ServeHTTP(w, r)
			if w.Code != tt.code {
				t.Errorf("GET %s with Host %q: %d, want %d", path, tt.host, w.Code, tt.code)
			}
		}
	}
	open := newEnv(t, Options{Listen: "0.0.0.0:8025"})
	r := httptest.NewRequest("GET", "/healthz", nil)
	r.Host = "10.0.0.5:8025"
	w := httptest.NewRecorder()
	open.h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Errorf("off loopback, any Host: %d", w.Code)
	}
	// A wildcard listener with names: those names, and loopback (where
	// the CLI reaches it), nothing else.
	named := newEnv(t, Options{Listen: "0.0.0.0:8025", AllowedHosts: []string{"admin.example.org"}})
	for host, want := range map[string]int{"admin.example.org:8025": 200, "127.0.0.1:8025": 200, "10.0.0.5:8025": 421} {
		r := httptest.NewRequest("GET", "/healthz", nil)
		r.Host = host
		w := httptest.NewRecorder()
		named.h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("wildcard listener with names, Host %q: %d, want %d", host, w.Code, want)
		}
	}
}

// TestCrossOriginRefused: a state change a browser makes from another
// site (CSRF) is refused, whatever the token; the same request from the
// CLI (no Origin, no Sec-Fetch-Site) or from the same origin goes through.
func TestCrossOriginRefused(t *testing.T) {
	e := newEnv(t, Options{Listen: "127.0.0.1:8025"})
	for _, tt := range []struct {
		name   string
		header map[string]string
		code   int
	}{
		{"cross-site fetch", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"another origin", map[string]string{"Origin": "https://evil.example"}, 403},
		{"same origin", map[string]string{"Origin": "http://127.0.0.1:8025", "Sec-Fetch-Site": "same-origin"}, 200},
		{"the CLI", nil, 200},
	} {
		r := httptest.NewRequest("POST", "/api/queue/0000000000000002/retry", nil)
		r.Host = "127.0.0.1:8025"
		for k, v := range tt.header {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != tt.code {
			t.Errorf("%s: %d, want %d (%s)", tt.name, w.Code, tt.code, w.Body)
		}
	}
	if calls := e.q.Calls(); len(calls) != 2 {
		t.Errorf("queue calls %v, want the two allowed retries only", calls)
	}
}

// fakeDestinations is delivery's view of its destinations, fixed.
type fakeDestinations []queue.Destination

func (f fakeDestinations) Destinations() []queue.Destination { return f }

// TestDestinations: GET /api/destinations returns what delivery says of its
// destinations, as JSON, behind the token like the rest of the API; an
// empty list (not null) without any.
func TestDestinations(t *testing.T) {
	until := time.Date(2026, 12, 8, 11, 0, 0, 0, time.UTC)
	e := newEnv(t, Options{Token: testToken, Destinations: fakeDestinations{
		{Name: "google", Kind: "provider", State: "suspended", Until: until, Active: 1,
			Limits:    queue.DestinationLimits{Connections: 5, Rate: 0.5},
			LastReply: reply.Reply{Code: 421, Enhanced: reply.MustEnhanced("4.7.28"), Text: "slow down"}, RateLimited: 3},
		{Name: "mx1.example.test", Kind: "destination", State: "dead", Domains: []string{"example.test"}},
	}})
	w := e.do("GET", "/api/destinations", "Bearer "+testToken)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var got []map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got) != 2 {
		t.Fatalf("body %s: %v", w.Body, err)
	}
	want := map[string]any{"name": "google", "kind": "provider", "state": "suspended", "until": "2026-12-08T11:00:00Z",
		"active": 1.0, "rate_limited": 3.0,
		"limits":     map[string]any{"connections": 5.0, "rate": 0.5},
		"last_reply": map[string]any{"code": 421.0, "enhanced_code": "4.7.28", "text": "slow down"}}
	for k, v := range want {
		if !reflect.DeepEqual(got[0][k], v) {
			t.Errorf("%s = %#v, want %#v", k, got[0][k], v)
		}
	}
	if w := e.do("GET", "/api/destinations", ""); w.Code != 401 {
		t.Errorf("without the token: %d, want 401", w.Code)
	}
	if w := e.do("POST", "/api/destinations", "Bearer "+testToken); w.Code != 405 {
		t.Errorf("POST: %d, want 405", w.Code)
	}
	none := newEnv(t, Options{})
	if w := none.do("GET", "/api/destinations", ""); w.Code != 200 || strings.TrimSpace(w.Body.String()) != "[]" {
		t.Errorf("without delivery state: %d %q, want 200 []", w.Code, w.Body)
	}
}

package httpapi

import (
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// fakeDrainer records the timeouts it was asked to drain with.
type fakeDrainer struct {
	mu    sync.Mutex
	calls []time.Duration
}

func (f *fakeDrainer) Drain(timeout time.Duration) DrainStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, timeout)
	return DrainStatus{Draining: true, Deferred: 2}
}

func (f *fakeDrainer) DrainStatus() DrainStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return DrainStatus{Draining: len(f.calls) > 0}
}

func (f *fakeDrainer) Calls() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.calls...)
}

// TestDrain: POST /api/drain takes the token, refuses a browser's
// cross-site request and a bad timeout, and passes the timeout on (5m
// when none is given); GET reads the status.
func TestDrain(t *testing.T) {
	d := &fakeDrainer{}
	e := newEnv(t, Options{Token: testToken, Drainer: d, Listen: "127.0.0.1:8025"})
	auth := "Bearer " + testToken
	req := func(method, target, authz string, header map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, target, nil)
		r.Host = "127.0.0.1:8025"
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		for k, v := range header {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		return w
	}

	if w := req("GET", "/api/drain", auth, nil); w.Code != 200 || !jsonHas(t, w, "draining", false) {
		t.Errorf("GET before a drain: %d %s", w.Code, w.Body)
	}
	for _, tt := range []struct {
		name   string
		target string
		authz  string
		header map[string]string
		code   int
	}{
		{"no token", "/api/drain", "", nil, 401},
		{"wrong token", "/api/drain", "Bearer nope", nil, 401},
		{"cross-site", "/api/drain", auth, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"another origin", "/api/drain", auth, map[string]string{"Origin": "https://evil.example"}, 403},
		{"bad timeout", "/api/drain?timeout=soon", auth, nil, 400},
		{"zero timeout", "/api/drain?timeout=0s", auth, nil, 400},
		{"huge timeout", "/api/drain?timeout=5000h", auth, nil, 400},
	} {
		if w := req("POST", tt.target, tt.authz, tt.header); w.Code != tt.code {
			t.Errorf("%s: %d, want %d (%s)", tt.name, w.Code, tt.code, w.Body)
		}
	}
	if calls := d.Calls(); len(calls) != 0 {
		t.Fatalf("refused requests drained: %v", calls)
	}

	w := req("POST", "/api/drain", auth, nil)
	if w.Code != 202 || !jsonHas(t, w, "draining", true) || !jsonHas(t, w, "deferred", float64(2)) {
		t.Errorf("POST: %d %s, want 202 and the status", w.Code, w.Body)
	}
	if w := req("POST", "/api/drain?timeout=90s", auth, nil); w.Code != 202 {
		t.Errorf("POST ?timeout=90s: %d %s", w.Code, w.Body)
	}
	if calls := d.Calls(); len(calls) != 2 || calls[0] != 5*time.Minute || calls[1] != 90*time.Second {
		t.Errorf("drain timeouts %v, want [5m 1m30s]", calls)
	}
	if w := req("GET", "/api/drain", auth, nil); w.Code != 200 || !jsonHas(t, w, "draining", true) {
		t.Errorf("GET during a drain: %d %s", w.Code, w.Body)
	}
	if w := req("DELETE", "/api/drain", auth, nil); w.Code != 405 {
		t.Errorf("DELETE: %d, want 405", w.Code)
	}

	// Without a Drainer there is no such endpoint.
	e = newEnv(t, Options{})
	if w := e.do("POST", "/api/drain", ""); w.Code != 404 {
		t.Errorf("POST without a Drainer: %d, want 404", w.Code)
	}
}

// jsonHas reports whether the reply's JSON object has key set to want.
func jsonHas(t *testing.T, w *httptest.ResponseRecorder, key string, want any) bool {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("reply is not a JSON object: %v: %s", err, w.Body)
	}
	return m[key] == want
}

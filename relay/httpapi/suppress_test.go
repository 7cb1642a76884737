package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"postern/queue"
)

// fakeSuppressions keeps suppressions in memory the way the Suppressions
// contract says: keyed by user and lower-case address, ErrNotFound from
// Unsuppress when there is nothing to remove.
type fakeSuppressions struct {
	mu  sync.Mutex
	m   map[[2]string]queue.Suppression
	err error
}

func (f *fakeSuppressions) Suppressions(user string, all bool) ([]queue.Suppression, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []queue.Suppression
	for k, s := range f.m {
		if all || k[0] == user {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b queue.Suppression) int {
		return strings.Compare(a.User+"\x00"+a.Address, b.User+"\x00"+b.Address)
	})
	return out, nil
}

func (f *fakeSuppressions) Suppress(s queue.Suppression) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.m[[2]string{s.User, strings.ToLower(s.Address)}] = s
	return nil
}

func (f *fakeSuppressions) Unsuppress(user, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	k := [2]string{user, strings.ToLower(addr)}
	if _, ok := f.m[k]; !ok {
		return fmt.Errorf("%w: %s is not suppressed", queue.ErrNotFound, addr)
	}
	delete(f.m, k)
	return nil
}

func suppressionEnv(t *testing.T) (*env, *fakeSuppressions) {
	sups := &fakeSuppressions{m: map[[2]string]queue.Suppression{
		{"", "gone@example.org"}:      {User: "", Address: "gone@example.org", Reason: queue.SuppressBounce, QueueID: "0000000000000004"},
		{"alice", "gone@example.org"}: {User: "alice", Address: "gone@example.org", Reason: queue.SuppressComplaint},
	}}
	return newEnv(t, Options{Token: testToken, Suppressions: sups}), sups
}

func suppressionRows(t *testing.T, body []byte) []string {
	t.Helper()
	var ss []queue.Suppression
	if err := json.Unmarshal(body, &ss); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	out := []string{}
	for _, s := range ss {
		out = append(out, s.User+"/"+s.Address+"/"+s.Reason)
	}
	return out
}

// TestSuppressionsList: without a user parameter every user's list; with
// user=U one user's; with an empty user the relay listener's.
func TestSuppressionsList(t *testing.T) {
	e, _ := suppressionEnv(t)
	for _, tc := range []struct {
		target string
		want   []string
	}{
		{"/api/suppressions", []string{"/gone@example.org/bounce", "alice/gone@example.org/complaint"}},
		{"/api/suppressions?user=alice", []string{"alice/gone@example.org/complaint"}},
		{"/api/suppressions?user=", []string{"/gone@example.org/bounce"}},
		{"/api/suppressions?user=bob", []string{}},
	} {
		w := e.do(http.MethodGet, tc.target, "Bearer "+testToken)
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", tc.target, w.Code, w.Body)
		}
		if got := suppressionRows(t, w.Body.Bytes()); !slices.Equal(got, tc.want) {
			t.Errorf("GET %s: %q, want %q", tc.target, got, tc.want)
		}
	}
}

// TestSuppressionsChange: PUT adds a manual suppression (the address as
// the SMTP side would write it), DELETE removes one, a second DELETE is a
// 404 naming the list; a bad address is a 400 and changes nothing.
func TestSuppressionsChange(t *testing.T) {
	e, sups := suppressionEnv(t)
	auth := "Bearer " + testToken
	if w := e.do(http.MethodPut, "/api/suppressions/Carol@Example.ORG?user=alice", auth); w.Code != http.StatusOK {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	if s, ok := sups.m[[2]string{"alice", "carol@example.org"}]; !ok || s.Reason != queue.SuppressManual || s.Created.IsZero() {
		t.Errorf("after PUT: %+v, %v; want a manual suppression with its time", s, ok)
	}
	if w := e.do(http.MethodDelete, "/api/suppressions/gone@example.org", auth); w.Code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if _, ok := sups.m[[2]string{"", "gone@example.org"}]; ok {
		t.Error("the relay listener's suppression is still there after DELETE")
	}
	if _, ok := sups.m[[2]string{"alice", "gone@example.org"}]; !ok {
		t.Error("DELETE without a user removed alice's suppression")
	}
	w := e.do(http.MethodDelete, "/api/suppressions/gone@example.org", auth)
	if got := errorOf(t, w); w.Code != http.StatusNotFound || got != "gone@example.org is not suppressed for mail without AUTH (the relay listener)" {
		t.Errorf("second DELETE: %d %q", w.Code, got)
	}
	before := len(sups.m)
	w = e.do(http.MethodPut, "/api/suppressions/no-at-sign?user=alice", auth)
	if got := errorOf(t, w); w.Code != http.StatusBadRequest || !strings.HasPrefix(got, `bad address "no-at-sign"`) {
		t.Errorf("PUT of a bad address: %d %q", w.Code, got)
	}
	if len(sups.m) != before {
		t.Errorf("a refused PUT changed the list")
	}
	if w := e.do(http.MethodPost, "/api/suppressions/x@example.org", auth); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", w.Code)
	}
}

// TestSuppressionsNeedTheToken: like the queue endpoints, nothing is
// listed or changed without the token.
func TestSuppressionsNeedTheToken(t *testing.T) {
	e, sups := suppressionEnv(t)
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		target := "/api/suppressions/gone@example.org"
		if m == http.MethodGet {
			target = "/api/suppressions"
		}
		if w := e.do(m, target, ""); w.Code != http.StatusUnauthorized {
			t.Errorf("%s without a token: %d", m, w.Code)
		}
		if w := e.do(m, target, "Bearer wrong"); w.Code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", m, w.Code)
		}
	}
	if len(sups.m) != 2 {
		t.Errorf("the list changed: %v", sups.m)
	}
}

// TestSuppressionsErrors: a closed queue is a 503; without
// Options.Suppressions the endpoints do not exist.
func TestSuppressionsErrors(t *testing.T) {
	e, sups := suppressionEnv(t)
	sups.err = fmt.Errorf("suppressions: %w", queue.ErrClosed)
	if w := e.do(http.MethodGet, "/api/suppressions", "Bearer "+testToken); w.Code != http.StatusServiceUnavailable {
		t.Errorf("closed queue: %d %s", w.Code, w.Body)
	}
	sups.err = errors.New("disk on fire")
	if w := e.do(http.MethodPut, "/api/suppressions/x@example.org", "Bearer "+testToken); w.Code != http.StatusInternalServerError {
		t.Errorf("failing queue: %d %s", w.Code, w.Body)
	}
	off := newEnv(t, Options{Token: testToken})
	if w := off.do(http.MethodGet, "/api/suppressions", "Bearer "+testToken); w.Code != http.StatusNotFound {
		t.Errorf("without Suppressions: %d", w.Code)
	}
}

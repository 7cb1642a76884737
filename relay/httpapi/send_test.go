package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"postern/auth"
	"postern/queue"
	"postern/queue/reply"
	"postern/relay/submit"
)

// The send API's tests run the real queue (bbolt in a temporary
// directory, no delivery) behind the real submission pipeline; only the
// key store and the rate limiter are fakes.

const (
	aliceKey = "pk_alice_secret"
	bobKey   = "pk_bob_secret"
)

type fakeKeys map[string]*auth.User

func (k fakeKeys) AuthenticateKey(_ context.Context, secret string) (*auth.User, string, error) {
	if u, ok := k[secret]; ok {
		return u, "key1", nil
	}
	return nil, "", auth.ErrInvalidCredentials
}

// fakeLimiter refuses with wait once n messages were taken (-1: never
// refuse).
type fakeLimiter struct {
	mu   sync.Mutex
	n    int
	wait time.Duration
}

func (l *fakeLimiter) TakeMessage(user string, rcpts int, now time.Time) (time.Duration, string, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return l.wait, "Message", "2/hour"
	}
	l.n--
	return 0, "", ""
}

// recorder keeps the bodies the pipeline queues, and can fail.
type recorder struct {
	q    *queue.Queue
	mu   sync.Mutex
	msgs map[string][]byte
	err  error
}

func (r *recorder) EnqueuePrefixed(ctx context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	if r.err != nil {
		io.Copy(io.Discard, body)
		return "", r.err
	}
	var buf bytes.Buffer
	var pre []byte
	id, err := r.q.EnqueuePrefixed(ctx, env, io.TeeReader(body, &buf), func() ([]byte, error) {
		p, err := prefix()
		pre = p
		return p, err
	})
	if err == nil {
		r.mu.Lock()
		r.msgs[id] = append(pre, buf.Bytes()...)
		r.mu.Unlock()
	}
	return id, err
}

type sendEnv struct {
	t       *testing.T
	q       *queue.Queue
	rec     *recorder
	limiter *fakeLimiter
	h       http.Handler
}

func newSendEnv(t *testing.T, opts ...func(*SendOptions)) *sendEnv {
	t.Helper()
	dir := t.TempDir()
	q, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db"), Hostname: "mail.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close(context.Background()) })
	rec := &recorder{q: q, msgs: map[string][]byte{}}
	e := &sendEnv{t: t, q: q, rec: rec, limiter: &fakeLimiter{n: -1}}
	keys := fakeKeys{
		aliceKey: auth.NewUser("alice@example.test", patterns(t, "alice@example.test", "@news.example.test")),
		bobKey:   auth.NewUser("bob@example.test", patterns(t, "bob@example.test")),
	}
	o := SendOptions{
		Queue:          q,
		Submitter:      submit.New(submit.Options{Hostname: "mail.example.test", Queue: rec, FixHeaders: true, MaxReceived: 50}),
		Keys:           keys,
		Limiter:        e.limiter,
		MaxMessageSize: 64 << 10,
		MaxRecipients:  3,
		Now:            func() time.Time { return time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC) },
		Listen:         "127.0.0.1:8080",
	}
	for _, f := range opts {
		f(&o)
	}
	e.h = NewSendHandler(o)
	return e
}

func patterns(t *testing.T, list ...string) []auth.Pattern {
	var out []auth.Pattern
	for _, s := range list {
		p, err := auth.ParsePattern(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// addresses lists a message's recipients.
func addresses(m *queue.Message) []string {
	var out []string
	for _, r := range m.Rcpts {
		out = append(out, r.Address)
	}
	return out
}

// do sends a request; ctype "" sends JSON.
func (e *sendEnv) do(method, target, key, ctype, body string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "http://127.0.0.1:8080"+target, strings.NewReader(body))
	r.RemoteAddr = "127.0.0.1:40000"
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	if ctype == "" {
		ctype = "application/json"
	}
	r.Header.Set("Content-Type", ctype)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

func (e *sendEnv) queued() int {
	e.t.Helper()
	l, err := e.q.List(queue.Filter{})
	if err != nil {
		e.t.Fatal(err)
	}
	return len(l)
}

func decodeAnswer(t *testing.T, w *httptest.ResponseRecorder) sendAnswer {
	t.Helper()
	if w.Code != http.StatusAccepted {
		t.Fatalf("status %d, want 202: %s", w.Code, w.Body)
	}
	var a sendAnswer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil || a.ID == "" || a.MessageID == "" {
		t.Fatalf("answer %s: %+v, %v", w.Body, a, err)
	}
	return a
}

func apiErrorOf(t *testing.T, w *httptest.ResponseRecorder) apiErrorBody {
	t.Helper()
	var b apiErrorBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || b.Error.Code == "" || b.Error.Message == "" {
		t.Fatalf("status %d: body %q is not an API error: %v", w.Code, w.Body, err)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
	return b
}

// TestSendJSON: a JSON request is built, signed by the pipeline's rules
// (Message-ID, Received), queued for the key's user with the envelope
// the request names, Bcc in the envelope only.
func TestSendJSON(t *testing.T) {
	e := newSendEnv(t)
	w := e.do("POST", "/v1/messages", aliceKey, "", `{"from": "Alice <alice@example.test>", "to": ["bob@example.org"],
		"cc": ["carol@example.org"], "bcc": ["dave@example.org"], "subject": "Grüße", "text": "hello\n",
		"tags": ["welcome"], "metadata": {"user_id": "42"}}`)
	a := decodeAnswer(t, w)
	if !strings.HasPrefix(a.MessageID, "<") || strings.Contains(w.Body.String(), `\u003c`) {
		t.Errorf("message_id %q in %s", a.MessageID, w.Body)
	}
	m, err := e.q.Get(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	env := m.Envelope
	if env.From != "alice@example.test" || env.User != "alice@example.test" || env.Listener != "api" ||
		strings.Join(addresses(m), ",") != "bob@example.org,carol@example.org,dave@example.org" ||
		env.MessageID != a.MessageID || strings.Join(env.Tags, ",") != "welcome" || env.Metadata["user_id"] != "42" {
		t.Errorf("queued %+v, rcpts %v", env, addresses(m))
	}
	body := string(e.rec.msgs[a.ID])
	for _, want := range []string{"Received: from unknown ([127.0.0.1])", "with HTTP;", "Message-ID: " + a.MessageID, "\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n",
		"\r\nTo: <bob@example.org>\r\n", "\r\nCc: <carol@example.org>\r\n", "hello\r\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("queued message lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(strings.ToLower(body), "dave@") {
		t.Errorf("the Bcc recipient is in the message:\n%s", body)
	}
}

// TestSendRaw: a message/rfc822 body is queued as sent (plus the
// pipeline's fields), its envelope from the query or from its header.
func TestSendRaw(t *testing.T) {
	e := newSendEnv(t)
	raw := "From: alice@example.test\nTo: bob@example.org\nBcc: hidden@example.org\nSubject: raw\n\nbody\n"
	a := decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "message/rfc822", raw))
	m, _ := e.q.Get(a.ID)
	if m.Envelope.From != "alice@example.test" || strings.Join(addresses(m), ",") != "bob@example.org,hidden@example.org" {
		t.Errorf("envelope from the header: %q %v", m.Envelope.From, addresses(m))
	}
	if body := string(e.rec.msgs[a.ID]); strings.Contains(body, "hidden@") || !strings.Contains(body, "\r\nSubject: raw\r\n\r\nbody\r\n") {
		t.Errorf("queued:\n%s", body)
	}

	a = decodeAnswer(t, e.do("POST", "/v1/messages?from=news%40news.example.test&to=x%40example.org&to=y%40example.org", aliceKey, "message/rfc822",
		"From: Alice <alice@example.test>\r\nSubject: q\r\n\r\nbody\r\n"))
	m, _ = e.q.Get(a.ID)
	if m.Envelope.From != "news@news.example.test" || strings.Join(addresses(m), ",") != "x@example.org,y@example.org" {
		t.Errorf("envelope from the query: %q %v", m.Envelope.From, addresses(m))
	}
}

// TestSendRefused: each error has its status and code, says what is
// wrong, and queues nothing.
func TestSendRefused(t *testing.T) {
	big := strings.Repeat("x", 70<<10)
	for _, tt := range []struct {
		name, method, target, key, ctype, body string
		status                                 int
		code                                   string
	}{
		{"no key", "POST", "/v1/messages", "", "", `{}`, 401, "unauthorized"},
		{"wrong key", "POST", "/v1/messages", "pk_nope", "", `{}`, 401, "unauthorized"},
		{"media type", "POST", "/v1/messages", aliceKey, "text/plain", `hi`, 415, "unsupported_media_type"},
		{"not JSON", "POST", "/v1/messages", aliceKey, "", `{"from":`, 400, "invalid_json"},
		{"unknown field", "POST", "/v1/messages", aliceKey, "", `{"form": "alice@example.test"}`, 400, "invalid_json"},
		{"two objects", "POST", "/v1/messages", aliceKey, "", `{} {}`, 400, "invalid_json"},
		{"fields", "POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["not an address"]}`, 400, "invalid_request"},
		{"sender", "POST", "/v1/messages", bobKey, "", `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`, 403, "sender_not_allowed"},
		{"header From", "POST", "/v1/messages?from=alice%40example.test&to=x%40example.org", aliceKey, "message/rfc822",
			"From: ceo@bank.example\r\nSubject: s\r\n\r\nb\r\n", 403, "header_from_not_allowed"},
		{"too large", "POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["x@example.org"], "text": "` + big + `"}`, 413, "message_too_large"},
		{"raw too large", "POST", "/v1/messages?to=x%40example.org", aliceKey, "message/rfc822", "From: alice@example.test\r\n\r\n" + big, 413, "message_too_large"},
		{"recipients", "POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["a@x.example", "b@x.example", "c@x.example", "d@x.example"], "text": "t"}`, 400, "too_many_recipients"},
		{"raw without envelope", "POST", "/v1/messages", aliceKey, "message/rfc822", "Subject: s\r\n\r\nb\r\n", 400, "invalid_request"},
		{"idempotency key", "POST", "/v1/messages", aliceKey, "", `{}`, 400, "invalid_idempotency_key"},
		{"method", "PUT", "/v1/messages", aliceKey, "", `{}`, 405, "method_not_allowed"},
		{"no endpoint", "GET", "/v2/messages", aliceKey, "", ``, 404, "not_found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newSendEnv(t)
			var hdr []string
			if tt.code == "invalid_idempotency_key" {
				hdr = []string{"Idempotency-Key", strings.Repeat("k", 256)}
			}
			w := e.do(tt.method, tt.target, tt.key, tt.ctype, tt.body, hdr...)
			b := apiErrorOf(t, w)
			if w.Code != tt.status || b.Error.Code != tt.code {
				t.Errorf("status %d code %q, want %d %q: %s", w.Code, b.Error.Code, tt.status, tt.code, w.Body)
			}
			if n := e.queued(); n != 0 {
				t.Errorf("%d messages queued after an error", n)
			}
		})
	}
}

// TestSendFieldErrors: every problem of a request is named by field, at
// once.
func TestSendFieldErrors(t *testing.T) {
	e := newSendEnv(t)
	w := e.do("POST", "/v1/messages", aliceKey, "", `{"from": "", "to": ["bob@example.org", "x@@y"], "headers": {"Received": "forged"}}`)
	b := apiErrorOf(t, w)
	got := map[string]bool{}
	for _, f := range b.Error.Fields {
		got[f.Field] = true
	}
	for _, want := range []string{"from", "to[1]", `headers["Received"]`, "text"} {
		if !got[want] {
			t.Errorf("no error for field %q in %s", want, w.Body)
		}
	}
}

// TestSendRateLimited: 429 with Retry-After in whole seconds, rounded up.
func TestSendRateLimited(t *testing.T) {
	e := newSendEnv(t)
	e.limiter.n, e.limiter.wait = 1, 90*time.Second+time.Millisecond
	req := `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`
	decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", req))
	w := e.do("POST", "/v1/messages", aliceKey, "", req)
	if b := apiErrorOf(t, w); w.Code != 429 || b.Error.Code != "rate_limited" || w.Header().Get("Retry-After") != "91" {
		t.Errorf("status %d, Retry-After %q: %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if n := e.queued(); n != 1 {
		t.Errorf("%d queued, want 1", n)
	}
}

// TestSendStorage: a full disk is 503 with Retry-After, a queue that has
// closed is 503 shutting_down, anything else a 500 that does not show
// the internal error.
func TestSendStorage(t *testing.T) {
	for _, tt := range []struct {
		err    error
		status int
		code   string
	}{
		{&wrapped{syscall.ENOSPC}, 503, "insufficient_storage"},
		{queue.ErrClosed, 503, "shutting_down"},
		{errors.New("bbolt: secret internal detail"), 500, "internal_error"},
	} {
		e := newSendEnv(t)
		e.rec.err = tt.err
		w := e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`)
		b := apiErrorOf(t, w)
		if w.Code != tt.status || b.Error.Code != tt.code || strings.Contains(w.Body.String(), "secret") {
			t.Errorf("%v: status %d %s", tt.err, w.Code, w.Body)
		}
		if tt.status == 503 && w.Header().Get("Retry-After") == "" {
			t.Errorf("%v: no Retry-After", tt.err)
		}
	}
}

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "write queue.db: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// TestIdempotencyKey: the same key from the same user answers the first
// answer again and queues nothing; from another user it is another key;
// requests racing with one key queue one message.
func TestIdempotencyKey(t *testing.T) {
	e := newSendEnv(t)
	req := `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`
	first := decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", req, "Idempotency-Key", "order-1"))
	w := e.do("POST", "/v1/messages", aliceKey, "", `{"garbage`, "Idempotency-Key", "order-1")
	if again := decodeAnswer(t, w); again.ID != first.ID || again.MessageID != first.MessageID || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay %+v (header %q), want %+v", again, w.Header().Get("Idempotent-Replayed"), first)
	}
	bobs := decodeAnswer(t, e.do("POST", "/v1/messages", bobKey, "", `{"from": "bob@example.test", "to": ["x@example.org"], "text": "t"}`, "Idempotency-Key", "order-1"))
	if bobs.ID == first.ID {
		t.Error("another user's key replayed alice's answer")
	}
	if n := e.queued(); n != 2 {
		t.Fatalf("%d queued, want 2", n)
	}

	var wg sync.WaitGroup
	answers := make([]sendAnswer, 8)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := e.do("POST", "/v1/messages", aliceKey, "", req, "Idempotency-Key", "order-2")
			json.Unmarshal(w.Body.Bytes(), &answers[i])
		}()
	}
	wg.Wait()
	for _, a := range answers[1:] {
		if a.ID != answers[0].ID || a.ID == "" {
			t.Errorf("racing requests: %+v", answers)
			break
		}
	}
	if n := e.queued(); n != 3 {
		t.Errorf("%d queued after 8 racing requests with one key, want 3", n)
	}
}

// TestSendSuppressed: suppressed recipients are left out and named; when
// none is left the request is refused with 422; the user can list and
// remove their suppressions, and only theirs.
func TestSendSuppressed(t *testing.T) {
	e := newSendEnv(t)
	gone := reply.Reply{Code: 550, Enhanced: reply.Enhanced{Class: 5, Subject: 1, Detail: 1}, Text: "no such user"}
	if err := e.q.Suppress(queue.Suppression{User: "alice@example.test", Address: "gone@example.org", Reason: "bounce", Reply: gone}); err != nil {
		t.Fatal(err)
	}
	a := decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["gone@example.org", "here@example.org"], "text": "t"}`))
	if strings.Join(a.Suppressed, ",") != "gone@example.org" {
		t.Errorf("suppressed %v", a.Suppressed)
	}
	if m, _ := e.q.Get(a.ID); strings.Join(addresses(m), ",") != "here@example.org" {
		t.Errorf("queued for %v", addresses(m))
	}
	w := e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["Gone@example.org"], "text": "t"}`)
	if b := apiErrorOf(t, w); w.Code != 422 || b.Error.Code != "all_recipients_suppressed" || strings.Join(b.Error.Suppressed, ",") != "Gone@example.org" {
		t.Errorf("all suppressed: %d %s", w.Code, w.Body)
	}
	// bob's mail to the address is not affected by alice's suppression.
	decodeAnswer(t, e.do("POST", "/v1/messages", bobKey, "", `{"from": "bob@example.test", "to": ["gone@example.org"], "text": "t"}`))

	w = e.do("GET", "/v1/suppressions", bobKey, "", "")
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != "[]" {
		t.Errorf("bob's list: %d %s", w.Code, w.Body)
	}
	w = e.do("GET", "/v1/suppressions", aliceKey, "", "")
	var l []queue.Suppression
	if json.Unmarshal(w.Body.Bytes(), &l); len(l) != 1 || l[0].Address != "gone@example.org" || l[0].Reply.Code != 550 {
		t.Errorf("alice's list: %s", w.Body)
	}
	if w := e.do("DELETE", "/v1/suppressions/gone@example.org", bobKey, "", ""); w.Code != 404 {
		t.Errorf("bob removed alice's suppression: %d", w.Code)
	}
	if w := e.do("DELETE", "/v1/suppressions/not%20an%20address", aliceKey, "", ""); w.Code != 400 || apiErrorOf(t, w).Error.Code != "invalid_address" {
		t.Errorf("delete of a malformed address: %d %s", w.Code, w.Body)
	}
	if w := e.do("DELETE", "/v1/suppressions/gone@example.org", aliceKey, "", ""); w.Code != 204 {
		t.Errorf("delete: %d %s", w.Code, w.Body)
	}
	decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["gone@example.org"], "text": "t"}`))
}

// TestSendSuppressionsOff: with the list off (suppression.enabled: false)
// the API sends to a listed address, as SMTP does.
func TestSendSuppressionsOff(t *testing.T) {
	e := newSendEnv(t, func(o *SendOptions) { o.IgnoreSuppressions = true })
	if err := e.q.Suppress(queue.Suppression{User: "alice@example.test", Address: "gone@example.org", Reason: "bounce"}); err != nil {
		t.Fatal(err)
	}
	a := decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["gone@example.org"], "text": "t"}`))
	if m, _ := e.q.Get(a.ID); len(a.Suppressed) != 0 || strings.Join(addresses(m), ",") != "gone@example.org" {
		t.Errorf("suppressed %v, queued for %v", a.Suppressed, addresses(m))
	}
}

// TestMessageStatus: the owner sees the message's state per recipient;
// another user gets 404, as for a message that does not exist.
func TestMessageStatus(t *testing.T) {
	e := newSendEnv(t)
	a := decodeAnswer(t, e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`))
	w := e.do("GET", "/v1/messages/"+a.ID, aliceKey, "", "")
	var m queue.Message
	if err := json.Unmarshal(w.Body.Bytes(), &m); w.Code != 200 || err != nil || m.ID != a.ID || len(m.Rcpts) != 1 || m.Rcpts[0].Address != "x@example.org" {
		t.Errorf("owner: %d %s", w.Code, w.Body)
	}
	for _, tt := range []struct{ key, id string }{{bobKey, a.ID}, {aliceKey, "ffffffffffffffff"}} {
		w := e.do("GET", "/v1/messages/"+tt.id, tt.key, "", "")
		if b := apiErrorOf(t, w); w.Code != 404 || b.Error.Code != "not_found" {
			t.Errorf("%s as %s: %d %s", tt.id, tt.key, w.Code, w.Body)
		}
	}
}

// TestSendCrossOrigin: a browser's cross-site POST is refused before its
// key is even looked at; a foreign Host is refused (DNS rebinding).
func TestSendCrossOrigin(t *testing.T) {
	e := newSendEnv(t)
	w := e.do("POST", "/v1/messages", aliceKey, "", `{"from": "alice@example.test", "to": ["x@example.org"], "text": "t"}`,
		"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")
	if b := apiErrorOf(t, w); w.Code != 403 || b.Error.Code != "cross_origin" {
		t.Errorf("cross-site: %d %s", w.Code, w.Body)
	}
	r := httptest.NewRequest("GET", "http://evil.example/v1/suppressions", nil)
	r.Header.Set("Authorization", "Bearer "+aliceKey)
	w = httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	if b := apiErrorOf(t, w); w.Code != 421 || b.Error.Code != "misdirected" {
		t.Errorf("foreign Host: %d %s", w.Code, w.Body)
	}
	if n := e.queued(); n != 0 {
		t.Errorf("%d queued", n)
	}
}

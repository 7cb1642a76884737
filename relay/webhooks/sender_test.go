package webhooks

import (
	"context"
	"crypto/hmac"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/reply"
)

var t0 = time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// clock is a fake clock the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// results is an Observer that passes each result on.
type results chan string

func (r results) WebhookResult(endpoint, result string) { r <- endpoint + " " + result }

// received is one request the test receiver got, checked against the
// secret the way a Standard Webhooks library checks it.
type received struct {
	id, ts, body string
	validSig     bool
	reply        chan int // the test answers with a status; 0: hang until the request is cut
}

// rig is a real queue with one subscriber, a real HTTP receiver, and a
// Manager between them.
type rig struct {
	t     *testing.T
	q     *queue.Queue
	clock *clock
	got   chan *received
	res   results
	m     *Manager
	url   string
}

func newRig(t *testing.T, opts func(*Options)) *rig {
	t.Helper()
	r := &rig{t: t, clock: &clock{t: t0}, got: make(chan *received, 16), res: make(results, 16)}
	q, err := queue.Open(queue.Options{
		Path: filepath.Join(t.TempDir(), "queue.db"), Now: r.clock.Now,
		Subscribers: []queue.Subscriber{{Name: "hook"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.q = q
	secret, _ := ParseSecret(testSecret)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		rc := &received{id: req.Header.Get("webhook-id"), ts: req.Header.Get("webhook-timestamp"), body: string(body), reply: make(chan int, 1)}
		if n, err := strconv.ParseInt(rc.ts, 10, 64); err == nil {
			want := secret.Signature(rc.id, time.Unix(n, 0), body)
			rc.validSig = hmac.Equal([]byte(want), []byte(req.Header.Get("webhook-signature"))) &&
				req.Header.Get("Content-Type") == "application/json"
		}
		r.got <- rc
		select {
		case code := <-rc.reply:
			w.WriteHeader(code)
			if code >= 300 {
				io.WriteString(w, "not today")
			}
		case <-req.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	o := Options{
		Source:    q,
		Endpoints: []Endpoint{{Name: "hook", URL: srv.URL, Secret: secret, RetryFor: 24 * time.Hour}},
		Observer:  r.res, Now: r.clock.Now, Jitter: func() float64 { return 0.5 },
	}
	if opts != nil {
		opts(&o)
	}
	r.m = New(o)
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r.m.Stop(ctx)
		q.Close(context.Background())
	})
	return r
}

func (r *rig) record(evs ...queue.Event) {
	r.t.Helper()
	if err := r.q.RecordEvents(evs...); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) next() *received {
	r.t.Helper()
	select {
	case rc := <-r.got:
		if !rc.validSig {
			r.t.Errorf("request %s: bad signature or content type", rc.id)
		}
		return rc
	case <-time.After(20 * time.Second):
		r.t.Fatal("no request came")
		return nil
	}
}

func (r *rig) result(want string) {
	r.t.Helper()
	select {
	case got := <-r.res:
		if got != "hook "+want {
			r.t.Fatalf("result %q, want %q", got, "hook "+want)
		}
	case <-time.After(20 * time.Second):
		r.t.Fatalf("no result; want %s", want)
	}
}

func (r *rig) backlog() queue.EventBacklog {
	r.t.Helper()
	b, err := r.q.EventBacklogs(10)
	if err != nil {
		r.t.Fatal(err)
	}
	return b[0]
}

func ev(qid, rcpt string) queue.Event {
	return queue.Event{Type: queue.EventDeferred, QueueID: qid, Recipient: rcpt, Attempt: 1,
		Reply: reply.Reply{Code: 451, Enhanced: reply.MustEnhanced("4.7.1"), Text: "greylisted"}}
}

func TestDeliveredOn2xx(t *testing.T) {
	r := newRig(t, nil)
	r.m.Start()
	r.record(ev("A", "a@x.test"))
	rc := r.next()
	if !strings.Contains(rc.body, `"recipient":"a@x.test"`) || !strings.HasPrefix(rc.id, "ev_") {
		t.Errorf("request %s: %s", rc.id, rc.body)
	}
	if rc.ts != strconv.FormatInt(t0.Unix(), 10) {
		t.Errorf("webhook-timestamp %s, want the attempt's time %d", rc.ts, t0.Unix())
	}
	rc.reply <- 204
	r.result("delivered")
	if b := r.backlog(); b.Pending != 0 {
		t.Errorf("after a 204: %+v still pending", b)
	}
}

// TestRetriedOnRefusal: a 500 and a redirect both count as failures, with
// the answer recorded and the next attempt on the schedule; the second
// attempt sends the same id and body.
func TestRetriedOnRefusal(t *testing.T) {
	r := newRig(t, nil)
	r.m.Start()
	r.record(ev("A", "a@x.test"))
	first := r.next()
	first.reply <- 500
	r.result("retried")
	b := r.backlog()
	if b.Pending != 1 || b.Failing != 1 || b.First[0].Attempts != 1 {
		t.Fatalf("backlog %+v", b)
	}
	d := b.First[0]
	if !strings.Contains(d.LastError, "500") || !strings.Contains(d.LastError, "not today") {
		t.Errorf("recorded error %q", d.LastError)
	}
	if want := t0.Add(Backoff(1, 0.5)); !d.Next.Equal(want) {
		t.Errorf("next attempt %v, want %v", d.Next, want)
	}
	r.clock.Set(d.Next)
	r.m.senders[0].wake()
	second := r.next()
	if second.id != first.id || second.body != first.body {
		t.Errorf("retry sent %s %s, first was %s %s", second.id, second.body, first.id, first.body)
	}
	second.reply <- 302
	r.result("retried")
	if d := r.backlog().First[0]; d.Attempts != 2 || !strings.Contains(d.LastError, "302") {
		t.Errorf("after a redirect: %+v", d)
	}
}

func TestRetriedOnTimeout(t *testing.T) {
	r := newRig(t, func(o *Options) { o.Timeout = 50 * time.Millisecond })
	r.m.Start()
	r.record(ev("A", "a@x.test"))
	r.next() // never answered
	r.result("retried")
	if d := r.backlog().First[0]; d.Attempts != 1 || !strings.Contains(d.LastError, "Timeout") {
		t.Errorf("after a timeout: %+v", d)
	}
}

// TestGivesUpAfterRetryFor: an attempt that fails once retry_for has
// passed since the event ends the delivery.
func TestGivesUpAfterRetryFor(t *testing.T) {
	r := newRig(t, nil)
	r.record(ev("A", "a@x.test"))
	r.clock.Set(t0.Add(24 * time.Hour))
	r.m.Start()
	r.next().reply <- 503
	r.result("given_up")
	if b := r.backlog(); b.Pending != 0 {
		t.Errorf("given up but still pending: %+v", b)
	}
}

// TestRetryCappedAtRetryFor: the last retry falls at the end of
// retry_for, not an hour after it.
func TestRetryCappedAtRetryFor(t *testing.T) {
	r := newRig(t, nil)
	r.record(ev("A", "a@x.test"))
	r.clock.Set(t0.Add(24*time.Hour - time.Second))
	r.m.Start()
	r.next().reply <- 500
	r.result("retried")
	if d := r.backlog().First[0]; !d.Next.Equal(t0.Add(24 * time.Hour)) {
		t.Errorf("next attempt %v, want the end of retry_for %v", d.Next, t0.Add(24*time.Hour))
	}
}

// TestOrderPerMessage: the events of two messages, interleaved: the
// second message's first event is sent while the first's is unanswered
// (messages go concurrently), and no message's second event is sent
// before its first is answered.
func TestOrderPerMessage(t *testing.T) {
	r := newRig(t, nil)
	r.record(ev("A", "1"), ev("B", "1"), ev("A", "2"), ev("B", "2"))
	r.m.Start()
	byKey := map[string]*received{}
	key := func(rc *received) string {
		var k string
		for _, m := range []string{"A", "B"} {
			if strings.Contains(rc.body, `"queue_id":"`+m+`"`) {
				k = m
			}
		}
		for _, n := range []string{"1", "2"} {
			if strings.Contains(rc.body, `"recipient":"`+n+`"`) {
				k += n
			}
		}
		return k
	}
	for range 2 {
		rc := r.next()
		byKey[key(rc)] = rc
	}
	if byKey["A1"] == nil || byKey["B1"] == nil {
		t.Fatalf("first two requests %v, want A1 and B1 together", byKey)
	}
	byKey["B1"].reply <- 200
	r.result("delivered")
	rc := r.next()
	if k := key(rc); k != "B2" {
		t.Fatalf("after B1 answered, got %s, want B2 (A2 waits for A1)", k)
	}
	rc.reply <- 200
	r.result("delivered")
	byKey["A1"].reply <- 200
	r.result("delivered")
	rc = r.next()
	if k := key(rc); k != "A2" {
		t.Fatalf("got %s, want A2", k)
	}
	rc.reply <- 200
	r.result("delivered")
}

// TestShutdownCutLeavesDue: a request still running when the shutdown
// budget ends is cut off and recorded as nothing, so the event is sent
// again after a restart.
func TestShutdownCutLeavesDue(t *testing.T) {
	r := newRig(t, nil)
	r.record(ev("A", "a@x.test"))
	r.m.Start()
	r.next() // held
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.m.Stop(ctx)
	select {
	case res := <-r.res:
		t.Errorf("a cut request counted as %s", res)
	default:
	}
	if b := r.backlog(); b.Pending != 1 || b.First[0].Attempts != 0 {
		t.Errorf("after the cut: %+v, want one untouched delivery", b)
	}
}

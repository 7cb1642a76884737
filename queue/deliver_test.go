package queue

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap/zapcore"
)

func TestTemporaryThenDelivered(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "4.3.0", "try later"))
	q := h.open()
	id := h.enqueue("a@example.org", "hi", "b@x.test")
	q.Start()
	h.wait(1)

	m := h.get(id)
	r := m.Rcpts[0]
	if r.State != StateDeferred || r.Attempts != 1 || r.LastReply != rp(451, "4.3.0", "try later") ||
		r.RemoteMTA != "mx.test" || !r.LastAttempt.Equal(t0) || !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after attempt 1: %+v", r)
	}

	h.advance(time.Minute)
	h.wait(1)
	final := <-h.finals
	if final.ID != id || final.Rcpts[0].State != StateDelivered || final.Rcpts[0].Attempts != 2 {
		t.Errorf("OnFinal got %+v", final)
	}
	if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("delivered message still queued: %v", err)
	}
	calls := h.fake.Calls()
	if len(calls) != 2 || calls[0].Attempt != 1 || calls[1].Attempt != 2 {
		t.Errorf("calls = %+v", calls)
	}
	if calls[0].From != "a@example.org" || !calls[0].Created.Equal(t0) || calls[0].ID != id {
		t.Errorf("delivery = %+v", calls[0].Delivery)
	}
}

func TestPermanentNotRetried(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Permanent, rp(550, "5.1.1", "no such user"))
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	q.Start()
	h.wait(1)
	final := <-h.finals
	if r := final.Rcpts[0]; r.State != StateFailed || r.LastReply != rp(550, "5.1.1", "no such user") {
		t.Errorf("recipient = %+v", r)
	}
	// The record stays to explain the failure, without its body.
	if m := h.get(id); m.State != StateFailed || m.Rcpts[0].State != StateFailed {
		t.Errorf("failed record = %+v", m)
	}
	// Nothing is left to lease, however late it gets.
	jobs, next, err := q.lease(t0.Add(1000*time.Hour), 10)
	if err != nil || len(jobs) != 0 || !next.IsZero() {
		t.Errorf("lease after failure = %d jobs, next %v, %v", len(jobs), next, err)
	}
	if n := len(h.fake.Calls()); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

func TestLifetimeExpiry(t *testing.T) {
	h := newHarness(t)
	h.retry = Retry{Initial: time.Hour, Max: time.Hour, Lifetime: 3 * time.Hour}
	for a := 1; a <= 5; a++ {
		h.fake.on("b@x.test", a, Temporary, rp(421, "4.4.2", "busy"))
	}
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	q.Start()
	for a := 1; a <= 3; a++ { // at 0h, 1h, 2h: within the lifetime
		h.wait(1)
		if r := h.get(id).Rcpts[0]; r.State != StateDeferred || r.Attempts != a {
			t.Fatalf("attempt %d: %+v", a, r)
		}
		h.advance(time.Hour)
	}
	h.advance(time.Hour) // now 4h old: the next temporary failure is final
	h.wait(1)
	final := <-h.finals
	r := final.Rcpts[0]
	if r.State != StateFailed || r.Attempts != 4 ||
		!strings.Contains(r.LastReply.String(), "retry lifetime 3h0m0s expired") || !strings.Contains(r.LastReply.String(), "421 4.4.2 busy") {
		t.Errorf("recipient = %+v", r)
	}
}

func TestGroupingByDomain(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.ORG", 1, Temporary, rp(452, "4.2.2", "full"))
	h.fake.on("c@y.org", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	id := h.enqueue("", "hi", "a@X.org", "c@y.org", "b@x.ORG", "postmaster")
	q.Start()
	h.wait(3)

	got := map[string][]string{}
	for _, c := range h.fake.Calls() {
		got[c.Domain] = c.Rcpts
	}
	want := map[string][]string{"x.org": {"a@X.org", "b@x.ORG"}, "y.org": {"c@y.org"}, "": {"postmaster"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("deliveries by domain = %v, want %v", got, want)
	}
	states := []State{}
	for _, r := range h.get(id).Rcpts {
		states = append(states, r.State)
	}
	if want := []State{StateDelivered, StateFailed, StateDeferred, StateDelivered}; !slices.Equal(states, want) {
		t.Fatalf("states = %v, want %v", states, want)
	}

	// Only the deferred recipient is tried again, alone.
	h.advance(time.Minute)
	h.wait(1)
	calls := h.fake.Calls()
	last := calls[len(calls)-1]
	if len(calls) != 4 || !slices.Equal(last.Rcpts, []string{"b@x.ORG"}) || last.Attempt != 2 {
		t.Errorf("retry = %+v (of %d calls)", last.Delivery, len(calls))
	}
	final := <-h.finals
	if final.Rcpts[1].State != StateFailed || final.Rcpts[2].State != StateDelivered {
		t.Errorf("final = %+v", final.Rcpts)
	}
}

// TestRestart: Close, reopen the same file, and the queue carries on from
// where it stood.
func TestRestart(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "", "later"))
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	q.Start()
	h.wait(1)
	before := h.get(id)
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	h.fake = newFake() // a new process: the script is fresh, attempt 2 is delivered
	q = h.open()
	after := h.get(id)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed across restart:\nbefore %+v\nafter  %+v", before, after)
	}
	// Not due yet at t0. (Checked before Start: lease is meant to have
	// one caller, the dispatcher.)
	if jobs, _, _ := q.lease(t0, 10); len(jobs) != 0 {
		t.Fatalf("leased %d jobs before the retry time", len(jobs))
	}
	q.Start()
	h.advance(time.Minute)
	h.wait(1)
	if calls := h.fake.Calls(); len(calls) != 1 || calls[0].Attempt != 2 {
		t.Errorf("after restart: calls %+v", calls)
	}
	<-h.finals
}

// TestLeaseSurvivesCrash: a lease is committed, then the process dies
// before any result is recorded. After restart the recipient is neither
// lost nor retried at once: it waits out its backoff, attempt counted.
func TestLeaseSurvivesCrash(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	jobs, _, err := q.lease(t0, 10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("lease = %d jobs, %v", len(jobs), err)
	}
	// The crash: the database is closed under the queue, no results.
	if err := q.db.Close(); err != nil {
		t.Fatal(err)
	}

	q = h.open()
	r := h.get(id).Rcpts[0]
	if r.State != StateQueued || r.Attempts != 1 || !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after crash: %+v", r)
	}
	if jobs, _, _ := q.lease(t0.Add(59*time.Second), 10); len(jobs) != 0 {
		t.Fatal("retried before its backoff")
	}
	q.Start()
	h.advance(time.Minute)
	h.wait(1)
	if calls := h.fake.Calls(); len(calls) != 1 || calls[0].Attempt != 2 {
		t.Errorf("calls = %+v", calls)
	}
}

// TestInflightNotLeasedTwice: an attempt that outlasts its backoff is not
// handed out again while it runs.
func TestInflightNotLeasedTwice(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	h.enqueue("", "hi", "b@x.test")
	jobs, _, _ := q.lease(t0, 10)
	if len(jobs) != 1 {
		t.Fatalf("first lease: %d jobs", len(jobs))
	}
	if again, next, _ := q.lease(t0.Add(2*time.Hour), 10); len(again) != 0 || !next.IsZero() {
		t.Fatalf("in-flight message leased again (%d jobs, next %v)", len(again), next)
	}
	q.release(jobs[0])
	if again, _, _ := q.lease(t0.Add(2*time.Hour), 10); len(again) != 1 || again[0].d.Attempt != 2 {
		t.Fatalf("after release: %d jobs", len(again))
	}
}

// TestCloseCutsOff: Close waits for attempts only as long as its context
// allows; an attempt cut off keeps its lease.
func TestCloseCutsOff(t *testing.T) {
	h := newHarness(t)
	h.fake.block = make(chan struct{}) // never closed: only ctx ends it
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	q.Start()
	<-h.fake.called
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := q.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close = %v, want context.Canceled", err)
	}
	h.wait(1) // the cut-off attempt returned and its results were dropped
	q.wg.Wait()

	h.fake = newFake()
	h.open()
	r := h.get(id).Rcpts[0]
	if r.State != StateQueued || r.Attempts != 1 || !r.LastReply.IsZero() || !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Errorf("after cut-off: %+v", r)
	}
}

// TestCloseWaits: with time to spare, Close lets a running attempt finish
// and records it.
func TestCloseWaits(t *testing.T) {
	h := newHarness(t)
	h.fake.block = make(chan struct{})
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	q.Start()
	<-h.fake.called
	closed := make(chan error)
	go func() { closed <- q.Close(context.Background()) }()
	close(h.fake.block)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	h.open()
	if _, err := h.q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("attempt finished during Close was not recorded: %v", err)
	}
}

func TestDelivererContractBreaches(t *testing.T) {
	tests := []struct {
		name    string
		deliver func(context.Context, *Delivery) []Result
	}{
		{"panic", func(context.Context, *Delivery) []Result { panic("boom") }},
		{"too few results", func(context.Context, *Delivery) []Result { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			q := h.open()
			q.deliver = delivererFunc(tt.deliver)
			id := h.enqueue("", "hi", "b@x.test")
			q.Start()
			h.wait(1)
			if r := h.get(id).Rcpts[0]; r.State != StateDeferred || !strings.Contains(r.LastReply.String(), "internal error") {
				t.Errorf("recipient = %+v", r)
			}
		})
	}
}

type delivererFunc func(context.Context, *Delivery) []Result

func (f delivererFunc) Deliver(ctx context.Context, d *Delivery) []Result { return f(ctx, d) }

// TestLogs: one line per event, each with the queue ID.
func TestLogs(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "", "later"))
	h.fake.on("c@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test", "c@x.test")
	q.Start()
	h.wait(1)
	h.advance(time.Minute)
	h.wait(1)
	<-h.finals

	var got []string
	for _, e := range h.logs.All() {
		f := e.ContextMap()
		if f["id"] != id {
			t.Errorf("line %q without id: %v", e.Message, f)
		}
		got = append(got, e.Message+" "+fmtField(f["rcpt"]))
		switch e.Message {
		case "attempt":
			for _, k := range []string{"rcpt", "reply", "remote", "attempt", "outcome"} {
				if _, ok := f[k]; !ok {
					t.Errorf("attempt line lacks %s: %v", k, f)
				}
			}
			if e.Level != zapcore.DebugLevel {
				t.Errorf("attempt line at %s, want debug", e.Level)
			}
		case "delivered":
			// The reply as typed fields, not a string to parse.
			rep, _ := f["reply"].(map[string]any)
			if rep["code"] != int64(250) || rep["enhanced_code"] != "2.0.0" || rep["text"] != "ok" || f["remote"] != "mx.test" {
				t.Errorf("delivered line: reply %v, remote %v; want the remote's reply (code, enhanced code, text) and name", f["reply"], f["remote"])
			}
		case "deferred":
			if _, ok := f["next_attempt"]; !ok {
				t.Errorf("deferred line lacks next_attempt: %v", f)
			}
		}
		if e.Level > zapcore.InfoLevel {
			t.Errorf("unexpected %s line: %s %v", e.Level, e.Message, f)
		}
	}
	want := []string{
		"attempt b@x.test", "attempt c@x.test", "deferred b@x.test", "failed c@x.test",
		"attempt b@x.test", "delivered b@x.test", "final, record kept ",
	}
	if !slices.Equal(got, want) {
		t.Errorf("log lines:\n got %q\nwant %q", got, want)
	}
}

func fmtField(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

// TestUnreadableRecord: a record that does not decode is taken out of the
// schedule (it would otherwise be due forever) but kept for inspection.
func TestUnreadableRecord(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	id := h.enqueue("", "hi", "b@x.test")
	n, _ := parseID(id)
	err := q.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bMessages).Put(idKey(n), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	jobs, next, err := q.lease(t0, 10)
	if err != nil || len(jobs) != 0 || !next.IsZero() {
		t.Fatalf("lease = %d jobs, next %v, %v", len(jobs), next, err)
	}
	if _, err := q.Get(id); err == nil || !strings.Contains(err.Error(), id) {
		t.Errorf("Get of an unreadable record = %v, want an error naming %s", err, id)
	}
	if h.logs.FilterMessage("unreadable message left out of the schedule").Len() != 1 {
		t.Error("no log line for the unreadable record")
	}
}

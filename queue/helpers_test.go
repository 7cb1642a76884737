package queue

import (
	"context"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// t0 is the fake clock's start. Any fixed instant will do.
var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// call is what the fake deliverer saw in one Deliver call.
type call struct {
	Delivery
	body []byte
}

// fakeDeliverer is programmable per recipient and per attempt (house style,
// habit 7): script[rcpt][attempt] is the result of that attempt; anything
// not scripted is delivered.
type fakeDeliverer struct {
	mu     sync.Mutex
	script map[string]map[int]Result
	calls  []call
	// called receives every Delivery as Deliver starts.
	called chan *Delivery
	// block, if set, makes Deliver wait for ctx or for block to close.
	block chan struct{}
}

func newFake() *fakeDeliverer {
	return &fakeDeliverer{script: map[string]map[int]Result{}, called: make(chan *Delivery, 100)}
}

func (f *fakeDeliverer) on(rcpt string, attempt int, o Outcome, reply string) *fakeDeliverer {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.script[rcpt] == nil {
		f.script[rcpt] = map[int]Result{}
	}
	f.script[rcpt][attempt] = Result{Outcome: o, Reply: reply, RemoteMTA: "mx.test"}
	return f
}

func (f *fakeDeliverer) Deliver(ctx context.Context, d *Delivery) []Result {
	var body []byte
	if rc, err := d.Body.Open(); err == nil {
		body, _ = io.ReadAll(rc)
		rc.Close()
	}
	f.mu.Lock()
	f.calls = append(f.calls, call{Delivery: *d, body: body})
	block := f.block
	f.mu.Unlock()
	f.called <- d
	if block != nil {
		select {
		case <-ctx.Done():
			return resultsFor(d, Result{Outcome: Temporary, Reply: ctx.Err().Error()})
		case <-block:
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var res []Result
	for _, r := range d.Rcpts {
		out, ok := f.script[r][d.Attempt]
		if !ok {
			out = Result{Outcome: Delivered, Reply: "250 2.0.0 ok", RemoteMTA: "mx.test"}
		}
		res = append(res, out)
	}
	return res
}

func resultsFor(d *Delivery, r Result) []Result {
	res := make([]Result, len(d.Rcpts))
	for i := range res {
		res[i] = r
	}
	return res
}

func (f *fakeDeliverer) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// harness is one queue on a fake clock with a fake deliverer, and the
// channels a test waits on instead of sleeping.
type harness struct {
	t      *testing.T
	dir    string
	clock  *fakeClock
	fake   *fakeDeliverer
	logs   *observer.ObservedLogs
	done   chan uint64   // one per attempt whose results were recorded (or dropped)
	finals chan *Message // OnFinal
	retry  Retry
	q      *Queue
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		dir:    t.TempDir(),
		clock:  &fakeClock{t: t0},
		fake:   newFake(),
		done:   make(chan uint64, 100),
		finals: make(chan *Message, 100),
	}
	return h
}

func (h *harness) spoolDir() string { return filepath.Join(h.dir, "spool") }

// open opens (or reopens) the queue file with the harness's clock,
// deliverer and hooks. Jitter is pinned to its midpoint, so backoffs are
// exact.
func (h *harness) open() *Queue {
	h.t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	h.logs = logs
	q, err := Open(Options{
		Path:      filepath.Join(h.dir, "queue.db"),
		Deliverer: h.fake,
		Workers:   4,
		Retry:     h.retry,
		Logger:    zap.New(core),
		Now:       h.clock.Now,
		OnFinal:   func(m *Message) { h.finals <- m },
	})
	if err != nil {
		h.t.Fatalf("Open: %v", err)
	}
	q.jitter = func() float64 { return 0.5 }
	q.afterResults = func(id uint64) { h.done <- id }
	h.q = q
	h.t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // whatever still runs is cut off
		q.Close(ctx)
	})
	return q
}

// wait blocks until n attempts have been recorded. The timeout only turns
// a hang into a failure; no test depends on it.
func (h *harness) wait(n int) {
	h.t.Helper()
	for range n {
		select {
		case <-h.done:
		case <-time.After(20 * time.Second):
			h.t.Fatalf("timed out waiting for an attempt to be recorded")
		}
	}
}

// advance moves the clock and wakes the dispatcher, which would otherwise
// sleep in real time.
func (h *harness) advance(d time.Duration) {
	h.clock.Advance(d)
	h.q.notify()
}

func (h *harness) enqueue(from string, body string, rcpts ...string) string {
	h.t.Helper()
	id, err := h.q.Enqueue(context.Background(), &Envelope{From: from, Rcpts: rcpts}, strings.NewReader(body))
	if err != nil {
		h.t.Fatalf("Enqueue: %v", err)
	}
	return id
}

func (h *harness) get(id string) *Message {
	h.t.Helper()
	m, err := h.q.Get(id)
	if err != nil {
		h.t.Fatalf("Get(%s): %v", id, err)
	}
	return m
}

package queue

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue/reply"
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
	// blockDomain does the same for deliveries to one domain.
	blockDomain map[string]chan struct{}
}

func newFake() *fakeDeliverer {
	return &fakeDeliverer{script: map[string]map[int]Result{}, called: make(chan *Delivery, 100)}
}

func (f *fakeDeliverer) on(rcpt string, attempt int, o Outcome, r reply.Reply) *fakeDeliverer {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.script[rcpt] == nil {
		f.script[rcpt] = map[int]Result{}
	}
	f.script[rcpt][attempt] = Result{Outcome: o, Reply: r, RemoteMTA: "mx.test"}
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
	if b, ok := f.blockDomain[d.Domain]; ok {
		block = b
	}
	f.mu.Unlock()
	f.called <- d
	if block != nil {
		select {
		case <-ctx.Done():
			return resultsFor(d, Result{Outcome: Temporary, Reply: reply.Reply{Text: ctx.Err().Error()}})
		case <-block:
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var res []Result
	for _, r := range d.Rcpts {
		out, ok := f.script[r][d.Attempt]
		if !ok {
			out = Result{Outcome: Delivered, Reply: rp(250, "2.0.0", "ok"), RemoteMTA: "mx.test"}
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
	obs    *countObserver
	// opts, if set, adjusts the Options before each open.
	opts func(*Options)
	q    *Queue
}

// countObserver records what the queue reports for metrics.
type countObserver struct {
	mu                                   sync.Mutex
	delivered, deferred, failed, bounced int
	attempts                             int
}

func (o *countObserver) Delivered(n int) { o.mu.Lock(); o.delivered += n; o.mu.Unlock() }
func (o *countObserver) Deferred(n int)  { o.mu.Lock(); o.deferred += n; o.mu.Unlock() }
func (o *countObserver) Failed(n int)    { o.mu.Lock(); o.failed += n; o.mu.Unlock() }
func (o *countObserver) Bounced()        { o.mu.Lock(); o.bounced++; o.mu.Unlock() }
func (o *countObserver) AttemptDuration(time.Duration) {
	o.mu.Lock()
	o.attempts++
	o.mu.Unlock()
}

func (o *countObserver) get() [5]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return [5]int{o.delivered, o.deferred, o.failed, o.bounced, o.attempts}
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
		obs:    &countObserver{},
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
	opts := Options{
		Path:      filepath.Join(h.dir, "queue.db"),
		Deliverer: h.fake,
		Workers:   4,
		Retry:     h.retry,
		Logger:    slog.New(zapslog.NewHandler(core)),
		Now:       h.clock.Now,
		OnFinal:   func(m *Message) { h.finals <- m },
		Hostname:  "mail.test",
		Observer:  h.obs,
	}
	if h.opts != nil {
		h.opts(&opts)
	}
	q, err := Open(opts)
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

// result scripts a full Result, RemoteDSN included.
func (f *fakeDeliverer) result(rcpt string, attempt int, r Result) *fakeDeliverer {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.script[rcpt] == nil {
		f.script[rcpt] = map[int]Result{}
	}
	f.script[rcpt][attempt] = r
	return f
}

// body reads a stored message body straight from the database or spool.
func (h *harness) body(id string) []byte {
	h.t.Helper()
	n, err := parseID(id)
	if err != nil {
		h.t.Fatal(err)
	}
	var rec *record
	var inline []byte
	err = h.q.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bMessages).Get(idKey(n))
		if data == nil {
			return ErrNotFound
		}
		var err error
		rec, err = decodeRecord(data)
		inline = bytes.Clone(tx.Bucket(bBodies).Get(idKey(n)))
		return err
	})
	if err != nil {
		h.t.Fatalf("body(%s): %v", id, err)
	}
	if rec.Spool == "" {
		return inline
	}
	b, err := os.ReadFile(filepath.Join(h.spoolDir(), rec.Spool))
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// dsns lists the queued messages with the null sender: the DSNs.
func (h *harness) dsns() []*Message {
	h.t.Helper()
	ms, err := h.q.List(Filter{})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*Message
	for _, m := range ms {
		if m.Envelope.From == "" && m.State != StateFailed {
			out = append(out, m)
		}
	}
	return out
}

// report is a DSN taken apart with the standard library.
type report struct {
	header  mail.Header
	text    string
	perMsg  textproto.MIMEHeader
	perRcpt []textproto.MIMEHeader
	third   string
	orig    []byte
}

func parseReport(t *testing.T, msg []byte) *report {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("bare LF in DSN")
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	r := &report{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		switch i {
		case 0:
			r.text = string(b)
		case 1:
			tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
			if r.perMsg, err = tr.ReadMIMEHeader(); err != nil {
				t.Fatal(err)
			}
			for {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					r.perRcpt = append(r.perRcpt, h)
				}
				if err != nil {
					break
				}
			}
		case 2:
			r.third, r.orig = p.Header.Get("Content-Type"), b
		}
	}
	return r
}

// rcptBlock returns the per-recipient block for addr.
func (r *report) rcptBlock(t *testing.T, addr string) textproto.MIMEHeader {
	t.Helper()
	for _, h := range r.perRcpt {
		if h.Get("Final-Recipient") == "rfc822; "+addr {
			return h
		}
	}
	t.Fatalf("no block for %s in %v", addr, r.perRcpt)
	return nil
}

// eventually polls cond until it holds; for effects of the dispatcher's
// own rounds, which no channel reports.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// step runs one dispatcher round by hand, without Start: it leases what is
// due at the fake clock's time, runs those attempts concurrently (as the
// workers would) and returns once all are recorded. Tests that inspect a
// DSN before anything delivers it use step instead of Start.
func (h *harness) step() int {
	h.t.Helper()
	jobs, _, err := h.q.lease(h.clock.Now(), 100)
	if err != nil {
		h.t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, j := range jobs {
		h.q.wg.Add(1)
		wg.Go(func() { h.q.run(j) })
	}
	wg.Wait()
	for range jobs {
		<-h.done
	}
	return len(jobs)
}

// onlyDSN returns the one DSN in the queue, failing if there is not
// exactly one, with its parsed body.
func (h *harness) onlyDSN() (*Message, *report) {
	h.t.Helper()
	ds := h.dsns()
	if len(ds) != 1 {
		h.t.Fatalf("%d DSNs queued, want 1", len(ds))
	}
	return ds[0], parseReport(h.t, h.body(ds[0].ID))
}

// rp is a reply: code (0 for none), enhanced code ("" for none), text.
func rp(code int, enhanced, text string) reply.Reply {
	return reply.Reply{Code: code, Enhanced: reply.MustEnhanced(enhanced), Text: text}
}

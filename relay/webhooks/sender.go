package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"postern/queue"
)

// Source is what delivery needs of the queue; *queue.Queue implements it.
//
// DueEvents returns, in recording order, up to limit deliveries for sub
// that are due at now, at most one per message (the next is handed out
// only after EventDone of the one before: that is the per-message order),
// and when the earliest one not returned falls due (zero: none waits).
// EventDone ends a delivery for good; EventRetry counts a failed attempt
// and sets the next. Both commit before they return and return
// queue.ErrNoDelivery for a delivery that no longer waits. EventsWritten
// is signalled (without blocking, so it may coalesce) after a commit that
// recorded events.
type Source interface {
	DueEvents(sub string, now time.Time, limit int) ([]queue.EventDelivery, time.Time, error)
	EventDone(sub string, seq uint64) error
	EventRetry(sub string, seq uint64, next time.Time, errText string) error
	EventsWritten() <-chan struct{}
}

var _ Source = (*queue.Queue)(nil)

// Observer counts what came of deliveries (relay/metrics implements it):
// result is "delivered", "retried" or "given_up".
type Observer interface {
	WebhookResult(endpoint, result string)
}

// Endpoint is one configured receiver.
type Endpoint struct {
	// Name keys the endpoint's deliveries in the queue
	// (queue.Subscriber.Name): a renamed endpoint loses what waited.
	Name   string
	URL    string
	Secret Secret
	// RetryFor is how long after an event its delivery is retried
	// before it is given up; 0 means DefaultRetryFor.
	RetryFor time.Duration
}

// Defaults for Options and Endpoint.
const (
	DefaultRetryFor    = 72 * time.Hour
	DefaultConcurrency = 4
	DefaultTimeout     = 10 * time.Second
	// maxResponse is how much of a response body is read (and kept for
	// the error of a failed attempt); the rest is not drained, the
	// connection is closed instead.
	maxResponse = 64 << 10
	// errorBody is how much of a refusal's body goes into the recorded
	// error.
	errorBody = 200
)

// Options configure a Manager. Source and Endpoints are required.
type Options struct {
	Source    Source
	Endpoints []Endpoint
	// Concurrency is how many requests each endpoint has in flight at
	// most; 0 means DefaultConcurrency.
	Concurrency int
	// Timeout bounds one request, from dialing to the end of the
	// response's headers and body; 0 means DefaultTimeout.
	Timeout time.Duration
	// Transport carries the requests; nil means a keep-alive transport
	// of its own, with no proxy from the environment.
	Transport http.RoundTripper
	Observer  Observer
	Logger    *zap.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// Jitter returns a number in [0, 1) for the backoff's jitter; nil
	// means math/rand. Tests make it fixed.
	Jitter func() float64
}

// Manager runs one Sender per endpoint.
type Manager struct {
	opts    Options
	client  *http.Client
	senders []*sender
	// run is cancelled to stop taking deliveries; cut is cancelled to
	// abort requests in flight.
	runCancel, cutCancel context.CancelFunc
	cutCtx               context.Context
	wg                   sync.WaitGroup
}

// New returns a Manager; Start starts it.
func New(opts Options) *Manager {
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	tr := opts.Transport
	if tr == nil {
		tr = &http.Transport{
			Proxy:               nil, // never HTTPS_PROXY: the endpoint is what the config says
			DialContext:         (&net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: opts.Concurrency,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: opts.Timeout,
		}
	}
	m := &Manager{opts: opts}
	m.client = &http.Client{
		Transport: tr,
		Timeout:   opts.Timeout,
		// A redirect is an answer like any other that is not 2xx: the
		// endpoint is what the config names, and a redirect would
		// carry the signed body somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for _, e := range opts.Endpoints {
		if e.RetryFor <= 0 {
			e.RetryFor = DefaultRetryFor
		}
		m.senders = append(m.senders, &sender{m: m, ep: e, kick: make(chan struct{}, 1),
			log: opts.Logger.With(zap.String("webhook", e.Name))})
	}
	return m
}

// Start starts every endpoint's sender, and the goroutine that passes the
// queue's wake-ups on to all of them.
func (m *Manager) Start() {
	var runCtx context.Context
	runCtx, m.runCancel = context.WithCancel(context.Background())
	m.cutCtx, m.cutCancel = context.WithCancel(context.Background())
	for _, s := range m.senders {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); s.run(runCtx) }()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-m.opts.Source.EventsWritten():
				for _, s := range m.senders {
					s.wake()
				}
			}
		}
	}()
}

// Stop stops taking deliveries and waits for the requests in flight until
// ctx ends; those still running then are cut off and left due, so they
// are sent again after the next start (at least once). It must be called
// before the queue closes.
func (m *Manager) Stop(ctx context.Context) {
	if m.runCancel == nil {
		return
	}
	m.runCancel()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		m.cutCancel()
		<-done
	}
	m.cutCancel()
	if t, ok := m.client.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

// sender delivers one endpoint's events.
type sender struct {
	m    *Manager
	ep   Endpoint
	kick chan struct{}
	log  *zap.Logger
}

func (s *sender) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// fetch is how many due deliveries one DueEvents call asks for. The
// call walks every delivery the endpoint has waiting (to find each
// message's first and the next due time), so a backlog is read in
// batches of this size rather than once per request.
const fetch = 256

// run takes due deliveries, up to Concurrency at once, until ctx ends,
// then waits for its requests in flight.
func (s *sender) run(ctx context.Context) {
	conc := s.m.opts.Concurrency
	inflight := map[uint64]bool{}
	// buf holds due deliveries not started yet, each the first of its
	// message: the next event of a message is only handed out by a later
	// DueEvents call, after this one is done.
	var buf []queue.EventDelivery
	finished := make(chan uint64, conc)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		for len(inflight) > 0 {
			delete(inflight, <-finished)
		}
	}()
	for {
		var next time.Time
		if len(buf) == 0 && len(inflight) < conc {
			// In-flight deliveries are still due (and first of their
			// message), so they come back here: skip them.
			due, n, err := s.m.opts.Source.DueEvents(s.ep.Name, s.m.opts.Now(), fetch)
			if err != nil {
				s.log.Error("webhook: reading due events", zap.Error(err))
				n = s.m.opts.Now().Add(5 * time.Second)
			}
			next = n
			for _, d := range due {
				if !inflight[d.Seq] {
					buf = append(buf, d)
				}
			}
		}
		for len(buf) > 0 && len(inflight) < conc {
			d := buf[0]
			buf = buf[1:]
			inflight[d.Seq] = true
			go func() { s.deliver(d); finished <- d.Seq }()
		}
		// With deliveries still buffered, the next wake-up is a request
		// finishing; the timer is for when nothing due is left.
		var tc <-chan time.Time
		if !next.IsZero() && len(buf) == 0 {
			wait := max(next.Sub(s.m.opts.Now()), 0)
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case seq := <-finished:
			delete(inflight, seq)
		case <-tc:
		}
	}
}

// deliver makes one attempt and records its result.
func (s *sender) deliver(d queue.EventDelivery) {
	ev := &d.Event
	log := s.log.With(zap.String("event", ev.ID), zap.String("type", string(ev.Type)), zap.String("queue_id", ev.QueueID))
	err := s.post(ev)
	if err != nil && s.m.cutCtx.Err() != nil {
		// Cut off by shutdown: nothing is recorded, so the delivery is
		// due again at the next start.
		log.Info("webhook: request cut off by shutdown; it is sent again after the restart")
		return
	}
	now := s.m.opts.Now()
	var rerr error
	switch {
	case err == nil:
		rerr = s.m.opts.Source.EventDone(s.ep.Name, d.Seq)
		s.result("delivered")
		log.Debug("webhook delivered", zap.Int("attempt", d.Attempts+1))
	case now.Sub(ev.Time) >= s.ep.RetryFor:
		rerr = s.m.opts.Source.EventDone(s.ep.Name, d.Seq)
		s.result("given_up")
		log.Error("webhook: giving up on an event: it failed for longer than the endpoint's retry_for",
			zap.Duration("retry_for", s.ep.RetryFor), zap.Int("attempts", d.Attempts+1), zap.Error(err))
	default:
		next := now.Add(Backoff(d.Attempts+1, s.m.opts.Jitter()))
		if end := ev.Time.Add(s.ep.RetryFor); next.After(end) {
			next = end // the last attempt falls on the end of retry_for
		}
		rerr = s.m.opts.Source.EventRetry(s.ep.Name, d.Seq, next, err.Error())
		s.result("retried")
		log.Warn("webhook attempt failed", zap.Int("attempt", d.Attempts+1), zap.Time("next", next), zap.Error(err))
	}
	if rerr != nil && !errors.Is(rerr, queue.ErrNoDelivery) {
		// Not recorded (the queue closing, a disk error): the delivery
		// stays due and is sent again.
		log.Error("webhook: recording the attempt", zap.Error(rerr))
	}
}

func (s *sender) result(r string) {
	if s.m.opts.Observer != nil {
		s.m.opts.Observer.WebhookResult(s.ep.Name, r)
	}
}

// post sends ev once: nil for a 2xx answer, else what went wrong.
func (s *sender) post(ev *queue.Event) error {
	body, err := Body(ev)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(s.m.cutCtx, http.MethodPost, s.ep.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	ts := s.m.opts.Now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "postern-webhooks")
	req.Header.Set("webhook-id", ev.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", s.ep.Secret.Signature(ev.ID, ts, body))
	resp, err := s.m.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read (a bounded part of) the body, so the connection can be used
	// again; a longer body closes it instead.
	head, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	text := string(head)
	if len(text) > errorBody {
		text = text[:errorBody] + "…"
	}
	if text == "" {
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return fmt.Errorf("HTTP %s: %q", resp.Status, text)
}

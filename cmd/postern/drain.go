package main

// postern drain: a node of a fleet stops taking mail, delivers what is due,
// and exits, so that it can be restarted or removed without a message
// waiting on it that another node could have taken. The daemon's half is
// (*server).drain, started through the admin API (POST /api/drain); the
// command's half is cmdDrain, which asks for it and waits for the exit.
//
// There is no drain signal (SIGUSR2, say): the admin API carries the
// timeout, takes the same token as every other change an operator makes,
// reports the drain's progress, and reaches a daemon in a container from
// outside its PID namespace. A node without listen.admin cannot be
// drained; SIGTERM still stops it in order.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"postern/queue"
	"postern/relay/httpapi"
)

// drainState is the daemon's drain, begun at most once: requested is
// closed when it begins.
type drainState struct {
	once      sync.Once
	requested chan struct{}
	mu        sync.Mutex
	since     time.Time
	deadline  time.Time
}

func newDrainState() *drainState { return &drainState{requested: make(chan struct{})} }

// The daemon's drain is what the admin API's /api/drain drives.
var _ httpapi.Drainer = (*server)(nil)

// Drain begins the drain: /readyz fails from now on (before the caller's
// 202, so a load balancer's next check already sees it), and the serve loop
// runs s.drain. A second call changes nothing.
func (s *server) Drain(timeout time.Duration) httpapi.DrainStatus {
	d := s.drainer
	d.once.Do(func() {
		s.ready.Store(false)
		now := time.Now()
		d.mu.Lock()
		d.since, d.deadline = now, now.Add(timeout)
		d.mu.Unlock()
		close(d.requested)
	})
	return s.DrainStatus()
}

// DrainStatus is GET /api/drain: the queue's activity and depth, and the
// drain's times once it began.
func (s *server) DrainStatus() httpapi.DrainStatus {
	d := s.drainer
	d.mu.Lock()
	st := httpapi.DrainStatus{Since: d.since, Deadline: d.deadline, Draining: !d.since.IsZero()}
	d.mu.Unlock()
	a := s.queue.Activity()
	depth := s.queue.Depth()
	st.InFlight = a.InFlight
	st.Due = !a.NextDue.IsZero() && !a.NextDue.After(time.Now())
	st.Queued, st.Deferred, st.Held = depth[queue.StateQueued], depth[queue.StateDeferred], depth[queue.StateHeld]
	return st
}

// draining reports whether a drain has begun (for /readyz's reason).
func (s *server) draining() bool {
	select {
	case <-s.drainer.requested:
		return true
	default:
		return false
	}
}

// drainPoll is how often the drain looks at the queue. Idleness must be
// seen twice in a row (see queue.Activity), so it is noticed within two
// polls of the last delivery's end.
const drainPoll = 100 * time.Millisecond

// drain runs in the serve loop once Drain has been called, and ends in the
// ordinary shutdown:
//
//  1. /readyz already fails (Drain).
//  2. The SMTP, MX and send API listeners stop accepting; sessions with no
//     transaction open are closed, the others finish their message within
//     shutdown_timeout, as at shutdown. The admin listener stays, for
//     /readyz, the status and postern drain's wait. The maildrop's pickup
//     goes on: its drops are already on this node's disk.
//  3. Unlike SIGTERM's shutdown, the queue goes on delivering: the attempts
//     in flight finish, and whatever is due (or comes due while they run)
//     is attempted, until nothing is in flight or due. What is
//     deferred past that stays in the queue: with the embedded bbolt
//     queue, on this node's disk until it starts again. With the
//     PostgreSQL queue, shared by a fleet, "nothing due" would wait on
//     everyone's mail: the node takes no new lease and waits for the
//     attempts in flight only; the other nodes deliver the rest.
//  4. At the deadline, or on SIGTERM or SIGINT meanwhile, shutdown runs
//     (which stops the queue and gives attempts still in flight
//     shutdown_timeout to end).
func (s *server) drain(sigs <-chan os.Signal) error {
	d := s.drainer
	d.mu.Lock()
	deadline := d.deadline
	d.mu.Unlock()
	s.log.Info("draining: no new connections; delivering what is due", zap.Time("deadline", deadline))

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout.D())
	defer cancel()
	var wg sync.WaitGroup
	stop := func(what string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				s.log.Warn(what+" cut off while draining", zap.Error(err))
			}
		}()
	}
	for _, srv := range s.smtp {
		stop("sessions", srv.Shutdown)
	}
	if s.bounceMX != nil {
		stop("mx sessions", s.bounceMX.Shutdown)
	}
	if s.api != nil {
		stop("api requests", s.api.Shutdown)
	}
	wg.Wait()
	// Stopped: shutdown, which stops what is left, skips them.
	s.smtp, s.bounceMX, s.api = nil, nil, nil
	s.log.Info("draining: listeners closed")
	// A queue the fleet shares takes no new work here: the other nodes
	// deliver what is due. The node's own queue goes on delivering it.
	if s.queue.Drain() {
		s.log.Info("draining: no new leases; the other nodes deliver the shared queue")
	}

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	idleSeen := 0
	for idleSeen < 2 {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				s.reload()
				continue
			}
			st := s.DrainStatus()
			s.log.Info("draining cut short: stopping", zap.Stringer("signal", sig),
				zap.Int("in_flight", st.InFlight), zap.Bool("due", st.Due))
			return s.shutdown()
		case <-timer.C:
			st := s.DrainStatus()
			s.log.Warn("draining: timeout; stopping with deliveries left",
				zap.Int("in_flight", st.InFlight), zap.Bool("due", st.Due),
				zap.Int("queued", st.Queued), zap.Int("deferred", st.Deferred))
			return s.shutdown()
		case <-tick.C:
			if s.queue.Activity().Idle(time.Now()) {
				idleSeen++
			} else {
				idleSeen = 0
			}
		}
	}
	st := s.DrainStatus()
	s.log.Info("drained: nothing in flight or due; stopping",
		zap.Int("queued", st.Queued), zap.Int("deferred", st.Deferred), zap.Int("held", st.Held))
	return s.shutdown()
}

// drainHelp is postern drain's usage.
const drainHelp = `Usage: postern drain [--timeout 5m] [--config FILE]

Asks the postern that FILE configures, through its admin API, to drain,
and waits until it has exited. Draining: /readyz fails at once (a load
balancer's health check fails over), the SMTP, MX and send API listeners
stop accepting (sessions in progress finish their message), and the queue
goes on delivering what is due until nothing is in flight or due, or
--timeout passes; then the daemon stops as on SIGTERM, and exits 0.

What the daemon's queue holds for later stays there. With the embedded
bbolt queue (the default), deferred and held messages stay on this node's
disk and are delivered after it starts again: drain a node you are about to
remove only once its queue is empty (postern queue list). With a shared
(PostgreSQL) queue, the other nodes deliver them.

Exit status: 0 once the daemon has exited; 1 if it could not be asked, or
had not exited by --timeout plus shutdown_timeout.
`

// cmdDrain is `postern drain`.
func cmdDrain(args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("drain")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long deliveries may go on")
	pos, err := parseFlags(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		_, err := io.WriteString(stdout, drainHelp)
		return err
	}
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("drain takes no arguments, got %q", pos)
	}
	if *timeout <= 0 {
		return usageErr("drain: --timeout must be above 0")
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	c, err := newAdminClient(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	body, err := c.call(http.MethodPost, "/api/drain?timeout="+url.QueryEscape(timeout.String()), "")
	if err != nil {
		return err
	}
	var st httpapi.DrainStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("the admin API at %s sent an unreadable reply: %v", c.addr, err)
	}
	fmt.Fprintf(stdout, "draining postern at %s: /readyz fails, listeners close; deliveries may go on until %s\n",
		c.addr, st.Deadline.Local().Format(time.TimeOnly))
	fmt.Fprintf(stdout, "  %d in flight, %d queued, %d deferred\n", st.InFlight, st.Queued, st.Deferred)

	// The daemon stops at its deadline at the latest, then takes up to
	// shutdown_timeout; the margin covers the rest of its exit.
	giveUp := time.Now().Add(time.Until(st.Deadline) + cfg.ShutdownTimeout.D() + 10*time.Second)
	last := st
	for {
		time.Sleep(250 * time.Millisecond)
		st, err := c.drainStatus()
		if errors.Is(err, syscall.ECONNREFUSED) {
			break // the admin listener is gone: the daemon has stopped
		}
		if err == nil {
			if st.InFlight != last.InFlight || st.Queued != last.Queued || st.Deferred != last.Deferred {
				fmt.Fprintf(stdout, "  %d in flight, %d queued, %d deferred\n", st.InFlight, st.Queued, st.Deferred)
			}
			last = st
		}
		if time.Now().After(giveUp) {
			return exitError{exitFail, fmt.Sprintf("postern: the daemon at %s has not exited %s after the drain began (last: %d in flight, %d queued, %d deferred)",
				c.addr, time.Since(start).Round(time.Second), last.InFlight, last.Queued, last.Deferred)}
		}
	}
	fmt.Fprintf(stdout, "postern at %s stopped after %s\n", c.addr, time.Since(start).Round(100*time.Millisecond))
	// The last look came before the last deliveries: the queued count
	// may be stale, deferred and held messages wait past a drain. The
	// daemon's log has the exact count ("drained").
	if last.Deferred+last.Held > 0 {
		fmt.Fprintf(stdout, "left in its queue at the last look: %d deferred, %d held "+
			"(with the local bbolt queue, delivered once it starts again)\n", last.Deferred, last.Held)
	}
	return nil
}

// drainStatus is GET /api/drain, with the transport's error as it is, so
// that a refused connection (the daemon is gone) can be told apart.
func (c *adminClient) drainStatus() (httpapi.DrainStatus, error) {
	var st httpapi.DrainStatus
	resp, err := c.do(http.MethodGet, "/api/drain")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /api/drain: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

package main

import (
	"errors"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// TestDrainDeliversThenExits runs the real `postern drain` against a
// daemon with work left: one delivery in flight (the MX holds its reply),
// three more due but held back by the destination's rate (one message
// every 2s), a message to another domain deferred for an hour, and a
// client in the middle of a transaction. While the drain waits, /readyz
// answers 503 and new SMTP connections are refused, but the client's
// message is accepted; the due messages, the client's among them, go out
// as the rate allows, the daemon exits 0 once nothing is in flight or due,
// and postern drain says the deferred message stayed in the local queue.
func TestDrainDeliversThenExits(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	w.mx("later.test", "127.0.2.3")
	rcv := w.receiver("127.0.2.2")
	later := w.receiver("127.0.2.3")
	later.FailNext(relaytest.CmdRCPT, 451, "4.3.0 try again in an hour", -1)
	held, release := rcv.HoldNextReply()
	defer release()
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	cfg.RetryInitial, cfg.RetryMax = "1h", "1h"
	in := newInstance(t, cfg)
	secOverride(t, in, "delivery: {shaping: {default: {rate: 1/2s}}}")
	in.start()

	deferredID := relayOne(t, in, "carol@later.test")
	in.waitLog(20*time.Second, hasID(deferredID, "deferred"))
	const n = 4
	for range n {
		relayOne(t, in, "bob@dest.test")
	}
	select {
	case <-held: // the first delivery is in flight; the others wait
	case <-time.After(30 * time.Second):
		t.Fatalf("no delivery reached the MX\n%s", in.logs.String())
	}
	client := dial(t, in.cfg.Relay)
	client.cmd("EHLO client.test")
	client.cmd("MAIL FROM:<app@example.test>")
	client.cmd("RCPT TO:<bob@dest.test>")
	if r := client.cmd("DATA"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}

	drain := startDrain(t, in, "1m")

	// The load balancer's check fails at once, while the delivery is
	// still held.
	readyz := "http://" + cfg.Admin + "/readyz"
	waitFor(t, 10*time.Second, "/readyz to answer 503", func() bool {
		resp, err := http.Get(readyz)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	// New SMTP connections are refused: the listener is closed.
	waitFor(t, 10*time.Second, "the relay listener to refuse connections", func() bool {
		c, err := net.DialTimeout("tcp", in.cfg.Relay, time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	// The transaction in progress is let finish.
	if r := client.cmd("Subject: in progress\r\n\r\nsent while the node drains\r\n."); !strings.HasPrefix(r, "250 ") {
		t.Errorf("the message of a session in progress: %q, want 250", r)
	}
	select {
	case <-drain.done:
		t.Fatalf("postern drain ended (%v) while a delivery was in flight:\n%s", drain.err, drain.out.String())
	case <-in.done:
		t.Fatalf("postern exited while a delivery was in flight:\n%s", in.logs.String())
	default:
	}

	release()
	drain.wait(t, in)
	if got := len(rcv.Messages()); got != n+1 {
		t.Errorf("the MX got %d messages, want %d", got, n+1)
	}
	// The drain did not only wait for the attempt in flight: messages
	// that were due, held back by the rate, went out during it.
	const began = "draining: no new connections; delivering what is due"
	draining, during := false, 0
	for _, e := range in.logs.all(func(e logEntry) bool { return e.isMsg(began) || e.isMsg("delivered") }) {
		if e.isMsg(began) {
			draining = true
		} else if draining {
			during++
		}
	}
	if during < 2 {
		t.Errorf("%d messages delivered during the drain, want the held one and at least one the rate held back", during)
	}
	last := in.waitLog(time.Second, func(e logEntry) bool { return e.isMsg("drained: nothing in flight or due; stopping") })
	if last["queued"] != 0.0 || last["deferred"] != 1.0 {
		t.Errorf("the daemon drained with %v queued and %v deferred, want 0 and 1", last["queued"], last["deferred"])
	}
	t.Logf("postern drain printed:\n%s", drain.out.String())
	if s := drain.out.String(); !strings.Contains(s, "stopped after") ||
		!strings.Contains(s, "left in its queue at the last look: 1 deferred, 0 held") {
		t.Errorf("postern drain printed:\n%s", s)
	}
}

// drainRun is `postern drain` run in the background.
type drainRun struct {
	out  *logBuffer // written by exec's copying goroutine
	done chan struct{}
	err  error // once done is closed
}

// startDrain runs `postern drain --timeout timeout` against in; the
// test's end kills it if it still runs.
func startDrain(t testing.TB, in *instance, timeout string) *drainRun {
	t.Helper()
	d := &drainRun{out: &logBuffer{}, done: make(chan struct{})}
	cmd := exec.Command(binPath, "drain", "--timeout", timeout, "--config", in.cfgPath)
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-d.done })
	return d
}

// wait waits for postern drain to succeed, and for in to exit 0.
func (d *drainRun) wait(t testing.TB, in *instance) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("postern drain did not return:\n%s\n%s", d.out.String(), in.logs.String())
	}
	if d.err != nil {
		t.Fatalf("postern drain: %v\n%s\n%s", d.err, d.out.String(), in.logs.String())
	}
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("postern did not exit after the drain:\n%s", in.logs.String())
	}
	in.cmd = nil
	if in.exitErr != nil {
		t.Fatalf("postern exited with %v after the drain:\n%s", in.exitErr, in.logs.String())
	}
}

// waitFor polls cond every 50 ms until it holds, or fails the test after
// timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package main

import (
	"bufio"
	"encoding/json"
	"net"
	"syscall"
	"testing"
	"time"

	"postern/queue"
)

// TestShutdownKeepsItsPromises: SIGTERM with an idle client connected (a
// pool waiting for its next message) and a delivery in flight (the MX has
// the message and has not answered yet). The idle client is let go at
// once instead of holding the shutdown, the delivery in flight is allowed
// to end and is recorded, and so after a restart nothing is left to
// retry: the MX has the message exactly once.
//
// Before, the idle client held the shutdown for all of shutdown_timeout,
// after which the queue closed with its context already done: the
// attempt was cut between the MX's receipt and its reply, its lease kept,
// and the next start delivered the message a second time.
func TestShutdownKeepsItsPromises(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	held, release := rcv.HoldNextReply()
	defer release()
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	in := newInstance(t, cfg)
	in.start()

	id := relayOne(t, in, "bob@dest.test")
	select {
	case <-held: // the MX has recorded the message; postern waits for its 250
	case <-time.After(30 * time.Second):
		t.Fatalf("the delivery never reached the MX\n%s", in.logs.String())
	}

	idle, err := net.Dial("tcp", in.cfg.Relay)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	r := bufio.NewReader(idle)
	if _, err := r.ReadString('\n'); err != nil { // the greeting
		t.Fatal(err)
	}
	idle.Write([]byte("EHLO pool.test\r\n"))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if len(line) > 3 && line[3] == ' ' {
			break // the EHLO reply's last line
		}
	}

	in.cmd.Process.Signal(syscall.SIGTERM)
	// The idle connection is closed while the delivery is still held: it
	// does not wait for the shutdown's deadline.
	if line, err := r.ReadString('\n'); err == nil {
		t.Errorf("the idle client got %q instead of being closed", line)
	}
	release()
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("postern did not stop\n%s", in.logs.String())
	}
	if in.exitErr != nil {
		t.Fatalf("postern exited with %v\n%s", in.exitErr, in.logs.String())
	}
	in.waitLog(time.Second, hasID(id, "delivered"))
	in.cmd = nil

	// After a restart the queue is empty: the attempt was recorded, so
	// nothing will be delivered again.
	in.start()
	out, err := in.postern("", "queue", "list", "--json")
	if err != nil {
		t.Fatalf("queue list: %v\n%s", err, out)
	}
	var left []queue.Message
	if err := json.Unmarshal([]byte(out), &left); err != nil || len(left) != 0 {
		t.Errorf("queue after the restart: %s (%v), want empty", out, err)
	}
	if n := len(rcv.Messages()); n != 1 {
		t.Errorf("the MX has %d copies, want 1", n)
	}
}

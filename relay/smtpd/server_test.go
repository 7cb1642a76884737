package smtpd_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"

	"postern/relay/smtpd"
)

func TestKindString(t *testing.T) {
	for k, want := range map[smtpd.Kind]string{
		smtpd.Submission:   "submission",
		smtpd.Submissions:  "submissions",
		smtpd.TrustedRelay: "relay",
		smtpd.Kind(0):      "unknown",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

// TestShutdownWaitsForSessions: a session with a transaction open when
// Shutdown starts is served to its end (the 250 for its message), then
// closed, and Shutdown returns once it has ended.
func TestShutdownWaitsForSessions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpd.NewServer(smtpd.Options{Kind: smtpd.TrustedRelay, Hostname: "mx.test", Trusted: loopback, Queue: &fakeQueue{}})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	c := dialRaw(t, l.Addr().String(), false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
	})
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()

	// Whether or not Shutdown has started yet, the session goes on.
	c.run([]step{{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
	if r := c.data("x\r\n"); r.code != 250 {
		t.Fatalf("DATA during shutdown: %v", r)
	}
	// The transaction is over: a QUIT gets its 221 or finds the
	// connection already closed, never a new transaction.
	c.text.PrintfLine("QUIT")
	if code, _, err := c.text.ReadResponse(0); err == nil && code != 221 {
		t.Errorf("QUIT after the last message: %d", code)
	}

	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestShutdownDeadlineClosesSessions: once Shutdown's context is done, the
// sessions still open are closed, as its documentation says.
func TestShutdownDeadlineClosesSessions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpd.NewServer(smtpd.Options{Kind: smtpd.TrustedRelay, Hostname: "mx.test", Trusted: loopback, Queue: &fakeQueue{}})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	c := dialRaw(t, l.Addr().String(), false)
	c.run([]step{{send: "EHLO client.test", code: 250}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want %v", err, context.Canceled)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	// The server closed the connection before Shutdown returned: the
	// command may still be written, but no reply comes.
	c.text.PrintfLine("NOOP")
	if code, msg, err := c.text.ReadResponse(0); err == nil {
		t.Errorf("session still served after the Shutdown deadline: %d %s", code, msg)
	}
}

// TestServeAfterShutdown: a Serve that starts after Shutdown (a signal
// early in start-up) must not serve anyone, nor run forever.
func TestServeAfterShutdown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpd.NewServer(smtpd.Options{Kind: smtpd.TrustedRelay, Hostname: "mx.test", Trusted: loopback, Queue: &fakeQueue{}})
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	conn, err := net.Dial("tcp", l.Addr().String())
	if err == nil {
		// Perhaps accepted by the kernel before Serve closed the
		// listener, but never greeted.
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil {
			t.Errorf("server greeted after Shutdown: %q", line)
		}
		conn.Close()
	}
	l.Close() // with the bug, only this ends Serve
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
}

// TestShutdownClosesIdleSessions: a client connected with no transaction
// open (a pool waiting for its next message) does not hold the shutdown:
// it is closed at once, while a session in the middle of a transaction
// finishes; and a session whose transaction is over is never given a new
// one (421 4.3.2, or the connection closed).
func TestShutdownClosesIdleSessions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpd.NewServer(smtpd.Options{Kind: smtpd.TrustedRelay, Hostname: "mx.test", Trusted: loopback, Queue: &fakeQueue{}})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	idle := dialRaw(t, l.Addr().String(), false)
	idle.run([]step{{send: "EHLO idle.test", code: 250}})
	busy := dialRaw(t, l.Addr().String(), false)
	busy.run([]step{
		{send: "EHLO busy.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()

	// With no deadline, Shutdown could wait forever for the idle client:
	// the server closing it is what lets this read end.
	if code, msg, err := idle.text.ReadResponse(0); err == nil {
		t.Fatalf("the idle session got a reply instead of being closed: %d %s", code, msg)
	}
	if r := busy.data("x\r\n"); r.code != 250 {
		t.Fatalf("the busy session's message: %v, want 250", r)
	}
	busy.text.PrintfLine("MAIL FROM:<app@example.test>")
	if code, _, err := busy.text.ReadResponse(0); err == nil && code != 421 {
		t.Errorf("a new transaction during shutdown: %d, want 421 or the connection closed", code)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

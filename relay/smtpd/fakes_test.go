package smtpd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/auth"
	"postern/queue"
	qreply "postern/queue/reply"
	"postern/relay/certs"
	"postern/relay/smtpd"
)

// This file holds the in-process fakes and the two clients the session
// tests use: go-smtp's own client for ordinary flows, and rawClient when a
// test needs the exact reply line or must send something go-smtp's client
// refuses to.

// fakeQueue is an Enqueuer that records what it is given. err, when set,
// is returned instead of storing the message.
type fakeQueue struct {
	err error

	mu     sync.Mutex
	envs   []queue.Envelope
	bodies [][]byte
	ended  int // EnqueuePrefixed calls returned, queued or not
}

// endedCalls is how many EnqueuePrefixed calls have returned.
func (q *fakeQueue) endedCalls() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ended
}

var _ smtpd.Enqueuer = (*fakeQueue)(nil)

func (q *fakeQueue) EnqueuePrefixed(_ context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	defer func() {
		q.mu.Lock()
		q.ended++
		q.mu.Unlock()
	}()
	// Read the body even when failing, as a real queue would have started
	// writing it before the disk filled up.
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	if q.err != nil {
		return "", q.err
	}
	p, err := prefix()
	if err != nil {
		return "", err
	}
	b = append(p, b...)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.envs = append(q.envs, *env)
	q.bodies = append(q.bodies, b)
	return fmt.Sprintf("Q%d", len(q.envs)), nil
}

// messages returns copies of what was enqueued so far.
func (q *fakeQueue) messages() ([]queue.Envelope, [][]byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]queue.Envelope(nil), q.envs...), append([][]byte(nil), q.bodies...)
}

// fakeAuth knows one user, alice with password "secret", who may send as
// alice@example.test only. The user "broken" makes it fail internally, and
// "busy" finds every password check slot taken.
type fakeAuth struct{}

var _ smtpd.Authenticator = fakeAuth{}

// errAuthBackend is an internal failure whose text must never reach a client.
var errAuthBackend = errors.New("users file /etc/postern/users: permission denied")

func (fakeAuth) Authenticate(_ context.Context, name, password string) (*auth.User, error) {
	switch {
	case name == "broken":
		return nil, errAuthBackend
	case name == "busy":
		return nil, fmt.Errorf("fake: %w", auth.ErrBusy)
	case name == "alice" && password == "secret":
		return auth.NewUser("alice", []auth.Pattern{auth.MustParsePattern("alice@example.test")}), nil
	}
	return nil, fmt.Errorf("fake: %w", auth.ErrInvalidCredentials)
}

// fixedSigner prepends one fixed header and records what it signed.
type fixedSigner struct {
	mu     sync.Mutex
	signed [][]byte
}

const sigHeader = "DKIM-Signature: v=1; a=ed25519-sha256; d=example.test; s=fake; b=AAAA\r\n"

func (s *fixedSigner) Sign(msg io.Reader) ([]byte, error) {
	b, err := io.ReadAll(msg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.signed = append(s.signed, b)
	s.mu.Unlock()
	return []byte(sigHeader), nil
}

// failingSigner fails with an error whose text must not reach the client.
type failingSigner struct{}

var errSignerKey = errors.New("dkim: key /etc/postern/dkim/example.test.key unreadable")

func (failingSigner) Sign(io.Reader) ([]byte, error) { return nil, errSignerKey }

func signerFunc(s smtpd.Signer) func() smtpd.Signer { return func() smtpd.Signer { return s } }

// loopback is the trusted network of the TrustedRelay tests.
var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// testTLS returns a server TLS configuration with a fresh self-signed
// certificate, made the way postern makes one when none is configured.
func testTLS(t testing.TB) *tls.Config {
	t.Helper()
	c, err := certs.Load("", "", t.TempDir(), "mx.test")
	if err != nil {
		t.Fatalf("LoadCerts: %v", err)
	}
	return c.Config()
}

// clientTLS is the client side: the certificate is self-signed.
func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"}
}

// startServer runs a smtpd.Server on a fresh loopback port and stops it at
// the end of the test, checking that Serve returned cleanly. Register client
// cleanups after calling it, so they run (and close their connections)
// before the server's graceful shutdown waits for them.
func startServer(t *testing.T, opts smtpd.Options) string {
	t.Helper()
	return startServerOn(t, "127.0.0.1:0", opts)
}

// startServerOn is startServer on a given loopback address.
func startServerOn(t *testing.T, listen string, opts smtpd.Options) string {
	t.Helper()
	if opts.Hostname == "" {
		opts.Hostname = "mx.test"
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpd.NewServer(opts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		// The deadline only guards against a hung test; a clean run never
		// gets near it.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		// go-smtp's Serve registers its listener only once it runs: if
		// Shutdown won that race, closing the listener here is what ends
		// Serve (go-smtp v0.25.1 does not check for an earlier Shutdown).
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// submissionOpts are the options of a submission listener with fakes.
func submissionOpts(t *testing.T, q smtpd.Enqueuer) smtpd.Options {
	return smtpd.Options{
		Kind:  smtpd.Submission,
		TLS:   testTLS(t),
		Auth:  fakeAuth{},
		Queue: q,
	}
}

// reply is one SMTP reply as the client saw it.
type reply struct {
	code  int
	enh   string // enhanced status code, "" when there is none
	text  string // the last line's text, after the enhanced code
	lines []string
}

func (r reply) String() string { return fmt.Sprintf("%d %s %s", r.code, r.enh, r.text) }

// isEnhanced reports whether s is an enhanced status code (RFC 3463).
func isEnhanced(s string) bool { _, err := qreply.ParseEnhanced(s); return err == nil }

// rawClient speaks SMTP line by line, for exact replies and for commands a
// polite client would not send.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	text *textproto.Conn
}

// dialRaw connects and reads the greeting. With implicitTLS, the
// connection is TLS from the first byte (port 465 style).
func dialRaw(t *testing.T, addr string, implicitTLS bool) *rawClient {
	t.Helper()
	var conn net.Conn
	var err error
	if implicitTLS {
		conn, err = tls.Dial("tcp", addr, clientTLS())
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	c := &rawClient{t: t, conn: conn, text: textproto.NewConn(conn)}
	t.Cleanup(func() { c.text.Close() })
	if r := c.read(); r.code != 220 {
		t.Fatalf("greeting: %v", r)
	}
	return c
}

func (c *rawClient) read() reply {
	c.t.Helper()
	code, msg, err := c.text.ReadResponse(0)
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	r := reply{code: code, lines: strings.Split(msg, "\n")}
	last := r.lines[len(r.lines)-1]
	if enh, rest, ok := strings.Cut(last, " "); ok && isEnhanced(enh) {
		r.enh, r.text = enh, rest
	} else if isEnhanced(last) {
		r.enh = last
	} else {
		r.text = last
	}
	return r
}

// cmd sends one line and returns the reply.
func (c *rawClient) cmd(line string) reply {
	c.t.Helper()
	if err := c.text.PrintfLine("%s", line); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
	return c.read()
}

// startTLS upgrades the connection after a 220 reply to STARTTLS.
func (c *rawClient) startTLS() {
	c.t.Helper()
	tc := tls.Client(c.conn, clientTLS())
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.text = textproto.NewConn(tc)
}

func (c *rawClient) tlsState() (tls.ConnectionState, bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return tls.ConnectionState{}, false
	}
	return tc.ConnectionState(), true
}

// data sends DATA, then body (already CRLF-terminated and dot-stuffed as
// the test wants it on the wire), then the terminating dot, and returns
// the final reply.
func (c *rawClient) data(body string) reply {
	c.t.Helper()
	if r := c.cmd("DATA"); r.code != 354 {
		c.t.Fatalf("DATA: %v", r)
	}
	if _, err := io.WriteString(c.conn, body+".\r\n"); err != nil {
		c.t.Fatal(err)
	}
	return c.read()
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// step is one line of a scripted session and the reply it must get.
type step struct {
	send string // "STARTTLS" also upgrades the connection on 220
	code int
	enh  string // exact enhanced code; "" means the reply has none
	text string // when set, the exact reply text
	// notContain lists strings the reply must not contain (internal
	// details, user names).
	notContain []string
}

// run plays steps on c, stopping at the first mismatch.
func (c *rawClient) run(steps []step) {
	c.t.Helper()
	for i, s := range steps {
		r := c.cmd(s.send)
		if r.code != s.code || r.enh != s.enh {
			c.t.Fatalf("step %d %q: got %v, want %d %s", i, s.send, r, s.code, s.enh)
		}
		if s.text != "" && r.text != s.text {
			c.t.Errorf("step %d %q: text %q, want %q", i, s.send, r.text, s.text)
		}
		all := strings.Join(r.lines, "\n")
		for _, bad := range s.notContain {
			if strings.Contains(all, bad) {
				c.t.Errorf("step %d %q: reply %q contains %q", i, s.send, all, bad)
			}
		}
		if s.send == "STARTTLS" && r.code == 220 {
			c.startTLS()
		}
	}
}

// plainIR is the AUTH PLAIN initial response for authzid, user, password.
func plainIR(authzid, user, pass string) string {
	return b64(authzid + "\x00" + user + "\x00" + pass)
}

// splitReceived cuts the leading Received field off an enqueued body.
func splitReceived(t *testing.T, body []byte) (received string, rest []byte) {
	t.Helper()
	if !bytes.HasPrefix(body, []byte("Received: ")) {
		t.Fatalf("body does not start with Received: %q", body)
	}
	// The field ends at the first CRLF not followed by folding white space.
	for i := 0; i+2 < len(body); i++ {
		if body[i] == '\r' && body[i+1] == '\n' && body[i+2] != '\t' && body[i+2] != ' ' {
			return string(body[:i+2]), body[i+2:]
		}
	}
	t.Fatalf("unterminated Received field: %q", body)
	return "", nil
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

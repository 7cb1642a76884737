package smtpd_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/auth"
	"postern/relay/smtpd"
)

// dialFrom connects from a given loopback address (127.0.0.0/8 is all
// local on Linux), so that one test can play several clients.
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawFrom is dialRaw from a given local address.
func rawFrom(t *testing.T, local, addr string) *rawClient {
	t.Helper()
	conn := dialFrom(t, local, addr)
	c := &rawClient{t: t, conn: conn, text: textproto.NewConn(conn)}
	if r := c.read(); r.code != 220 {
		t.Fatalf("greeting: %v", r)
	}
	return c
}

// expectClosed reads until the server closes the connection (bounded by a
// deadline that only guards against a hang) and returns what it sent.
func expectClosed(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed by the server: %v (read %q)", err, b)
	}
	return string(b)
}

var ehloAuthAlice = concat(ehloTLS, []step{authAlice})

func TestHeaderFromCheck(t *testing.T) {
	const body = "Subject: x\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\nhi\r\n"
	pol := &smtpd.Policy{CheckHeaderFrom: []smtpd.Kind{smtpd.Submission}}
	tests := []struct {
		name, header string
		code         int
		enh          string
	}{
		{"own address", "From: Alice <alice@example.test>\r\n", 250, "2.0.0"},
		{"someone else's", "From: The CEO <ceo@example.test>\r\n", 550, "5.7.1"},
		{"Sender someone else's", "From: alice@example.test\r\nSender: ceo@example.test\r\n", 550, "5.7.1"},
		{"no From", "", 550, "5.7.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := &fakeQueue{}
			opts := submissionOpts(t, q)
			opts.Policy = pol
			c := dialRaw(t, startServer(t, opts), false)
			c.run(concat(ehloAuthAlice, []step{
				{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
				{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
			}))
			if r := c.data(tt.header + body); r.code != tt.code || r.enh != tt.enh {
				t.Errorf("DATA: %v, want %d %s", r, tt.code, tt.enh)
			}
		})
	}
	t.Run("listener left out of the list", func(t *testing.T) {
		t.Parallel()
		q := &fakeQueue{}
		opts := submissionOpts(t, q)
		opts.Kind, opts.Policy = smtpd.Submissions, pol
		c := dialRaw(t, startServer(t, opts), true)
		c.run([]step{{send: "EHLO client.test", code: 250}, authAlice,
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
		if r := c.data("From: ceo@example.test\r\n" + body); r.code != 250 {
			t.Errorf("service account listener: %v, want 250", r)
		}
	})
}

func TestHeaderHygiene(t *testing.T) {
	q := &fakeQueue{}
	opts := smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q, Hostname: "postern.test",
		Policy: &smtpd.Policy{FixHeaders: true, MaxReceived: 50}}
	addr := startServer(t, opts)
	send := func(msg string) reply {
		c := dialRaw(t, addr, false)
		c.run([]step{{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
		return c.data(msg)
	}
	const rest = "From: app@example.test\r\nTo: bob@example.org\r\nSubject:  spaced\t out \r\n\r\nBcc: body text\r\n"
	if r := send("Bcc: hidden@example.org,\r\n other@example.org\r\n" + rest); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	_, bodies := q.messages()
	_, got := splitReceived(t, bodies[0])
	tp := textproto.NewReader(bufio.NewReader(strings.NewReader(string(got))))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("Date") == "" || !strings.HasSuffix(h.Get("Message-Id"), "@postern.test>") || h.Get("Bcc") != "" {
		t.Errorf("header after hygiene: %v", h)
	}
	if !strings.HasSuffix(string(got), rest) {
		t.Errorf("the rest is not byte for byte:\n%q\nwant suffix\n%q", got, rest)
	}

	received := strings.Repeat("Received: from a.test by b.test; Tue, 24 Nov 2026 10:00:00 +0000\r\n", 50)
	if r := send(received + rest); r.code != 250 {
		t.Errorf("50 Received fields: %v, want 250", r)
	}
	if r := send("Received: one more\r\n" + received + rest); r.code != 554 || r.enh != "5.4.6" {
		t.Errorf("51 Received fields: %v, want 554 5.4.6", r)
	}
}

// TestSmuggling sends each smuggling payload inside a message's text, from
// a client that may not send bare line ends and from one that may.
func TestSmuggling(t *testing.T) {
	pol := &smtpd.Policy{ForbidBareNewline: true,
		BareNewlineExclusions: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	q := &fakeQueue{}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q, Policy: pol})
	const smuggled = "MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n"
	payloads := []struct {
		name, wire string
		// swallowed: go-smtp's DATA reader drops ".<CR>" at the start of a
		// line when no LF follows (newline.go), so the session never sees
		// that bare CR and the message is accepted without it.
		swallowed bool
	}{
		{"<LF>.<LF>", "\n.\n", false},
		{"<CR>.<CR>", "\r.\r", false},
		{"<CR><LF>.<LF>", "\r\n.\n", false},
		{"<LF>.<CR><LF>", "\n.\r\n", false},
		{"<CR>.<CR><LF>", "\r.\r\n", false},
		{"<CR>.<LF>", "\r.\n", false},
		{"<LF>.<CR>", "\n.\r", false},
		{"bare LF line ends", "\n", false},
		{"bare CR line ends", "\r", false},
		{"<CR><LF>.<CR>", "\r\n.\r", true},
	}
	for _, p := range payloads {
		t.Run(p.name, func(t *testing.T) {
			body := "Subject: x\r\n\r\nhello" + p.wire + smuggled
			// From 127.0.0.2: refused, and the connection closes.
			c := rawFrom(t, "127.0.0.2", addr)
			c.run([]step{{send: "EHLO client.test", code: 250},
				{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
				{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
			r := c.data(body)
			if p.swallowed {
				if r.code != 250 {
					t.Fatalf("untrusted, swallowed by go-smtp: %v, want 250", r)
				}
			} else {
				if r.code != 521 || r.enh != "5.5.2" {
					t.Fatalf("untrusted: %v, want 521 5.5.2", r)
				}
				if rest := expectClosed(t, c.conn); rest != "" {
					t.Errorf("after 521 the server sent %q", rest)
				}
			}

			// From 127.0.0.1: one message, with CRLF line ends only.
			c = rawFrom(t, "127.0.0.1", addr)
			before, _ := q.messages()
			c.run([]step{{send: "EHLO client.test", code: 250},
				{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
				{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
			if r := c.data(body); r.code != 250 {
				t.Fatalf("excluded client: %v, want 250", r)
			}
			if r := c.cmd("NOOP"); r.code != 250 {
				t.Fatalf("after the message: %v (the smuggled commands must not run)", r)
			}
			envs, bodies := q.messages()
			if len(envs) != len(before)+1 {
				t.Fatalf("%d messages enqueued, want 1", len(envs)-len(before))
			}
			got := bodies[len(bodies)-1]
			if strings.Contains(strings.ReplaceAll(string(got), "\r\n", ""), "\r") ||
				strings.Contains(strings.ReplaceAll(string(got), "\r\n", ""), "\n") {
				t.Errorf("stored message has a bare CR or LF: %q", got)
			}
			if !strings.Contains(string(got), "forged") {
				t.Errorf("the smuggled text is not part of the one message: %q", got)
			}
		})
	}
}

// TestSmugglingBDAT: BDAT (CHUNKING, which go-smtp always offers) carries
// raw bytes with no end-of-data line at all; a bare LF in it is refused
// the same way.
func TestSmugglingBDAT(t *testing.T) {
	pol := &smtpd.Policy{ForbidBareNewline: true}
	q := &fakeQueue{}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q, Policy: pol})
	c := rawFrom(t, "127.0.0.2", addr)
	c.run([]step{{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
	chunk := "Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.test>\r\n"
	if _, err := io.WriteString(c.conn, "BDAT "+strconv.Itoa(len(chunk))+" LAST\r\n"+chunk); err != nil {
		t.Fatal(err)
	}
	if r := c.read(); r.code != 521 || r.enh != "5.5.2" {
		t.Errorf("BDAT with a bare LF: %v, want 521 5.5.2", r)
	}
	expectClosed(t, c.conn)
	if envs, _ := q.messages(); len(envs) != 0 {
		t.Errorf("%d messages enqueued", len(envs))
	}
}

func TestUserRateLimits(t *testing.T) {
	q := &fakeQueue{}
	opts := submissionOpts(t, q)
	opts.Policy = &smtpd.Policy{
		UserMessages:   smtpd.Rate{N: 1, Per: 300 * time.Millisecond},
		UserRecipients: smtpd.Rate{N: 2, Per: time.Hour},
	}
	addr := startServer(t, opts)
	c := dialRaw(t, addr, false)
	c.run(concat(ehloAuthAlice, []step{
		{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<a@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<b@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<c@example.org>", code: 450, enh: "4.7.1"},
		{send: "RSET", code: 250, enh: "2.0.0"},
	}))
	r := c.cmd("MAIL FROM:<alice@example.test>")
	if r.code != 450 || r.enh != "4.7.1" || !strings.Contains(r.text, "try again in 1s") {
		t.Fatalf("second message within the window: %v, want 450 4.7.1 with the wait", r)
	}
	// The allowance comes back after the window; the loop only bounds a
	// hang.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := c.cmd("MAIL FROM:<alice@example.test>"); r.code == 250 {
			break
		} else if r.code != 450 || time.Now().After(deadline) {
			t.Fatalf("after the window: %v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRelayDomains(t *testing.T) {
	opts := smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: &fakeQueue{},
		Policy: &smtpd.Policy{RelaySenderDomains: []string{"app.example.test"}, RelayRecipientDomains: []string{"example.org"}}}
	c := dialRaw(t, startServer(t, opts), false)
	c.run([]step{{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<x@other.example.test>", code: 553, enh: "5.7.1"},
		{send: "MAIL FROM:<x@App.Example.Test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.net>", code: 550, enh: "5.7.1"},
		{send: "RCPT TO:<bob@sub.example.org>", code: 550, enh: "5.7.1"},
		{send: "RCPT TO:<bob@EXAMPLE.org>", code: 250, enh: "2.0.0"},
		{send: "RSET", code: 250, enh: "2.0.0"},
		{send: "MAIL FROM:<>", code: 250, enh: "2.0.0"},
	})
}

// readLine reads one reply line of a connection refused at accept.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading: %v (got %q)", err, line)
	}
	return line
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per client at once", func(t *testing.T) {
		t.Parallel()
		pol := &smtpd.Policy{IPConnections: 2, LimitExempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
		addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Queue: &fakeQueue{}, Policy: pol})
		a, b := rawFrom(t, "127.0.0.2", addr), rawFrom(t, "127.0.0.2", addr)
		c := dialFrom(t, "127.0.0.2", addr)
		if l := readLine(t, c); !strings.HasPrefix(l, "421 4.7.0 ") {
			t.Errorf("third connection: %q, want 421 4.7.0", l)
		}
		expectClosed(t, c)
		// Another client, and the exempt one, are not affected.
		rawFrom(t, "127.0.0.3", addr)
		for range 4 {
			rawFrom(t, "127.0.0.1", addr)
		}
		// A slot frees when a connection ends.
		a.cmd("QUIT")
		expectClosed(t, a.conn)
		b.cmd("NOOP")
		deadline := time.Now().Add(30 * time.Second)
		for {
			c := dialFrom(t, "127.0.0.2", addr)
			if l := readLine(t, c); strings.HasPrefix(l, "220 ") {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("no slot after QUIT: %q", l)
			}
		}
	})
	t.Run("per client per minute", func(t *testing.T) {
		t.Parallel()
		pol := &smtpd.Policy{IPConnectionRate: smtpd.Rate{N: 2, Per: time.Hour}}
		addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Queue: &fakeQueue{}, Policy: pol})
		for range 2 {
			c := rawFrom(t, "127.0.0.4", addr)
			c.cmd("QUIT")
		}
		c := dialFrom(t, "127.0.0.4", addr)
		if l := readLine(t, c); !strings.HasPrefix(l, "421 4.7.0 ") {
			t.Errorf("third connection within the window: %q, want 421 4.7.0", l)
		}
	})
	t.Run("global cap", func(t *testing.T) {
		t.Parallel()
		pol := &smtpd.Policy{MaxConnections: 2}
		// Two listeners share the Policy, so the cap counts both.
		a1 := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Queue: &fakeQueue{}, Policy: pol})
		a2 := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Queue: &fakeQueue{}, Policy: pol})
		rawFrom(t, "127.0.0.5", a1)
		rawFrom(t, "127.0.0.6", a2)
		c := dialFrom(t, "127.0.0.7", a1)
		if l := readLine(t, c); !strings.HasPrefix(l, "421 4.3.2 ") {
			t.Errorf("connection over the cap: %q, want 421 4.3.2", l)
		}
	})
}

func TestTimeouts(t *testing.T) {
	t.Run("idle connection", func(t *testing.T) {
		t.Parallel()
		addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: &fakeQueue{},
			IdleTimeout: 200 * time.Millisecond})
		c := dialFrom(t, "127.0.0.1", addr)
		if got := expectClosed(t, c); !strings.HasPrefix(got, "220 ") || !strings.Contains(got, "\r\n421 4.4.2 ") {
			t.Errorf("silent client got %q, want greeting then 421 4.4.2", got)
		}
	})
	t.Run("NOOPs do not keep a session", func(t *testing.T) {
		t.Parallel()
		addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: &fakeQueue{},
			IdleTimeout: 200 * time.Millisecond})
		c := rawFrom(t, "127.0.0.1", addr)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if err := c.text.PrintfLine("NOOP"); err != nil {
				return
			}
			code, msg, err := c.text.ReadResponse(0)
			if err != nil {
				return // closed
			}
			if code == 421 {
				if !strings.HasPrefix(msg, "4.4.2") {
					t.Errorf("idle close: %d %s", code, msg)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("a NOOP loop kept the session open")
	})
	t.Run("slow DATA", func(t *testing.T) {
		t.Parallel()
		q := &fakeQueue{}
		addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q,
			DataTimeout: 200 * time.Millisecond})
		c := rawFrom(t, "127.0.0.1", addr)
		c.run([]step{{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
			{send: "DATA", code: 354}})
		io.WriteString(c.conn, "Subject: slow\r\n")
		if got := expectClosed(t, c.conn); !strings.HasPrefix(got, "421 4.4.2 ") {
			t.Errorf("stalled DATA: %q, want 421 4.4.2 and close", got)
		}
		if envs, _ := q.messages(); len(envs) != 0 {
			t.Errorf("a cut-off message was enqueued")
		}
	})
}

// throttledServer starts a submission server whose AUTH throttle slows
// after one failure and refuses after two, and returns its address and its
// log.
func throttledServer(t *testing.T) (string, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	opts := submissionOpts(t, &fakeQueue{})
	opts.Logger = zap.New(core)
	opts.Policy = &smtpd.Policy{AuthThrottle: &auth.Throttle{
		MaxFailures: 1, Window: time.Hour, Cooldown: time.Hour, BaseDelay: time.Millisecond}}
	return startServer(t, opts), logs
}

func TestAuthThrottle(t *testing.T) {
	addr, logs := throttledServer(t)

	// Alice's usual address has logged in before the attack.
	c := rawFrom(t, "127.0.0.3", addr)
	c.run(ehloAuthAlice)

	bad := step{send: "AUTH PLAIN " + plainIR("", "alice", "guess"), code: 535, enh: "5.7.8"}
	c = rawFrom(t, "127.0.0.2", addr)
	c.run(concat(ehloTLS, []step{bad, bad})) // the second is delayed first
	r := c.cmd("AUTH PLAIN " + plainIR("", "alice", "secret"))
	if r.code != 421 || r.enh != "4.7.0" {
		t.Fatalf("attempt in the cool-down: %v, want 421 4.7.0", r)
	}
	expectClosed(t, c.conn)
	c = rawFrom(t, "127.0.0.2", addr)
	c.run(concat(ehloTLS, []step{{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 421, enh: "4.7.0"}}))

	// From the known address: at once. From a new one: the name is in its
	// cool-down too.
	c = rawFrom(t, "127.0.0.3", addr)
	c.run(ehloAuthAlice)
	c = rawFrom(t, "127.0.0.4", addr)
	c.run(concat(ehloTLS, []step{{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 421, enh: "4.7.0"}}))

	delayed := logs.FilterMessage("auth delayed").All()
	if len(delayed) != 1 || delayed[0].ContextMap()["client_ip"] != "127.0.0.2" {
		t.Errorf("auth delayed lines: %v", delayed)
	}
	refused := logs.FilterMessage("auth refused").All()
	if len(refused) != 3 {
		t.Errorf("%d auth refused lines, want 3 (one per refusal)", len(refused))
	}
	for _, e := range logs.FilterField(zap.String("client_ip", "127.0.0.3")).All() {
		if e.Message == "auth delayed" || e.Message == "auth refused" {
			t.Errorf("the known address was slowed: %v", e)
		}
	}
}

// TestAuthBusyIsNotAFailure: an attempt refused for want of a password
// check slot checked nothing, so the throttle does not count it: a client
// that met a busy server is neither slowed nor refused afterwards.
func TestAuthBusyIsNotAFailure(t *testing.T) {
	addr, logs := throttledServer(t)

	busy := step{send: "AUTH PLAIN " + plainIR("", "busy", "x"), code: 454, enh: "4.7.0"}
	c := rawFrom(t, "127.0.0.2", addr)
	c.run(concat(ehloTLS, []step{busy, busy, busy, authAlice}))
	if n := logs.FilterMessage("auth busy").FilterField(zap.String("username", "busy")).Len(); n != 3 {
		t.Errorf("%d auth busy lines naming the user, want 3", n)
	}
	for _, msg := range []string{"auth delayed", "auth refused", "authentication failed", "authentication error"} {
		if n := logs.FilterMessage(msg).Len(); n != 0 {
			t.Errorf("%d %q lines after busy refusals, want none", n, msg)
		}
	}
}

func TestProxyProtocol(t *testing.T) {
	q := &fakeQueue{}
	pol := &smtpd.Policy{ProxyFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		ProxyHeaderTimeout: 300 * time.Millisecond}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Queue: q, Policy: pol,
		Trusted: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}})
	dst, _ := net.ResolveTCPAddr("tcp", addr)

	send := func(t *testing.T, header []byte, wantIP string) {
		conn := dialFrom(t, "127.0.0.1", addr)
		if _, err := conn.Write(header); err != nil {
			t.Fatal(err)
		}
		c := &rawClient{t: t, conn: conn, text: textproto.NewConn(conn)}
		if r := c.read(); r.code != 220 {
			t.Fatalf("greeting: %v", r)
		}
		c.run([]step{{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
		if r := c.data("Subject: x\r\n\r\nhi\r\n"); r.code != 250 {
			t.Fatalf("DATA: %v", r)
		}
		envs, bodies := q.messages()
		if got := envs[len(envs)-1].ClientIP; got != wantIP {
			t.Errorf("envelope client IP %q, want %q", got, wantIP)
		}
		lit := wantIP
		if strings.Contains(lit, ":") {
			lit = "IPv6:" + lit
		}
		if rcv, _ := splitReceived(t, bodies[len(bodies)-1]); !strings.Contains(rcv, "(["+lit+"])") {
			t.Errorf("Received header %q does not name %s", rcv, lit)
		}
	}
	t.Run("v1", func(t *testing.T) {
		send(t, []byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n"), "192.0.2.7")
	})
	t.Run("v2 IPv6", func(t *testing.T) {
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("2001:db8::9"), Port: 40000}, dst)
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		send(t, b, "2001:db8::9")
	})
	t.Run("proxy peer without a header", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", addr)
		io.WriteString(c, "EHLO client.test\r\n")
		if got := expectClosed(t, c); got != "" {
			t.Errorf("server answered %q to a proxy peer without a header", got)
		}
		c = dialFrom(t, "127.0.0.1", addr) // says nothing at all
		if got := expectClosed(t, c); got != "" {
			t.Errorf("server answered %q to a silent proxy peer", got)
		}
	})
	t.Run("other peers cannot claim an address", func(t *testing.T) {
		c := rawFrom(t, "127.0.0.2", addr)
		if r := c.cmd("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25"); r.code/100 != 5 {
			t.Errorf("PROXY line from a non-proxy peer: %v, want a 5xx", r)
		}
		c.run([]step{{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 554, enh: "5.7.1"}})
	})
}

// TestBDATCutOff: a client that disconnects in the middle of its BDAT LAST
// chunk has nothing queued, as one cut off in DATA (go-smtp alone would
// hand the partial chunk on as a complete message).
func TestBDATCutOff(t *testing.T) {
	q := &fakeQueue{}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q})
	for _, last := range []bool{true, false} {
		c := rawFrom(t, "127.0.0.2", addr)
		c.run([]step{{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"}})
		chunk := "Subject: cut\r\n\r\n" + strings.Repeat("a line of the message\r\n", 200)
		cmd := "BDAT " + strconv.Itoa(len(chunk)+1000)
		if last {
			cmd += " LAST"
		}
		if _, err := io.WriteString(c.conn, cmd+"\r\n"+chunk); err != nil {
			t.Fatal(err)
		}
		c.conn.Close()
	}
	// Both sessions hand their message to the queue (at the first BDAT)
	// and the queue reads it until the connection's end: wait for both
	// calls to return, then nothing may have been queued.
	deadline := time.Now().Add(30 * time.Second) // a hang guard only
	for q.endedCalls() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 cut-off messages reached the queue", q.endedCalls())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if envs, _ := q.messages(); len(envs) != 0 {
		t.Fatalf("%d messages cut off in BDAT were queued", len(envs))
	}
}

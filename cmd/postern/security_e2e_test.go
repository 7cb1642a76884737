package main

// End-to-end tests of issue 6 (safe on the open Internet): hostile clients
// against the built binary. Every helper here is prefixed "sec" so that it
// cannot clash with the other end-to-end files.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"postern/relay/relaytest"
)

// secOverride merges YAML into the instance's config file (maps merge key
// by key, anything else replaces), for the keys the harness writes itself.
func secOverride(t testing.TB, in *instance, over string) {
	t.Helper()
	raw, err := os.ReadFile(in.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var base, o map[string]any
	if err := yaml.Unmarshal(raw, &base); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(over), &o); err != nil {
		t.Fatalf("override %q: %v", over, err)
	}
	var merge func(dst, src map[string]any)
	merge = func(dst, src map[string]any) {
		for k, v := range src {
			if sm, ok := v.(map[string]any); ok {
				if dm, ok := dst[k].(map[string]any); ok {
					merge(dm, sm)
					continue
				}
			}
			dst[k] = v
		}
	}
	merge(base, o)
	out, err := yaml.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in.cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// secClient is a line-by-line SMTP client that can bind its source
// address, upgrade to TLS and send raw bytes.
type secClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

var secTLS = &tls.Config{InsecureSkipVerify: true}

// secDial connects from local (an address in 127.0.0.0/8; "" for any) and
// reads the greeting; implicit is TLS from the first byte.
func secDial(t testing.TB, local, addr string, implicit bool) *secClient {
	t.Helper()
	c := secConnect(t, local, addr)
	if implicit {
		c = tls.Client(c, secTLS)
	}
	s := &secClient{t: t, conn: c, r: bufio.NewReader(c)}
	if r := s.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("greeting from %s: %q", addr, r)
	}
	return s
}

func secConnect(t testing.TB, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *secClient) reply() string {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	var all strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading reply: %v (so far %q)", err, all.String())
		}
		all.WriteString(line)
		if len(line) < 4 || line[3] != '-' {
			return all.String()
		}
	}
}

func (s *secClient) cmd(line string) string {
	s.t.Helper()
	if _, err := io.WriteString(s.conn, line+"\r\n"); err != nil {
		s.t.Fatal(err)
	}
	return s.reply()
}

// must sends line and fails unless the reply starts with want.
func (s *secClient) must(line, want string) string {
	s.t.Helper()
	r := s.cmd(line)
	if !strings.HasPrefix(r, want) {
		s.t.Fatalf("%q: got %q, want %q", line, r, want)
	}
	return r
}

func (s *secClient) startTLS() {
	s.t.Helper()
	s.must("STARTTLS", "220 ")
	tc := tls.Client(s.conn, secTLS)
	if err := tc.Handshake(); err != nil {
		s.t.Fatal(err)
	}
	s.conn, s.r = tc, bufio.NewReader(tc)
}

func (s *secClient) auth(user, pass string) string {
	s.t.Helper()
	return s.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
}

// data sends DATA, the raw bytes and the final dot, and returns the reply.
func (s *secClient) data(raw string) string {
	s.t.Helper()
	s.must("DATA", "354 ")
	if _, err := io.WriteString(s.conn, raw+".\r\n"); err != nil {
		s.t.Fatal(err)
	}
	return s.reply()
}

// closed reads until the server closes the connection and returns what
// it still sent; the deadline only guards against a hang.
func (s *secClient) closed() string {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	b, err := io.ReadAll(s.r)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		s.t.Fatalf("connection not closed by the server: %v (read %q)", err, b)
	}
	return string(b)
}

// secSubmitter is an authenticated submission session from local.
func secSubmitter(t testing.TB, in *instance, local, user, pass string) *secClient {
	t.Helper()
	c := secDial(t, local, in.cfg.Submission, false)
	c.must("EHLO client.test", "250")
	c.startTLS()
	c.must("EHLO client.test", "250")
	c.must("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)), "235 ")
	return c
}

const secBody = "From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: sec\r\n" +
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <sec@example.test>\r\n\r\nHello.\r\n"

// TestRelayTrickCorpus: the classic relay tricks, each as MAIL FROM and as
// RCPT TO, against every listener with and without AUTH and from a trusted
// and an untrusted address. None may get through; the source-routed ones
// are the exception RFC 5321 prescribes: go-smtp drops the route and the
// final mailbox is used, so the route itself is never followed (the test
// checks the reply names the final mailbox only).
func TestRelayTrickCorpus(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cfg := w.config()
	cfg.Trusted = []string{"127.0.0.1/32"}
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()

	long := strings.Repeat("a", 65)
	label := strings.Repeat("d", 64)
	corpus := []string{
		// percent hack
		"victim%dest.test@postern.test", "VICTIM%Dest.Test@POSTERN.TEST", `"victim%dest.test"@postern.test`,
		"victim%dest.test", "victim%dest.test%postern.test@postern.test",
		// bang paths
		"dest.test!victim@postern.test", "Dest.Test!Victim@Postern.Test", "dest.test!victim",
		"postern.test!dest.test!victim@postern.test", `"dest.test!victim"@postern.test`,
		// quoted local parts holding @, several @
		`"victim@dest.test"@postern.test`, `"victim@dest.test"`, `"victim\@dest.test"@postern.test`,
		"victim@dest.test@postern.test", "victim@@dest.test", "@victim@dest.test",
		// IP literals and dotted quads
		"victim@[127.0.0.1]", "victim@[IPv6:::1]", "Victim@[IPV6:::1]", "victim@127.0.0.1",
		"victim@[dest.test]", "victim@[127.0.0.1].dest.test",
		// trailing and misplaced dots
		"victim@dest.test.", "victim@dest.test..", "victim@.dest.test", "victim.@dest.test", ".victim@dest.test",
		// UTF-8 and IDNA forms that could pass for another address (a
		// genuine internationalised domain, victim@dést.test, is not a
		// trick: it is accepted as its A-labels, see TestIDNRecipient)
		"vïctim@dest.test", "victim＠dest.test", "victim@dest．test", "victim@dest。test",
		"victim@xn--.test", "victim@ab--cd.test", "victim@DEST.test\u200b",
		// empty and over-long
		"", "victim@", "@dest.test", "victim", "postmaster",
		long + "@dest.test", "victim@" + label + ".test",
		strings.Repeat("a", 64) + "@" + strings.Repeat(strings.Repeat("d", 60)+".", 4) + "test",
	}
	routed := []string{ // source routes: the route is dropped, never followed
		"@postern.test:victim@dest.test", "@postern.test,@relay.test:victim@dest.test", "@POSTERN.TEST:Victim@Dest.Test",
	}

	type client struct {
		name string
		open func(t *testing.T) *secClient
	}
	ehlo := func(c *secClient) *secClient { c.must("EHLO client.test", "250"); return c }
	clients := []client{
		{"submission without AUTH", func(t *testing.T) *secClient {
			c := ehlo(secDial(t, "127.0.0.1", in.cfg.Submission, false))
			c.startTLS()
			return ehlo(c)
		}},
		{"submission with AUTH", func(t *testing.T) *secClient {
			return secSubmitter(t, in, "127.0.0.1", "alice@example.test", "correct horse")
		}},
		{"submissions without AUTH", func(t *testing.T) *secClient {
			return ehlo(secDial(t, "127.0.0.1", in.cfg.Submissions, true))
		}},
		{"submissions with AUTH", func(t *testing.T) *secClient {
			c := ehlo(secDial(t, "127.0.0.1", in.cfg.Submissions, true))
			if r := c.auth("alice@example.test", "correct horse"); !strings.HasPrefix(r, "235 ") {
				t.Fatalf("AUTH: %q", r)
			}
			return c
		}},
		{"relay from a trusted address", func(t *testing.T) *secClient {
			return ehlo(secDial(t, "127.0.0.1", in.cfg.Relay, false))
		}},
		{"relay from an untrusted address", func(t *testing.T) *secClient {
			return ehlo(secDial(t, "127.0.3.2", in.cfg.Relay, false))
		}},
	}
	var mu sync.Mutex
	cases := 0
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			c := cl.open(t)
			n := 0
			refused := func(what, r string) {
				t.Helper()
				n++
				if r[0] != '5' {
					t.Errorf("%s: %q got through", what, r)
				}
			}
			for _, a := range corpus {
				if a == "" {
					continue // MAIL FROM:<> is the null sender, not a trick
				}
				refused("MAIL FROM:<"+a+">", c.cmd("MAIL FROM:<"+a+">"))
			}
			// A valid envelope sender, then every trick as a recipient. An
			// unauthenticated or untrusted client gets no further than
			// MAIL, and each RCPT is refused for that.
			c.cmd("MAIL FROM:<alice@example.test>")
			for _, a := range corpus {
				refused("RCPT TO:<"+a+">", c.cmd("RCPT TO:<"+a+">"))
			}
			for _, a := range routed {
				n++
				r := c.cmd("RCPT TO:<" + a + ">")
				final := a[strings.IndexByte(a, ':')+1:]
				if r[0] == '2' && !strings.Contains(r, "<"+final+">") {
					t.Errorf("RCPT TO:<%s>: %q: the route was kept", a, r)
				}
				if r[0] != '2' && r[0] != '5' {
					t.Errorf("RCPT TO:<%s>: %q", a, r)
				}
			}
			mu.Lock()
			cases += n
			mu.Unlock()
		})
	}
	t.Logf("relay-trick corpus: %d addresses (%d source-routed) on %d listener/client kinds: %d cases ran",
		len(corpus)+len(routed), len(routed), len(clients), cases)
	if want := len(clients) * (2*len(corpus) - 1 + len(routed)); cases != want {
		t.Errorf("%d cases ran, want %d", cases, want)
	}
}

// TestOpenRelayRefusedAtStart: a relay listener reachable from other hosts
// that trusts every address is an open relay; serve and config check refuse
// it and say why.
func TestOpenRelayRefusedAtStart(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"0.0.0.0/0", "::/0"} {
		in := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25,
			Submission: freeAddr(t), Relay: "0.0.0.0:" + strings.Split(freeAddr(t), ":")[1], Trusted: []string{n}})
		out, err := in.postern("", "config", "check")
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(out, "open relay") ||
			!strings.Contains(out, "dangerously_trust_the_whole_internet") {
			t.Errorf("config check with %s: err=%v\n%s", n, err, out)
		}
		// It must exit at once; the context only stops a regression that
		// would serve (on 0.0.0.0) from running on.
		ctx := ctxTimeout(t, 30*time.Second)
		outb, err := exec.CommandContext(ctx, binPath, "serve", "--config", in.cfgPath).CombinedOutput()
		if err == nil || !strings.Contains(string(outb), "open relay") {
			t.Errorf("serve with %s: err=%v\n%s", n, err, outb)
		}
	}
}

// TestHeaderRulesE2E: header From spoofing is refused; Bcc is gone and
// Message-ID and Date are added on the copy the MX receives; 51 Received
// fields are a loop.
func TestHeaderRulesE2E(t *testing.T) {
	t.Parallel()
	in, rcv := aliceToDest(t)

	c := secSubmitter(t, in, "127.0.0.1", "alice@example.test", "correct horse")
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	c.must("RCPT TO:<bob@dest.test>", "250 ")
	spoof := strings.Replace(secBody, "Alice <alice@example.test>", "The CEO <ceo@example.test>", 1)
	if r := c.data(spoof); !strings.HasPrefix(r, "550 5.7.1 ") {
		t.Errorf("header From spoofing: %q, want 550 5.7.1", r)
	}

	const kept = "From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject:  kept\t as is \r\n\r\nBcc: body line\r\n"
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	c.must("RCPT TO:<bob@dest.test>", "250 ")
	c.must("RCPT TO:<hidden@dest.test>", "250 ")
	if r := c.data("Bcc: hidden@dest.test,\r\n  other@dest.test\r\n" + kept); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("message without Date, Message-ID, with Bcc: %q", r)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	got := string(msgs[0].Data)
	head, _, _ := strings.Cut(got, "\r\n\r\n")
	if regexp.MustCompile(`(?im)^bcc:`).MatchString(head) || strings.Contains(got, "hidden@dest.test") {
		t.Errorf("Bcc reached the recipient:\n%s", got)
	}
	if !regexp.MustCompile(`(?m)^Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} `).MatchString(head) ||
		!regexp.MustCompile(`(?m)^Message-ID: <[0-9a-f]+@postern\.test>\r?$`).MatchString(head) {
		t.Errorf("Date or Message-ID not added:\n%s", head)
	}
	if !strings.HasSuffix(got, kept) {
		t.Errorf("the rest is not byte for byte:\n%q", got)
	}

	received := strings.Repeat("Received: from a.test by b.test; Tue, 24 Nov 2026 10:00:00 +0000\r\n", 51)
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	c.must("RCPT TO:<bob@dest.test>", "250 ")
	if r := c.data(received + secBody); !strings.HasPrefix(r, "554 5.4.6 ") {
		t.Errorf("51 Received fields: %q, want 554 5.4.6", r)
	}
}

// secPayloads are the SMTP smuggling end-of-data variants, put inside a
// message's text followed by a forged second transaction.
var secPayloads = []struct {
	name, wire string
	// swallowed: go-smtp's reader drops ".<CR>" at a line start when no
	// LF follows, so postern never sees that CR (see relay/smtpd/newline.go);
	// the message is accepted without it and is still one message.
	swallowed bool
}{
	{"<LF>.<LF>", "\n.\n", false},
	{"<CR>.<CR>", "\r.\r", false},
	{"<CR><LF>.<LF>", "\r\n.\n", false},
	{"<LF>.<CR><LF>", "\n.\r\n", false},
	{"<CR>.<CR><LF>", "\r.\r\n", false},
	{"<CR>.<LF>", "\r.\n", false},
	{"<LF>.<CR>", "\n.\r", false},
	{"<LF>..<LF>", "\n..\n", false},
	{"<CR><LF>.<CR>", "\r\n.\r", true},
}

const secForged = "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n"

// TestSmugglingE2E: every smuggling payload is refused from a client that
// may not send bare line ends; from a trusted one it arrives as one message
// at Postfix's smtp-sink, which reads a bare LF as a line end and so would
// run a second transaction if postern passed one on.
func TestSmugglingE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.3")
	dump := startSmtpSink(t, fmt.Sprintf("127.0.2.3:%d", w.port))

	cfg := w.config()
	cfg.Trusted = []string{"127.0.0.1/32"} // and so bare_newline_exclusions
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()

	accepted := 0
	for _, p := range secPayloads {
		body := secBody + "line one" + p.wire + secForged
		// An authenticated client at 127.0.3.2, outside the exclusions.
		c := secSubmitter(t, in, "127.0.3.2", "alice@example.test", "correct horse")
		c.must("MAIL FROM:<alice@example.test>", "250 ")
		c.must("RCPT TO:<bob@dest.test>", "250 ")
		r := c.data(body)
		switch {
		case p.swallowed && strings.HasPrefix(r, "250 "):
			accepted++
		case !p.swallowed && strings.HasPrefix(r, "521 5.5.2 "):
			if rest := c.closed(); rest != "" {
				t.Errorf("%s: after 521 the server sent %q", p.name, rest)
			}
		default:
			t.Errorf("%s from an untrusted client: %q", p.name, r)
		}

		// The trusted relay client.
		c = secDial(t, "127.0.0.1", in.cfg.Relay, false)
		c.must("EHLO legacy.test", "250")
		c.must("MAIL FROM:<app@example.test>", "250 ")
		c.must("RCPT TO:<bob@dest.test>", "250 ")
		if r := c.data(body); !strings.HasPrefix(r, "250 ") {
			t.Fatalf("%s from a trusted client: %q", p.name, r)
		}
		c.must("QUIT", "221 ")
		accepted++
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if n := len(in.logs.all(func(e logEntry) bool { return e.isMsg("delivered") })); n == accepted {
			break
		} else if n > accepted || time.Now().After(deadline) {
			t.Fatalf("%d deliveries, want %d\n%s", n, accepted, in.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	files, _ := filepath.Glob(filepath.Join(dump, "*"))
	if len(files) != accepted {
		t.Errorf("smtp-sink saw %d transactions, want %d (one per message)", len(files), accepted)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "evil@evil.test") && !strings.Contains(string(b), "line one") {
			t.Errorf("smtp-sink ran a forged transaction:\n%s", b)
		}
		if !strings.Contains(string(b), "forged") || strings.Count(string(b), "X-Mail-Args:") > 1 {
			t.Errorf("a message did not arrive whole:\n%s", b)
		}
	}
	t.Logf("%d smuggling payloads: %d refused from the untrusted client, %d messages delivered as one each",
		len(secPayloads), 2*len(secPayloads)-accepted, accepted)
}

// TestAuthBruteForceE2E: 20 wrong passwords from one address are delayed,
// then refused with 421, one fail2ban-matchable line each; the owner's
// correct password from her usual address works at once.
func TestAuthBruteForceE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	secOverride(t, in, "limits: {auth_max_failures: 2, auth_failure_window: 1h, auth_cooldown: 1h}")
	in.addUser("alice@example.test", "correct horse")
	in.start()

	// Alice's usual address has logged in before.
	secSubmitter(t, in, "127.0.3.3", "alice@example.test", "correct horse").must("QUIT", "221 ")

	var replies []string
	for range 20 {
		c := secDial(t, "127.0.3.2", in.cfg.Submission, false)
		c.must("EHLO attacker.test", "250")
		c.startTLS()
		c.must("EHLO attacker.test", "250")
		r := c.auth("alice@example.test", "guess")
		replies = append(replies, r[:9])
		if strings.HasPrefix(r, "421 ") {
			c.closed()
		}
	}
	want := []string{"535 5.7.8", "535 5.7.8", "535 5.7.8", "535 5.7.8"}
	for range 16 {
		want = append(want, "421 4.7.0")
	}
	if strings.Join(replies, ",") != strings.Join(want, ",") {
		t.Errorf("replies to 20 wrong passwords:\n got %q\nwant %q", replies, want)
	}
	delayed := in.logs.all(func(e logEntry) bool { return e.isMsg("auth delayed") && e.str("client_ip") == "127.0.3.2" })
	// zap writes durations in seconds in JSON.
	if len(delayed) != 2 || fmt.Sprint(delayed[0]["delay"]) != "1" || fmt.Sprint(delayed[1]["delay"]) != "2" {
		t.Errorf("auth delayed lines: %v", delayed)
	}

	c := secSubmitter(t, in, "127.0.3.3", "alice@example.test", "correct horse")
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	for _, e := range in.logs.all(func(e logEntry) bool { return e.str("client_ip") == "127.0.3.3" }) {
		if e.isMsg("auth delayed") || e.isMsg("auth refused") {
			t.Errorf("the owner's address was slowed: %v", e)
		}
	}
	// The README's fail2ban regex matches one line per refusal.
	re := regexp.MustCompile(strings.ReplaceAll(`auth refused.*"client_ip": ?"<HOST>"`, "<HOST>", `(?P<host>[0-9a-fA-F.:]+)`))
	hits := 0
	for _, line := range strings.Split(in.logs.String(), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			hits++
			if m[1] != "127.0.3.2" {
				t.Errorf("fail2ban would ban %s for: %s", m[1], line)
			}
		}
	}
	if hits != 16 {
		t.Errorf("the fail2ban regex matched %d lines, want 16 (one per refusal)", hits)
	}
}

// TestUserRateLimitE2E: over limits.user_messages_per_hour, MAIL gets 450
// 4.7.1 with the wait. That the allowance comes back after the window is
// shown by the relay package's TestUserRateLimits: the config has no key
// for a window shorter than an hour (see the report).
func TestUserRateLimitE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	secOverride(t, in, "limits: {user_messages_per_hour: 2, user_recipients_per_day: 3}")
	in.addUser("alice@example.test", "correct horse")
	in.start()
	c := secSubmitter(t, in, "127.0.0.1", "alice@example.test", "correct horse")
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	c.must("RCPT TO:<a@dest.test>", "250 ")
	c.must("RCPT TO:<b@dest.test>", "250 ")
	c.must("RSET", "250 ")
	c.must("MAIL FROM:<alice@example.test>", "250 ")
	c.must("RCPT TO:<c@dest.test>", "250 ")
	// The code and enhanced code are compared as they are; the text is
	// searched for the wait it announces.
	if r := c.cmd("RCPT TO:<d@dest.test>"); !strings.HasPrefix(r, "450 4.7.1 ") || !regexp.MustCompile(`try again in \d`).MatchString(r) {
		t.Errorf("fourth recipient of the day: %q", r)
	}
	c.must("RSET", "250 ")
	r := c.cmd("MAIL FROM:<alice@example.test>")
	if !strings.HasPrefix(r, "450 4.7.1 ") || !regexp.MustCompile(`try again in (29m5\ds|30m0s)`).MatchString(r) {
		t.Errorf("third message within the hour: %q, want 450 4.7.1 and a wait of about 30 minutes", r)
	}
}

// TestConnectionLimitE2E: per-address connection limits close with 421
// 4.7.0; trusted networks are exempt.
func TestConnectionLimitE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cfg := w.config()
	cfg.Trusted = []string{"127.0.0.1/32"}
	in := newInstance(t, cfg)
	secOverride(t, in, "limits: {ip_max_connections: 2}")
	in.start()
	secDial(t, "127.0.3.2", in.cfg.Relay, false)
	secDial(t, "127.0.3.2", in.cfg.Submission, false) // limits count across listeners
	c := secConnect(t, "127.0.3.2", in.cfg.Relay)
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(line, "421 4.7.0 ") {
		t.Errorf("third connection from one address: %q, want 421 4.7.0", line)
	}
	for range 5 {
		secDial(t, "127.0.0.1", in.cfg.Relay, false) // trusted: not counted
	}
}

// TestIdleConnectionsE2E: 500 connections that never send a byte do not
// keep a new client from submitting, and are closed at the idle limit.
func TestIdleConnectionsE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	// The idle limit counts from the connection: the submission beside
	// the 500 (TLS, AUTH, a message) must fit in it on a loaded machine.
	secOverride(t, in, "timeouts: {command: 5m, data: 5m, idle: 15s}")
	in.addUser("alice@example.test", "correct horse")
	in.start()
	idle := make([]net.Conn, 500)
	for i := range idle {
		idle[i] = secConnect(t, "127.0.3.4", in.cfg.Submission)
	}
	out, err := submit(t, in, "PLAIN", "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test")
	if err != nil || !queuedRE.MatchString(out) {
		t.Fatalf("submission beside 500 idle connections: %v\n%s", err, out)
	}
	var wg sync.WaitGroup
	errs := make(chan string, len(idle))
	for _, c := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(2 * time.Minute)) // guards a hang only
			b, err := io.ReadAll(c)
			if err != nil || !strings.Contains(string(b), "421 4.4.2 ") {
				errs <- fmt.Sprintf("%q, %v", b, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for e := range errs {
		if n++; n <= 3 {
			t.Errorf("idle connection not closed with 421 4.4.2: %s", e)
		}
	}
}

// TestHAProxyE2E runs a real HAProxy in front of postern with PROXY v2:
// the trusted-network check and the Received header see the original
// client, and the proxy's own connections must carry a header.
func TestHAProxyE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	cfg := w.config()
	cfg.Trusted = []string{"127.0.0.5/32"}
	in := newInstance(t, cfg)
	secOverride(t, in, `listen_proxy_protocol_from: ["127.0.0.1"]`)
	in.start()

	front := relaytest.NewHAProxy(t, relaytest.HAProxyOptions{
		Listen: freeAddr(t), Backends: []relaytest.HAProxyBackend{{SMTP: in.cfg.Relay}},
	}).Addr

	// 127.0.0.5 is trusted: through the proxy, postern must know it.
	c := secDial(t, "127.0.0.5", front, false)
	c.must("EHLO legacy.test", "250")
	c.must("MAIL FROM:<app@example.test>", "250 ")
	c.must("RCPT TO:<bob@dest.test>", "250 ")
	c.must("DATA", "354 ")
	io.WriteString(c.conn, secBody+".\r\n")
	if r := c.reply(); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("through HAProxy from 127.0.0.5: %q", r)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if !strings.HasPrefix(string(msgs[0].Data), "Received: from legacy.test ([127.0.0.5])\r\n") {
		t.Errorf("Received header does not name the original client:\n%s", msgs[0].Data)
	}
	// 127.0.0.6 is not: the proxy's address (trusted by no one) must not
	// stand in for it.
	c = secDial(t, "127.0.0.6", front, false)
	c.must("EHLO other.test", "250")
	c.must("MAIL FROM:<app@example.test>", "554 5.7.1 ")
	// The proxy's own address without a header is refused.
	raw := secConnect(t, "127.0.0.1", in.cfg.Relay)
	io.WriteString(raw, "EHLO direct.test\r\n")
	raw.SetReadDeadline(time.Now().Add(60 * time.Second))
	if b, _ := io.ReadAll(raw); len(b) != 0 {
		t.Errorf("a proxy peer without a PROXY header was answered %q", b)
	}
}

// secCert writes a self-signed certificate for postern.test with serial n.
func secCert(t testing.TB, dir string, n int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: "postern.test"},
		DNSNames: []string{"postern.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// secSerial is the serial of the certificate a new STARTTLS session gets.
func secSerial(t testing.TB, addr string) int64 {
	t.Helper()
	c := secDial(t, "", addr, false)
	c.must("EHLO client.test", "250")
	c.startTLS()
	defer c.conn.Close()
	return c.conn.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestTLSReloadE2E: on SIGHUP a bad new certificate keeps the old one (and
// the log says why); a good one is served to new sessions, while an open
// session carries on.
func TestTLSReloadE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	dir := t.TempDir()
	certFile, keyFile := secCert(t, dir, 1)
	in := newInstance(t, w.config())
	secOverride(t, in, fmt.Sprintf("tls: {cert_file: %q, key_file: %q}", certFile, keyFile))
	in.addUser("alice@example.test", "correct horse")
	in.start()

	open := secSubmitter(t, in, "127.0.0.1", "alice@example.test", "correct horse")
	if s := open.conn.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64(); s != 1 {
		t.Fatalf("serial %d at start", s)
	}

	os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"), 0o600)
	in.cmd.Process.Signal(syscall.SIGHUP)
	e := in.waitLog(30*time.Second, func(e logEntry) bool { return e.isMsg("keeping the old TLS certificate") })
	if !strings.Contains(fmt.Sprint(e), certFile) {
		t.Errorf("the log does not say which file failed: %v", e)
	}
	if s := secSerial(t, in.cfg.Submission); s != 1 {
		t.Errorf("after a bad certificate, new sessions get serial %d, want the old 1", s)
	}

	newCert, newKey := secCert(t, t.TempDir(), 2)
	for _, p := range [][2]string{{newCert, certFile}, {newKey, keyFile}} {
		b, _ := os.ReadFile(p[0])
		os.WriteFile(p[1], b, 0o600)
	}
	in.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for secSerial(t, in.cfg.Submission) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the new certificate is not served after SIGHUP\n%s", in.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The session opened before both reloads still works.
	open.must("MAIL FROM:<alice@example.test>", "250 ")
	open.must("RCPT TO:<bob@dest.test>", "250 ")
	if r := open.data(secBody); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("the open session after the reload: %q", r)
	}
	if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1); err != nil {
		t.Fatal(err)
	}
}

// TestIDNRecipient: an internationalised recipient domain is accepted and
// becomes its A-labels (RFC 5891), which is what is looked up and what the
// MX is given: no SMTPUTF8 is needed on the way (RFC 6531 §3.2).
func TestIDNRecipient(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("xn--dst-bma.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, w.config())
	in.start()
	c, err := textproto.Dial("tcp", in.cfg.Relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	step := func(expect int, format string, args ...any) string {
		t.Helper()
		id, err := c.Cmd(format, args...)
		if err != nil {
			t.Fatal(err)
		}
		c.StartResponse(id)
		defer c.EndResponse(id)
		_, msg, err := c.ReadResponse(expect)
		if err != nil {
			t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
		}
		return msg
	}
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	step(250, "EHLO client.test")
	step(250, "MAIL FROM:<app@example.test>")
	step(250, "RCPT TO:<bob@dést.test>")
	step(354, "DATA")
	w2 := c.DotWriter()
	io.WriteString(w2, testMessage)
	w2.Close()
	if _, _, err := c.ReadResponse(250); err != nil {
		t.Fatal(err)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if got := msgs[0].To; len(got) != 1 || got[0] != "bob@xn--dst-bma.test" {
		t.Errorf("the MX was given %q, want bob@xn--dst-bma.test", got)
	}
}

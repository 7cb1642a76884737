package smtpd_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/smtpd"
)

// Scripts shared by the tables below.
var (
	ehloTLS = []step{
		{send: "EHLO client.test", code: 250},
		{send: "STARTTLS", code: 220, enh: "2.0.0"},
		{send: "EHLO client.test", code: 250},
	}
	authAlice = step{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 235, enh: "2.0.0"}
)

func concat(parts ...[]step) []step { return slices.Concat(parts...) }

func TestSubmissionReplies(t *testing.T) {
	// Internal details no reply may show: the user's allow list, the
	// authenticator's error, the password.
	secrets := []string{"alice@example.test", "permission denied", "/etc/postern", "secret"}
	tests := []struct {
		name  string
		steps []step
	}{
		{"AUTH before STARTTLS", []step{
			{send: "EHLO client.test", code: 250},
			{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 538, enh: "5.7.11"},
			// The refused AUTH did not authenticate.
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0"},
		}},
		{"AUTH LOGIN before STARTTLS", []step{
			{send: "EHLO client.test", code: 250},
			{send: "AUTH LOGIN", code: 538, enh: "5.7.11"},
		}},
		{"MAIL before STARTTLS", []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0", text: "Authentication required"},
		}},
		{"MAIL before AUTH", concat(ehloTLS, []step{
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0", text: "Authentication required"},
		})},
		{"PLAIN with initial response", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 235, enh: "2.0.0"},
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		})},
		{"PLAIN without initial response", concat(ehloTLS, []step{
			{send: "AUTH PLAIN", code: 334},
			{send: plainIR("", "alice", "secret"), code: 235, enh: "2.0.0"},
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		})},
		{"PLAIN with authzid equal to user", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("alice", "alice", "secret"), code: 235, enh: "2.0.0"},
		})},
		{"PLAIN with authzid of another user", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("bob", "alice", "secret"), code: 535, enh: "5.7.8", notContain: []string{"bob"}},
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0"},
		})},
		{"LOGIN with initial response", concat(ehloTLS, []step{
			{send: "AUTH LOGIN " + b64("alice"), code: 334, text: b64("Password:")},
			{send: b64("secret"), code: 235, enh: "2.0.0"},
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		})},
		{"LOGIN without initial response", concat(ehloTLS, []step{
			{send: "AUTH LOGIN", code: 334, text: b64("Username:")},
			{send: b64("alice"), code: 334, text: b64("Password:")},
			{send: b64("secret"), code: 235, enh: "2.0.0"},
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		})},
		{"PLAIN wrong password", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "alice", "wrong"), code: 535, enh: "5.7.8", text: "Authentication credentials invalid"},
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0"},
		})},
		{"PLAIN unknown user", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "mallory", "secret"), code: 535, enh: "5.7.8", notContain: []string{"mallory"}},
		})},
		{"LOGIN wrong password", concat(ehloTLS, []step{
			{send: "AUTH LOGIN " + b64("alice"), code: 334},
			{send: b64("wrong"), code: 535, enh: "5.7.8"},
		})},
		{"authenticator failure is temporary and opaque", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "broken", "x"), code: 454, enh: "4.7.0", notContain: secrets},
		})},
		{"no password check slot is a temporary failure, and AUTH may be tried again", concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "busy", "x"), code: 454, enh: "4.7.0", text: "Temporary authentication failure"},
			{send: "AUTH LOGIN " + b64("busy"), code: 334},
			{send: b64("x"), code: 454, enh: "4.7.0"},
			authAlice,
		})},
		{"unknown mechanism", concat(ehloTLS, []step{
			{send: "AUTH CRAM-MD5", code: 504, enh: "5.5.4"},
		})},
		{"second AUTH", concat(ehloTLS, []step{
			authAlice,
			{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 503, enh: "5.5.1"},
		})},
		{"forbidden sender", concat(ehloTLS, []step{
			authAlice,
			{send: "MAIL FROM:<bob@example.test>", code: 553, enh: "5.7.1", text: "Sender address not allowed", notContain: secrets},
		})},
		{"sender case is folded for the allow list", concat(ehloTLS, []step{
			authAlice,
			{send: "MAIL FROM:<Alice@EXAMPLE.Test>", code: 250, enh: "2.0.0"},
		})},
		{"bad sender syntax is not a policy refusal", concat(ehloTLS, []step{
			authAlice,
			{send: "MAIL FROM:<alice..x@example.test>", code: 501, enh: "5.1.7"},
		})},
		{"sender refused, then allowed", concat(ehloTLS, []step{
			authAlice,
			{send: "MAIL FROM:<bob@example.test>", code: 553, enh: "5.7.1"},
			{send: "RCPT TO:<carol@example.org>", code: 502, enh: "5.5.1"}, // go-smtp: no MAIL yet
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<carol@example.org>", code: 250, enh: "2.0.0"},
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr := startServer(t, submissionOpts(t, &fakeQueue{}))
			dialRaw(t, addr, false).run(tt.steps)
		})
	}
}

func TestSubmissionAdvertisesAuthOnlyOverTLS(t *testing.T) {
	addr := startServer(t, submissionOpts(t, &fakeQueue{}))
	c := dialRaw(t, addr, false)

	r := c.cmd("EHLO client.test")
	if !slices.Contains(r.lines, "STARTTLS") {
		t.Errorf("EHLO before TLS does not offer STARTTLS: %q", r.lines)
	}
	for _, l := range r.lines {
		if strings.HasPrefix(l, "AUTH") {
			t.Errorf("EHLO before TLS advertises %q", l)
		}
	}

	c.run([]step{{send: "STARTTLS", code: 220, enh: "2.0.0"}})
	r = c.cmd("EHLO client.test")
	if !slices.Contains(r.lines, "AUTH PLAIN LOGIN") {
		t.Errorf("EHLO over TLS lacks AUTH PLAIN LOGIN: %q", r.lines)
	}
	if slices.Contains(r.lines, "STARTTLS") {
		t.Errorf("EHLO over TLS still offers STARTTLS: %q", r.lines)
	}
}

// TestSubmissionGoSMTPClient runs the flows through go-smtp's client, as a
// real mail client would, for both SASL mechanisms.
func TestSubmissionGoSMTPClient(t *testing.T) {
	for _, tt := range []struct {
		name string
		sasl sasl.Client
	}{
		{"PLAIN", sasl.NewPlainClient("", "alice", "secret")},
		{"LOGIN", sasl.NewLoginClient("alice", "secret")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := &fakeQueue{}
			addr := startServer(t, submissionOpts(t, q))
			c, err := smtp.DialStartTLS(addr, clientTLS())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if err := c.Auth(tt.sasl); err != nil {
				t.Fatalf("Auth: %v", err)
			}
			if err := c.SendMail("alice@example.test", []string{"bob@example.org"}, strings.NewReader("Subject: hi\r\n\r\nhello\r\n")); err != nil {
				t.Fatalf("SendMail: %v", err)
			}
			if err := c.Quit(); err != nil {
				t.Errorf("Quit: %v", err)
			}
			envs, _ := q.messages()
			want := []queue.Envelope{{From: "alice@example.test", Rcpts: []string{"bob@example.org"}, User: "alice", ClientIP: "127.0.0.1", Listener: "submission"}}
			if !envelopesEqual(envs, want) {
				t.Errorf("enqueued %+v, want %+v", envs, want)
			}
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		addr := startServer(t, submissionOpts(t, &fakeQueue{}))
		c, err := smtp.DialStartTLS(addr, clientTLS())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		err = c.Auth(sasl.NewPlainClient("", "alice", "nope"))
		wantSMTPError(t, err, 535, smtp.EnhancedCode{5, 7, 8})
		err = c.Mail("alice@example.test", nil)
		wantSMTPError(t, err, 530, smtp.EnhancedCode{5, 7, 0})
	})
}

func wantSMTPError(t *testing.T, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v (%T), want SMTP error %d %v", err, err, code, enh)
	}
	if se.Code != code || se.EnhancedCode != enh {
		t.Errorf("got %d %v %q, want %d %v", se.Code, se.EnhancedCode, se.Message, code, enh)
	}
}

func envelopesEqual(a, b []queue.Envelope) bool {
	return slices.EqualFunc(a, b, func(x, y queue.Envelope) bool {
		return x.From == y.From && slices.Equal(x.Rcpts, y.Rcpts) && x.User == y.User &&
			x.ClientIP == y.ClientIP && x.Listener == y.Listener
	})
}

func TestSubmissions(t *testing.T) {
	opts := submissionOpts(t, &fakeQueue{})
	opts.Kind = smtpd.Submissions

	t.Run("raw", func(t *testing.T) {
		addr := startServer(t, opts)
		c := dialRaw(t, addr, true)
		r := c.cmd("EHLO client.test")
		if !slices.Contains(r.lines, "AUTH PLAIN LOGIN") {
			t.Errorf("EHLO on implicit TLS lacks AUTH PLAIN LOGIN: %q", r.lines)
		}
		if slices.Contains(r.lines, "STARTTLS") {
			t.Errorf("EHLO on implicit TLS offers STARTTLS: %q", r.lines)
		}
		c.run([]step{
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0"},
			{send: "STARTTLS", code: 502, enh: "5.5.1"},
			{send: "AUTH PLAIN " + plainIR("", "alice", "wrong"), code: 535, enh: "5.7.8"},
			authAlice,
			{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		})
	})

	t.Run("go-smtp client", func(t *testing.T) {
		q := &fakeQueue{}
		opts := opts
		opts.Queue = q
		addr := startServer(t, opts)
		c, err := smtp.DialTLS(addr, clientTLS())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		wantSMTPError(t, c.Mail("alice@example.test", nil), 530, smtp.EnhancedCode{5, 7, 0})
		if err := c.Auth(sasl.NewLoginClient("alice", "secret")); err != nil {
			t.Fatalf("Auth: %v", err)
		}
		if err := c.SendMail("alice@example.test", []string{"bob@example.org"}, strings.NewReader("x\r\n")); err != nil {
			t.Fatalf("SendMail: %v", err)
		}
		envs, _ := q.messages()
		if len(envs) != 1 || envs[0].Listener != "submissions" || envs[0].User != "alice" {
			t.Errorf("enqueued %+v", envs)
		}
	})
}

func TestTrustedRelay(t *testing.T) {
	tests := []struct {
		name    string
		trusted []string
		tls     bool
		steps   []step
	}{
		{"trusted client sends without AUTH", []string{"127.0.0.0/8"}, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
		}},
		{"single trusted host", []string{"127.0.0.1/32"}, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
		}},
		{"untrusted client", []string{"10.0.0.0/8"}, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@example.test>", code: 554, enh: "5.7.1", text: "Relay access denied"},
			{send: "RCPT TO:<bob@example.org>", code: 502, enh: "5.5.1"}, // go-smtp: no MAIL
		}},
		{"no trusted networks", nil, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<>", code: 554, enh: "5.7.1"},
		}},
		{"AUTH is not offered", []string{"127.0.0.0/8"}, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 502, enh: "5.5.1"},
		}},
		{"AUTH is not offered over TLS either", []string{"127.0.0.0/8"}, true, concat(ehloTLS, []step{
			{send: "AUTH LOGIN", code: 502, enh: "5.5.1"},
			{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		})},
		{"bad sender syntax", []string{"127.0.0.0/8"}, false, []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<app@localhost>", code: 501, enh: "5.1.7"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := smtpd.Options{Kind: smtpd.TrustedRelay, Queue: &fakeQueue{}}
			for _, p := range tt.trusted {
				opts.Trusted = append(opts.Trusted, mustPrefix(t, p))
			}
			if tt.tls {
				opts.TLS = testTLS(t)
			}
			addr := startServer(t, opts)
			c := dialRaw(t, addr, false)
			r := c.cmd("EHLO client.test")
			for _, l := range r.lines {
				if strings.HasPrefix(l, "AUTH") {
					t.Errorf("relay listener advertises %q", l)
				}
			}
			c.run(tt.steps)
		})
	}
}

// TestData covers the replies to a transaction and what reaches the queue.
func TestData(t *testing.T) {
	const msg = "Subject: hi\r\n\r\nhello\r\n"
	tests := []struct {
		name    string
		queue   *fakeQueue
		signer  smtpd.Signer
		maxSize int64
		maxRcpt int
		rcpts   []string
		body    string
		want    step // the reply to the final dot; send is unused
		queued  bool
	}{
		{
			name: "accepted", queue: &fakeQueue{}, rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 250, enh: "2.0.0", text: "OK: queued as Q1"}, queued: true,
		},
		{
			name: "over size", queue: &fakeQueue{}, maxSize: 64, rcpts: []string{"bob@example.org"},
			body: msg + strings.Repeat("0123456789abcdef\r\n", 10),
			want: step{code: 552, enh: "5.3.4"},
		},
		{
			name: "disk full", queue: &fakeQueue{err: fmt.Errorf("spool: writing /var/spool/postern/msg/1: %w", syscall.ENOSPC)},
			rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 452, enh: "4.3.1", notContain: []string{"spool", "space"}},
		},
		{
			name: "read-only file system", queue: &fakeQueue{err: fmt.Errorf("spool: %w", syscall.EROFS)},
			rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 452, enh: "4.3.1", notContain: []string{"spool", "read-only"}},
		},
		{
			name: "quota", queue: &fakeQueue{err: fmt.Errorf("spool: %w", syscall.EDQUOT)},
			rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 452, enh: "4.3.1", notContain: []string{"spool", "quota"}},
		},
		{
			name: "other queue error", queue: &fakeQueue{err: errors.New("bbolt: page 7 already freed in /var/lib/postern/queue.db")},
			rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 451, enh: "4.3.0", notContain: []string{"bbolt", "freed", "queue.db"}},
		},
		{
			name: "signer failure", queue: &fakeQueue{}, signer: failingSigner{},
			rcpts: []string{"bob@example.org"}, body: msg,
			want: step{code: 451, enh: "4.3.0", notContain: []string{"dkim", "key", "/etc"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := smtpd.Options{
				Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: tt.queue,
				MaxMessageBytes: tt.maxSize, MaxRecipients: tt.maxRcpt,
			}
			if tt.signer != nil {
				opts.Signer = signerFunc(tt.signer)
			}
			addr := startServer(t, opts)
			c := dialRaw(t, addr, false)
			c.run([]step{
				{send: "EHLO client.test", code: 250},
				{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
			})
			for _, r := range tt.rcpts {
				c.run([]step{{send: "RCPT TO:<" + r + ">", code: 250, enh: "2.0.0"}})
			}
			r := c.data(tt.body)
			if r.code != tt.want.code || r.enh != tt.want.enh {
				t.Fatalf("DATA: got %v, want %d %s", r, tt.want.code, tt.want.enh)
			}
			if tt.want.text != "" && r.text != tt.want.text {
				t.Errorf("DATA: text %q, want %q", r.text, tt.want.text)
			}
			for _, bad := range tt.want.notContain {
				if strings.Contains(strings.ToLower(r.text), bad) {
					t.Errorf("DATA reply %q contains %q", r.text, bad)
				}
			}
			envs, _ := tt.queue.messages()
			if got := len(envs) == 1; got != tt.queued {
				t.Errorf("%d messages enqueued, want queued=%v", len(envs), tt.queued)
			}
			// The session is still usable after a failed transaction.
			c.run([]step{{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"}})
		})
	}
}

func TestDataBody(t *testing.T) {
	q := &fakeQueue{}
	sig := &fixedSigner{}
	opts := submissionOpts(t, q)
	opts.Signer = signerFunc(sig)
	addr := startServer(t, opts)
	c := dialRaw(t, addr, false)
	c.run(concat(ehloTLS, []step{
		authAlice,
		{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<Bob@Example.ORG>", code: 250, enh: "2.0.0"},
	}))
	// Bare LF, bare CR and a dot-stuffed line on the wire.
	r := c.data("Subject: hi\r\n\r\nline1\nline2\rline3\r\n..dot\r\n")
	if r.code != 250 || r.enh != "2.0.0" || r.text != "OK: queued as Q1" {
		t.Fatalf("DATA: %v", r)
	}

	const wantData = "Subject: hi\r\n\r\nline1\r\nline2\r\nline3\r\n.dot\r\n"
	envs, bodies := q.messages()
	want := []queue.Envelope{{From: "alice@example.test", Rcpts: []string{"Bob@example.org"}, User: "alice", ClientIP: "127.0.0.1", Listener: "submission"}}
	if !envelopesEqual(envs, want) {
		t.Errorf("envelopes %+v, want %+v", envs, want)
	}
	received, rest := splitReceived(t, bodies[0])
	if got := string(rest); got != sigHeader+wantData {
		t.Errorf("body after Received:\n%q\nwant\n%q", got, sigHeader+wantData)
	}
	if !strings.Contains(received, "with ESMTPSA") || !strings.Contains(received, "for <Bob@example.org>") {
		t.Errorf("Received field %q", received)
	}
	// The signature covers the message as it will be sent, without the
	// Received field added here.
	if len(sig.signed) != 1 || string(sig.signed[0]) != wantData {
		t.Errorf("signer saw %q, want %q", sig.signed, wantData)
	}

	// A second transaction on the same session starts from scratch.
	c.run([]step{
		{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<carol@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<dave@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("x\r\n"); r.code != 250 || r.text != "OK: queued as Q2" {
		t.Fatalf("second DATA: %v", r)
	}
	envs, _ = q.messages()
	if got := envs[1].Rcpts; !slices.Equal(got, []string{"carol@example.org", "dave@example.org"}) {
		t.Errorf("second envelope recipients %q", got)
	}
}

func TestDataNilSigner(t *testing.T) {
	q := &fakeQueue{}
	addr := startServer(t, smtpd.Options{
		Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q,
		Signer: func() smtpd.Signer { return nil }, // no key for this domain
	})
	c := dialRaw(t, addr, false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("Subject: s\r\n\r\nx\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	_, bodies := q.messages()
	if _, rest := splitReceived(t, bodies[0]); string(rest) != "Subject: s\r\n\r\nx\r\n" {
		t.Errorf("message after Received %q, want %q", rest, "Subject: s\r\n\r\nx\r\n")
	}
}

// relayReadyForData starts a trusted relay listener over q and returns a
// client that has sent MAIL and one RCPT.
func relayReadyForData(t *testing.T, q *fakeQueue) *rawClient {
	t.Helper()
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q})
	c := dialRaw(t, addr, false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	return c
}

// TestDataLineTooLong: a line longer than go-smtp reads (2,000 octets) is
// refused for good, 554 5.6.0, not with a 451 that has the client send the
// same message forever; nothing is queued.
func TestDataLineTooLong(t *testing.T) {
	q := &fakeQueue{}
	c := relayReadyForData(t, q)
	r := c.data("Subject: s\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n")
	if r.code != 554 || r.enh != "5.6.0" {
		t.Errorf("DATA with a 3,000-octet line: %v, want 554 5.6.0", r)
	}
	if _, bodies := q.messages(); len(bodies) != 0 {
		t.Errorf("%d messages queued", len(bodies))
	}
}

// TestDataHeaderBoundary: what follows a line that is neither a header
// field nor the empty line is body, for postern and, through the empty line
// postern puts there, for every reader after it: a message without a header
// at all, and one that tries to hide a second From: and a Bcc: from the
// submission checks below such a line (the second From: would be rejected,
// the Bcc: removed, if they were header fields).
func TestDataHeaderBoundary(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"no header", "x\r\n", "\r\nx\r\n"},
		{"a line that is not a field", "From: app@example.test\r\nnot a field\r\nFrom: ceo@example.test\r\nBcc: s@x.test\r\n\r\nbody\r\n",
			"From: app@example.test\r\n\r\nnot a field\r\nFrom: ceo@example.test\r\nBcc: s@x.test\r\n\r\nbody\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := &fakeQueue{}
			c := relayReadyForData(t, q)
			if r := c.data(tt.in); r.code != 250 {
				t.Fatalf("DATA: %v", r)
			}
			_, bodies := q.messages()
			if _, rest := splitReceived(t, bodies[0]); string(rest) != tt.want {
				t.Errorf("message after Received %q, want %q", rest, tt.want)
			}
		})
	}
}

func TestEnvelopeReplies(t *testing.T) {
	pre := []step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"too many recipients", concat(pre, []step{
			{send: "RCPT TO:<r1@example.org>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<r2@example.org>", code: 250, enh: "2.0.0"},
			{send: "RCPT TO:<r3@example.org>", code: 452, enh: "4.5.3"},
		})},
		{"recipient single-label domain", concat(pre, []step{{send: "RCPT TO:<bob@localhost>", code: 501, enh: "5.1.3"}})},
		{"recipient double dot", concat(pre, []step{{send: "RCPT TO:<bob..x@example.org>", code: 501, enh: "5.1.3"}})},
		{"recipient quoted with @", concat(pre, []step{{send: `RCPT TO:<"a@b"@example.org>`, code: 501, enh: "5.1.3"}})},
		{"recipient address literal", concat(pre, []step{{send: "RCPT TO:<bob@[192.0.2.1]>", code: 501, enh: "5.1.3"}})},
		{"recipient trailing dot", concat(pre, []step{{send: "RCPT TO:<bob@example.org.>", code: 501, enh: "5.1.3"}})},
		{"recipient UTF-8", concat(pre, []step{{send: "RCPT TO:<bøb@example.org>", code: 501, enh: "5.1.3"}})},
		{"recipient with source route", concat(pre, []step{{send: "RCPT TO:<@hop.example:bob@example.org>", code: 250, enh: "2.0.0"}})},
		{"sender double dot", []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<a..b@example.test>", code: 501, enh: "5.1.7"},
		}},
		{"sender address literal", []step{
			{send: "EHLO client.test", code: 250},
			{send: "MAIL FROM:<a@[127.0.0.1]>", code: 501, enh: "5.1.7"},
		}},
		// go-smtp answers these itself before the session sees them, with
		// 502 rather than the 503 "bad sequence" of RFC 5321 §4.1.4; the
		// session's own 503 is unreachable. See the report.
		{"RCPT before MAIL", []step{
			{send: "EHLO client.test", code: 250},
			{send: "RCPT TO:<bob@example.org>", code: 502, enh: "5.5.1"},
		}},
		{"DATA before RCPT", concat(pre, []step{{send: "DATA", code: 502, enh: "5.5.1"}})},
		{"MAIL before EHLO", []step{{send: "MAIL FROM:<app@example.test>", code: 502, enh: "5.5.1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: &fakeQueue{}, MaxRecipients: 2})
			dialRaw(t, addr, false).run(tt.steps)
		})
	}
}

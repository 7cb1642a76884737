package smtpd_test

import (
	"slices"
	"testing"

	"postern/relay/smtpd"
)

// TestREQUIRETLS: the relay listener with TLS advertises REQUIRETLS only
// after STARTTLS (RFC 8689 §4), refuses the parameter in plain text, and
// keeps it with the message; a "TLS-Required: No" field is kept as the
// sender's request, and ignored when REQUIRETLS was given (§5).
func TestREQUIRETLS(t *testing.T) {
	q := &fakeQueue{}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q, TLS: testTLS(t)})
	c := dialRaw(t, addr, false)
	if r := c.cmd("EHLO client.test"); slices.Contains(r.lines, "REQUIRETLS") {
		t.Errorf("REQUIRETLS advertised before TLS: %q", r.lines)
	}
	c.run([]step{{send: "MAIL FROM:<app@example.test> REQUIRETLS", code: 530, enh: "5.7.10"}})
	c.run([]step{{send: "STARTTLS", code: 220, enh: "2.0.0"}})
	if r := c.cmd("EHLO client.test"); !slices.Contains(r.lines, "REQUIRETLS") {
		t.Errorf("REQUIRETLS not advertised over TLS: %q", r.lines)
	}
	c.run([]step{
		{send: "MAIL FROM:<app@example.test> REQUIRETLS", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("TLS-Required: No\r\nSubject: a\r\n\r\nbody\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	c.run([]step{
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("tls-required:  no \r\nSubject: b\r\n\r\nbody\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	c.run([]step{
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("TLS-Required: yes please\r\nSubject: c\r\n\r\nbody\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	envs, _ := q.messages()
	if len(envs) != 3 {
		t.Fatalf("%d messages queued, want 3", len(envs))
	}
	for i, want := range [][2]bool{{true, false}, {false, true}, {false, false}} {
		if got := [2]bool{envs[i].RequireTLS, envs[i].TLSOptional}; got != want {
			t.Errorf("message %d: RequireTLS, TLSOptional = %v, want %v", i+1, got, want)
		}
	}

	// A listener without TLS neither advertises nor takes it.
	plain := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q})
	c = dialRaw(t, plain, false)
	if r := c.cmd("EHLO client.test"); slices.Contains(r.lines, "REQUIRETLS") {
		t.Errorf("REQUIRETLS advertised without TLS: %q", r.lines)
	}
	c.run([]step{{send: "MAIL FROM:<app@example.test> REQUIRETLS", code: 504, enh: "5.5.4"}})
}

package outbound_test

import (
	"context"
	"strings"
	"testing"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

const eightBit = "From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n"

// TestDowngrade: RFC 6152 §3. To a server without 8BITMIME an 8-bit
// message arrives converted (quoted-printable, and no BODY=8BITMIME); a
// 7-bit one byte for byte; a DKIM-signed 8-bit one and one whose 8-bit
// header cannot be converted are refused with 5.6.3 before MAIL, and go to
// another MX that offers 8BITMIME as they are.
func TestDowngrade(t *testing.T) {
	e := newEnv(t)
	seven := e.receiver("127.0.0.2", relaytest.WithoutExtensions("8BITMIME"))
	e.mx("seven.test", 10, "mx.seven.test", "127.0.0.2")
	eight := e.receiver("127.0.0.3")
	e.mx("mixed.test", 10, "mx1.mixed.test", "127.0.0.2")
	e.mx("mixed.test", 20, "mx2.mixed.test", "127.0.0.3")
	m := e.deliverer(outbound.Options{})
	ctx := context.Background()
	deliver := func(domain, text string) []queue.Result {
		d := e.delivery(domain, "b@"+domain)
		d.Body = &body{data: []byte(text)}
		return m.Deliver(ctx, d)
	}

	check(t, deliver("seven.test", eightBit), want{queue.Delivered, "250 ", "mx.seven.test"})
	got := seven.Messages()[0]
	if !strings.Contains(string(got.Data), "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n") ||
		strings.ContainsFunc(string(got.Data), func(r rune) bool { return r >= 0x80 }) {
		t.Errorf("arrived as %q", got.Data)
	}
	if got.Opts.Body != "" {
		t.Errorf("BODY=%s declared to a server without 8BITMIME", got.Opts.Body)
	}

	check(t, deliver("seven.test", msgText), want{queue.Delivered, "250 ", "mx.seven.test"})
	if got := seven.Messages()[1]; string(got.Data) != msgText {
		t.Errorf("a 7-bit message changed: %q", got.Data)
	}

	signed := "DKIM-Signature: v=1; a=ed25519-sha256; d=sender.test; s=s; b=x\r\n" + eightBit
	check(t, deliver("seven.test", signed), want{queue.Permanent, "554 5.6.3", "mx.seven.test"})
	header8 := "Subject: caf\xc3\xa9\r\n\r\nbody\r\n"
	check(t, deliver("seven.test", header8), want{queue.Permanent, "554 5.6.3", "mx.seven.test"})
	if n := len(seven.Messages()); n != 2 {
		t.Errorf("%d messages at the 7-bit server, want 2", n)
	}

	check(t, deliver("mixed.test", signed), want{queue.Delivered, "250 ", "mx2.mixed.test"})
	if got := eight.Messages()[0]; string(got.Data) != signed {
		t.Errorf("the 8BITMIME server got %q", got.Data)
	}
}

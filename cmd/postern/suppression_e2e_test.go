package main

// End-to-end tests of issue 15's suppression list: a permanent "no such
// user" from a remote suppresses the address, the next message to it is
// refused at RCPT, and `postern suppression` manages the list through the
// admin API.

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestSuppressionAfterBounce: dest.test's MX says 550 5.1.1 for
// nobody@dest.test. After that failure (seen as the bounce reaching
// sender.test), nobody@dest.test is on the relay listener's suppression
// list; a second message to it and to a live address is refused at RCPT
// for nobody alone and delivered to the other; `postern suppression del`
// lets the address through again, and `add` suppresses it by hand.
func TestSuppressionAfterBounce(t *testing.T) {
	t.Parallel()
	in, dest, senderMX := startBounceWorld(t, "")

	if out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@sender.test", "--to", "nobody@dest.test", "--data", swaksData); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if _, err := senderMX.WaitMessages(ctxTimeout(t, 30*time.Second), 1); err != nil {
		t.Fatalf("no bounce reached the sender's MX: %v\n%s", err, in.logs.String())
	}

	out, err := in.postern("", "suppression", "list")
	if err != nil {
		t.Fatalf("suppression list: %v\n%s", err, out)
	}
	if !strings.Contains(out, "nobody@dest.test") || !strings.Contains(out, "bounce") ||
		!strings.Contains(out, "550 5.1.1 <nobody@dest.test>: no such user here") {
		t.Errorf("suppression list after the bounce:\n%s", out)
	}
	out, err = in.postern("", "suppression", "list", "--json", "--user", "")
	var ss []apiSuppression
	if err != nil || json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 1 || ss[0].User != "" || ss[0].Reason != "bounce" {
		t.Errorf("suppression list --json --user '': %v\n%s", err, out)
	}
	if out, _ := in.postern("", "suppression", "list", "--user", "alice"); !strings.Contains(out, "No suppressed addresses.") {
		t.Errorf("alice's list is not empty:\n%s", out)
	}

	refused := pySMTP(t, in.cfg.Relay, "app@sender.test", []string{"nobody@dest.test", "bob@dest.test"}, nil, nil)
	if got := refused["nobody@dest.test"]; !strings.HasPrefix(got, "550 5.1.1 Recipient address suppressed since ") {
		t.Errorf("RCPT nobody@dest.test: %q, want 550 5.1.1 ...suppressed...", got)
	}
	if _, ok := refused["bob@dest.test"]; ok || len(refused) != 1 {
		t.Errorf("refused %q, want nobody@dest.test alone", refused)
	}
	msgs, err := dest.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("the message did not reach bob: %v\n%s", err, in.logs.String())
	}
	if len(msgs[0].To) != 1 || msgs[0].To[0] != "bob@dest.test" {
		t.Errorf("dest.test got the message for %q, want bob@dest.test alone", msgs[0].To)
	}

	if out, err := in.postern("", "suppression", "del", "nobody@dest.test"); err != nil || !strings.Contains(out, "no longer suppressed") {
		t.Fatalf("suppression del: %v\n%s", err, out)
	}
	if out, err := in.postern("", "suppression", "del", "nobody@dest.test"); err == nil || !strings.Contains(out, "is not suppressed") {
		t.Errorf("second suppression del: %v\n%s", err, out)
	}
	if refused := pySMTP(t, in.cfg.Relay, "app@sender.test", []string{"nobody@dest.test"}, nil, nil); len(refused) != 0 {
		t.Errorf("after del, refused %q", refused)
	}

	if out, err := in.postern("", "suppression", "add", "Carol@Dest.Test"); err != nil {
		t.Fatalf("suppression add: %v\n%s", err, out)
	}
	refused = pySMTP(t, in.cfg.Relay, "app@sender.test", []string{"carol@dest.test"}, nil, nil)
	if got := refused["carol@dest.test"]; !strings.Contains(got, "suppressed since") || !strings.Contains(got, "by an operator") {
		t.Errorf("RCPT carol@dest.test after add: %q", got)
	}
	if out, err := in.postern("", "suppression", "add", "not-an-address"); err == nil || !strings.Contains(out, "bad address") {
		t.Errorf("suppression add of a bad address: %v\n%s", err, out)
	}
}

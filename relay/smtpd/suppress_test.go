package smtpd_test

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/queue"
	qreply "postern/queue/reply"
	"postern/relay/smtpd"
)

// fakeSuppressions holds suppressions by user and lower-case address, and
// records every lookup. err, when set, is every lookup's answer.
type fakeSuppressions struct {
	err  error
	sups map[[2]string]*queue.Suppression

	mu     sync.Mutex
	lookup [][2]string
}

var _ smtpd.Suppressions = (*fakeSuppressions)(nil)

func (f *fakeSuppressions) Suppressed(user, addr string) (*queue.Suppression, error) {
	f.mu.Lock()
	f.lookup = append(f.lookup, [2]string{user, addr})
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.sups[[2]string{user, strings.ToLower(addr)}], nil
}

var suppressedSince = time.Date(2026, 11, 30, 17, 4, 5, 0, time.UTC)

func testSuppressions() *fakeSuppressions {
	return &fakeSuppressions{sups: map[[2]string]*queue.Suppression{
		// Mail without AUTH (the relay listener) is user "".
		{"", "gone@example.org"}: {Address: "gone@example.org", Reason: queue.SuppressBounce, Created: suppressedSince,
			Reply: qreply.Reply{Code: 550, Enhanced: qreply.MustEnhanced("5.1.1"), Text: "mailbox db7.internal.example.org: no such user"}},
		{"", "spam@example.org"}:      {Address: "spam@example.org", Reason: queue.SuppressComplaint, Created: suppressedSince},
		{"alice", "gone@example.org"}: {Address: "gone@example.org", Reason: queue.SuppressManual, Created: suppressedSince},
	}}
}

// TestRcptSuppressed: a suppressed recipient is refused at RCPT with 550
// 5.1.1 and a text that says since when and why, nothing internal; the
// other recipients of the transaction are accepted and queued, and the
// message goes to them alone.
func TestRcptSuppressed(t *testing.T) {
	q, sups := &fakeQueue{}, testSuppressions()
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: q, Suppressions: sups})
	c := dialRaw(t, addr, false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<Gone@Example.ORG>", code: 550, enh: "5.1.1",
			text:       "Recipient address suppressed since 2026-11-30 after a permanent failure (5.1.1): mail to it is not sent",
			notContain: []string{"db7", "no such user"}},
		{send: "RCPT TO:<spam@example.org>", code: 550, enh: "5.1.1",
			text: "Recipient address suppressed since 2026-11-30 after a spam complaint: mail to it is not sent"},
		{send: "RCPT TO:<carol@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("Subject: s\r\n\r\nx\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	envs, _ := q.messages()
	if len(envs) != 1 || !slices.Equal(envs[0].Rcpts, []string{"bob@example.org", "carol@example.org"}) {
		t.Errorf("queued %+v, want one message to bob and carol", envs)
	}
}

// TestRcptSuppressedPerUser: the list is the sending user's: what the
// relay listener's mail (user "") has suppressed, alice's mail still
// reaches, and the other way round.
func TestRcptSuppressedPerUser(t *testing.T) {
	sups := testSuppressions()
	sups.sups[[2]string{"alice", "spam@example.org"}] = nil
	opts := submissionOpts(t, &fakeQueue{})
	opts.Suppressions = sups
	c := dialRaw(t, startServer(t, opts), false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "STARTTLS", code: 220, enh: "2.0.0"},
		{send: "EHLO client.test", code: 250},
		{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 235, enh: "2.0.0"},
		{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<spam@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<gone@example.org>", code: 550, enh: "5.1.1",
			text: "Recipient address suppressed since 2026-11-30 by an operator: mail to it is not sent"},
	})
	sups.mu.Lock()
	defer sups.mu.Unlock()
	if want := [][2]string{{"alice", "spam@example.org"}, {"alice", "gone@example.org"}}; !slices.Equal(sups.lookup, want) {
		t.Errorf("lookups %q, want %q", sups.lookup, want)
	}
}

// TestRcptSuppressionsUnavailable: when the list cannot be read, the
// recipient is neither refused for good nor let through: 451 4.3.0, with
// nothing of the cause in the reply.
func TestRcptSuppressionsUnavailable(t *testing.T) {
	sups := &fakeSuppressions{err: errors.New("queue: database /var/lib/postern/queue.db closed")}
	addr := startServer(t, smtpd.Options{Kind: smtpd.TrustedRelay, Trusted: loopback, Queue: &fakeQueue{}, Suppressions: sups})
	c := dialRaw(t, addr, false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 451, enh: "4.3.0", notContain: []string{"queue.db", "closed"}},
	})
}

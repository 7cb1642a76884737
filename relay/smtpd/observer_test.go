package smtpd_test

import (
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"

	"postern/relay/smtpd"
)

// recorder is an Observer that records every call.
type recorder struct {
	mu           sync.Mutex
	replies      []int
	authFailures int
	accepted     []string // "listener size"
}

var _ smtpd.Observer = (*recorder)(nil)

func (r *recorder) Reply(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replies = append(r.replies, code)
}

func (r *recorder) AuthFailure() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.authFailures++
}

func (r *recorder) Accepted(listener string, size int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accepted = append(r.accepted, fmt.Sprintf("%s %d", listener, size))
}

// TestObserver checks the contract in Observer's documentation: every
// reply the session decides to AUTH, MAIL, RCPT and DATA is seen once
// (go-smtp's own are not), each failed authentication is counted, and each
// accepted message is reported with the size enqueued.
func TestObserver(t *testing.T) {
	mail := []step{
		{send: "MAIL FROM:<alice@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@localhost>", code: 501, enh: "5.1.3"},
	}
	tests := []struct {
		name         string
		queueErr     error
		steps        []step
		data         bool
		replies      []int
		authFailures int
	}{
		{name: "accepted message", steps: concat(ehloTLS, []step{authAlice}, mail), data: true,
			replies: []int{235, 250, 250, 501, 250}},
		{name: "disk full", queueErr: syscall.ENOSPC, steps: concat(ehloTLS, []step{authAlice}, mail), data: true,
			replies: []int{235, 250, 250, 501, 452}},
		{name: "wrong password", steps: concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "alice", "wrong"), code: 535, enh: "5.7.8"},
			{send: "AUTH LOGIN " + b64("alice"), code: 334},
			{send: b64("wrong"), code: 535, enh: "5.7.8"},
		}), replies: []int{535, 535}, authFailures: 2},
		{name: "MAIL before AUTH", steps: concat(ehloTLS, []step{
			{send: "MAIL FROM:<alice@example.test>", code: 530, enh: "5.7.0"},
		}), replies: []int{530}},
		{name: "forbidden sender", steps: concat(ehloTLS, []step{authAlice,
			{send: "MAIL FROM:<bob@example.test>", code: 553, enh: "5.7.1"},
		}), replies: []int{235, 553}},
		{name: "go-smtp's own replies are not seen", steps: concat(ehloTLS, []step{
			{send: "RCPT TO:<bob@example.org>", code: 502, enh: "5.5.1"},
			{send: "MAIL FROM:alice", code: 501, enh: "5.5.2"},
		})},

		{name: "authzid of another user", steps: concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("bob", "alice", "secret"), code: 535, enh: "5.7.8"},
		}), replies: []int{535}, authFailures: 1},
		{name: "authenticator failure", steps: concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "broken", "x"), code: 454, enh: "4.7.0"},
		}), replies: []int{454}},
		{name: "no password check slot", steps: concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + plainIR("", "busy", "x"), code: 454, enh: "4.7.0"},
		}), replies: []int{454}},
		{name: "malformed response", steps: concat(ehloTLS, []step{
			{send: "AUTH PLAIN " + b64("no separators"), code: 501, enh: "5.5.2"},
		}), replies: []int{501}},
		{name: "AUTH refused by the session", steps: []step{
			{send: "EHLO client.test", code: 250},
			{send: "AUTH PLAIN " + plainIR("", "alice", "secret"), code: 538, enh: "5.7.11"},
		}, replies: []int{538}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			obs := &recorder{}
			q := &fakeQueue{err: tt.queueErr}
			opts := submissionOpts(t, q)
			opts.Observer = obs
			addr := startServer(t, opts)
			c := dialRaw(t, addr, false)
			c.run(tt.steps)
			if tt.data {
				c.data("x\r\n")
			}

			obs.mu.Lock()
			defer obs.mu.Unlock()
			if !slices.Equal(obs.replies, tt.replies) {
				t.Errorf("replies %v, want %v", obs.replies, tt.replies)
			}
			if obs.authFailures != tt.authFailures {
				t.Errorf("%d auth failures, want %d", obs.authFailures, tt.authFailures)
			}
			var want []string
			if _, bodies := q.messages(); len(bodies) == 1 {
				want = []string{fmt.Sprintf("submission %d", len(bodies[0]))}
			}
			if !slices.Equal(obs.accepted, want) {
				t.Errorf("accepted %q, want %q", obs.accepted, want)
			}
		})
	}
}

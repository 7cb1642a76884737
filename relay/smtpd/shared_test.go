package smtpd

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"postern/relay/limits"
	"postern/relay/relaytest"
)

// sharedNode is one server's Policy with its own client of the shared
// store at addr.
func sharedNode(t *testing.T, addr string, p *Policy) *Policy {
	t.Helper()
	r := limits.Open(limits.Options{Addr: addr, Prefix: "smtpd-test", Pause: 50 * time.Millisecond})
	t.Cleanup(func() { r.Close() })
	p.Shared = r
	p.init()
	return p
}

var _ SharedLimiter = (*limits.Redis)(nil)

// Two servers sharing a store enforce one allowance per user and per
// client; when the store goes, each falls back to its own buckets and
// nothing is refused for that.
func TestSharedLimits(t *testing.T) {
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	mk := func() *Policy {
		return sharedNode(t, srv.Addr, &Policy{
			UserMessages:     Rate{N: 3, Per: time.Hour},
			UserRecipients:   Rate{N: 5, Per: time.Hour},
			IPConnectionRate: Rate{N: 2, Per: time.Minute},
		})
	}
	a, b := mk(), mk()
	ctx := context.Background()
	now := time.Now()

	// Messages: 2 through a and 1 through b, then both refuse.
	for i, p := range []*Policy{a, a, b} {
		if d := p.users.take(ctx, "Alice", false, now); d != 0 {
			t.Fatalf("message %d refused (wait %v)", i+1, d)
		}
	}
	for _, p := range []*Policy{a, b} {
		if d := p.users.take(ctx, "alice", false, now); d < 19*time.Minute || d > 20*time.Minute {
			t.Errorf("message 4: wait %v, want about 20m (one message every 20 minutes)", d)
		}
	}
	// The send API's path spends the same buckets: 4 recipients through
	// a, then 2 more through b are too many, and 6 never fit.
	if d, what, _ := a.TakeMessage("bob", 4, now); d != 0 {
		t.Fatalf("API message refused: %v %s", d, what)
	}
	if d, what, _ := b.TakeMessage("bob", 2, now); d <= 0 || what != "Recipient" {
		t.Errorf("API message over the recipient limit: wait %v, what %q", d, what)
	}
	if d, _, _ := b.TakeMessage("carol", 6, now); d != -1 {
		t.Errorf("6 recipients of 5: wait %v, want -1 (never)", d)
	}

	// Connections from one client: 2 per minute across both servers.
	ip := netip.MustParseAddr("192.0.2.7")
	for i, p := range []*Policy{a, b} {
		done, refusal := p.conns.admit(ctx, ip, now)
		if refusal != nil {
			t.Fatalf("connection %d refused: %v", i+1, refusal)
		}
		done()
	}
	if _, refusal := a.conns.admit(ctx, ip, now); refusal != errConnRate {
		t.Errorf("connection 3: %v, want the rate refusal", refusal)
	}

	// The store goes away: each server's own buckets take over, fresh,
	// and mail keeps flowing.
	srv.Kill()
	for i := range 3 {
		if d := a.users.take(ctx, "alice", false, now); d != 0 {
			t.Fatalf("message %d during the outage refused (wait %v)", i+1, d)
		}
	}
	if d := a.users.take(ctx, "alice", false, now); d <= 0 {
		t.Errorf("the local bucket did not limit during the outage")
	}
	if done, refusal := b.conns.admit(ctx, ip, now); refusal != nil {
		t.Errorf("connection during the outage refused: %v", refusal)
	} else {
		done()
	}

	// The store is back (empty: nothing is persisted): the shared bucket
	// decides again, where a's own, spent during the outage, would refuse.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.users.take(ctx, "alice", false, now) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the shared bucket is not used again after the store came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

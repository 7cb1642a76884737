package main

import (
	"fmt"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// TestSharedShapingE2E: two nodes sharing one Redis deliver to a
// destination limited to 1 connection (issue 17): the MX host never sees
// two connections at once, whichever nodes hold them, and every message
// arrives. Without limits.redis each node would open its own. With Redis
// killed, each node falls back to its own limit and mail keeps flowing.
func TestSharedShapingE2E(t *testing.T) {
	t.Parallel()
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	var nodes []*instance
	for range 2 {
		cfg := w.config()
		cfg.Limits = fmt.Sprintf("{max_message_size: 10MiB, max_recipients: 100, redis: {address: %q, prefix: e2e}}", srv.Addr)
		in := newInstance(t, cfg)
		// One message per connection: a connection parked for reuse
		// stays open after its attempt (and its slot) ended, which the
		// MX host would count against the limit.
		setDelivery(t, in, `
shaping:
  default: {connections: 1, messages_per_connection: 1}
`)
		in.start()
		in.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("shared limits: using Redis") })
		nodes = append(nodes, in)
	}
	// Each node first learns the destination's MX hosts: until then the
	// domain is a destination of its own, with one probe per node.
	for i, in := range nodes {
		relayOne(t, in, fmt.Sprintf("first%d@dest.test", i))
		if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), i+1); err != nil {
			t.Fatalf("first message through node %d: %v\n%s", i, err, in.logs.String())
		}
	}
	// Node A's next attempt holds the connection (the MX host holds its
	// reply to the message); node B's message must wait for it.
	held, release := rcv.HoldNextReply()
	defer release()
	relayOne(t, nodes[0], "held@dest.test")
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatalf("node A's message did not reach the MX host\n%s", nodes[0].logs.String())
	}
	relayOne(t, nodes[1], "waits@dest.test")
	time.Sleep(2 * time.Second) // node B would have connected within milliseconds
	if n := len(rcv.Messages()); n != 3 || rcv.MaxOpenConns() != 1 {
		t.Errorf("while node A held the connection: %d messages arrived, %d connections open at most; want 3 and 1", n, rcv.MaxOpenConns())
	}
	release()
	// Then more through both, delivered one connection at a time.
	const each = 5
	for i, in := range nodes {
		var rcpts []string
		for j := range each {
			rcpts = append(rcpts, fmt.Sprintf("n%d-%d@dest.test", i, j))
		}
		relayMany(t, in.cfg.Relay, rcpts...)
	}
	want := 4 + 2*each
	if _, err := rcv.WaitMessages(ctxTimeout(t, 60*time.Second), want); err != nil {
		t.Fatalf("%d of %d delivered: %v\nnode A:\n%s\nnode B:\n%s", len(rcv.Messages()), want, err, nodes[0].logs.String(), nodes[1].logs.String())
	}
	if got := rcv.MaxOpenConns(); got != 1 {
		t.Errorf("the MX host saw %d connections at once from two nodes sharing a limit of 1", got)
	}

	// Redis gone: each node shapes alone, and mail keeps flowing.
	srv.Kill()
	for i, in := range nodes {
		relayMany(t, in.cfg.Relay, fmt.Sprintf("down%d-a@dest.test", i), fmt.Sprintf("down%d-b@dest.test", i))
	}
	want += 4
	if _, err := rcv.WaitMessages(ctxTimeout(t, 60*time.Second), want); err != nil {
		t.Fatalf("with Redis down, %d of %d delivered: %v\nnode A:\n%s\nnode B:\n%s", len(rcv.Messages()), want, err, nodes[0].logs.String(), nodes[1].logs.String())
	}
	for _, in := range nodes {
		in.waitLog(10*time.Second, func(e logEntry) bool {
			return e.isMsg("shared limits: Redis unreachable; limits are per node until it answers")
		})
	}
	t.Logf("%d connections in all", rcv.Conns())
}

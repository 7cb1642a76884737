package main

import (
	"testing"
	"time"

	"postern/relay/relaytest"
)

// TestHAProxyFailoverOnDrain: two postern nodes behind a real HAProxy
// (PROXY v2 to the relay listeners, HTTP checks of /readyz on the admin
// listeners). Both take mail; once one drains, HAProxy takes it out at
// its next check and SMTP through HAProxy goes on, to the other node
// only. The drained node exits 0, and every message accepted by either
// node reaches the MX.
func TestHAProxyFailoverOnDrain(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	var nodes []*instance
	var backends []relaytest.HAProxyBackend
	for range 2 {
		cfg := w.config()
		cfg.Admin = freeAddr(t)
		in := newInstance(t, cfg)
		// HAProxy connects from 127.0.0.1; every connection from there
		// must carry a PROXY header (the client, 127.0.0.1 too, is
		// trusted by the relay listener).
		secOverride(t, in, `listen_proxy_protocol_from: ["127.0.0.1"]`)
		in.start()
		nodes = append(nodes, in)
		backends = append(backends, relaytest.HAProxyBackend{SMTP: in.cfg.Relay, Health: cfg.Admin})
	}
	hp := relaytest.NewHAProxy(t, relaytest.HAProxyOptions{
		Listen: freeAddr(t), Backends: backends,
		// postern's admin listener answers to its hostname on any port.
		CheckHost: "postern.test", CheckInterval: 100 * time.Millisecond,
	})
	hp.WaitServer(t, 0, "UP", 30*time.Second)
	hp.WaitServer(t, 1, "UP", 30*time.Second)

	accepted := func(in *instance) int {
		return len(in.logs.all(func(e logEntry) bool { return e.isMsg("accepted") }))
	}
	send := func(n int) {
		t.Helper()
		for range n {
			out, err := swaks(t, "--server", hp.Addr, "--from", "app@example.test", "--to", "bob@dest.test", "--data", swaksData)
			if err != nil || !queuedRE.MatchString(out) {
				t.Fatalf("through HAProxy: %v\n%s\nhaproxy:\n%s", err, out, hp.Logs())
			}
		}
	}
	send(4)
	if a, b := accepted(nodes[0]), accepted(nodes[1]); a != 2 || b != 2 {
		t.Errorf("before the drain the nodes accepted %d and %d messages, want 2 each", a, b)
	}

	drain := startDrain(t, nodes[0], "30s")
	hp.WaitServer(t, 0, "DOWN", 30*time.Second)

	send(6)
	if a, b := accepted(nodes[0]), accepted(nodes[1]); a != 2 || b != 8 {
		t.Errorf("after the drain the nodes accepted %d and %d messages in all, want 2 and 8", a, b)
	}
	drain.wait(t, nodes[0])
	if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 10); err != nil {
		t.Fatalf("the MX: %v (has %d)\n%s", err, len(rcv.Messages()), nodes[1].logs.String())
	}
}

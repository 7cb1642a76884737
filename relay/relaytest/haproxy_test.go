package relaytest_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// proxyV2Sig opens every PROXY protocol v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// tagServer answers every connection that starts with a PROXY v2 header
// with its name, and every other one with "no header".
func tagServer(t *testing.T, name string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitLimit))
				sig := make([]byte, len(proxyV2Sig))
				if _, err := io.ReadFull(c, sig); err != nil || !bytes.Equal(sig, proxyV2Sig) {
					io.WriteString(c, "no header\n")
					return
				}
				io.WriteString(c, name+"\n")
			}()
		}
	}()
	return l.Addr().String()
}

// readyServer serves /readyz: 200 while ready holds, else 503.
func readyServer(t *testing.T, ready *atomic.Bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.Host != "check.test" || !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// TestHAProxy: connections through the proxy carry a PROXY v2 header and
// go round robin to the servers that pass their /readyz check; a server
// whose check fails gets none until it passes again.
func TestHAProxy(t *testing.T) {
	var ready [2]atomic.Bool
	var backends []relaytest.HAProxyBackend
	for i := range ready {
		ready[i].Store(true)
		backends = append(backends, relaytest.HAProxyBackend{
			SMTP: tagServer(t, fmt.Sprintf("n%d", i)), Health: readyServer(t, &ready[i]),
		})
	}
	h := relaytest.NewHAProxy(t, relaytest.HAProxyOptions{Backends: backends, CheckHost: "check.test", CheckInterval: 50 * time.Millisecond})
	h.WaitServer(t, 0, "UP", waitLimit)
	h.WaitServer(t, 1, "UP", waitLimit)
	who := func() string {
		t.Helper()
		c, err := net.DialTimeout("tcp", h.Addr, waitLimit)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitLimit))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("through haproxy: %v\n%s", err, h.Logs())
		}
		return line[:len(line)-1]
	}
	seen := map[string]int{}
	for range 4 {
		seen[who()]++
	}
	if seen["n0"] != 2 || seen["n1"] != 2 {
		t.Errorf("4 connections went to %v, want 2 to each server (with a PROXY header)", seen)
	}

	ready[0].Store(false)
	h.WaitServer(t, 0, "DOWN", waitLimit)
	for range 4 {
		if got := who(); got != "n1" {
			t.Errorf("with n0 down, a connection went to %q", got)
		}
	}
	ready[0].Store(true)
	h.WaitServer(t, 0, "UP", waitLimit)
	h.Stop()
	if _, err := net.DialTimeout("tcp", h.Addr, time.Second); err == nil {
		t.Error("haproxy still listens after Stop")
	}
}

package relaytest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
)

// FreePort returns a TCP port that is free on every one of the given
// loopback IP addresses ("127.0.0.1" when none is given), so that several
// Receivers can share it on different addresses. It fails the test when no
// such port is found.
//
// The port is free when FreePort returns, and FreePort never returns the
// same port twice in one process: parallel tests often pick a port long
// before they listen on it (an MX that comes up later in the test), and
// another test must not be handed it meanwhile. Another process may still
// take it; the caller's listen then fails loudly rather than misbehaving.
func FreePort(t testing.TB, ips ...string) int {
	t.Helper()
	port, err := freePort(ips...)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	return port
}

var (
	issuedMu sync.Mutex
	issued   = map[int]bool{}
)

func freePort(ips ...string) (int, error) {
	issuedMu.Lock()
	defer issuedMu.Unlock()
	if len(ips) == 0 {
		ips = []string{"127.0.0.1"}
	}
	for _, ip := range ips {
		if err := checkLoopback(ip); err != nil {
			return 0, err
		}
	}
	var last error
	for range 50 {
		// Let the kernel pick a port on the first address, then check that
		// the same port is free on the others.
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		held := []net.Listener{l}
		ok := true
		for _, ip := range ips[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				last, ok = err, false
				break
			}
			held = append(held, l2)
		}
		for _, h := range held {
			h.Close()
		}
		if ok && !issued[port] {
			issued[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free on all of %v: %w", ips, last)
}

// checkLoopback refuses anything but a loopback IP literal: test peers must
// never listen where other machines could reach them.
func checkLoopback(host string) error {
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback IP address", host)
	}
	return nil
}

var errNotLoopback = errors.New("relaytest: only loopback addresses are allowed")

// checkLoopbackAddr checks the host of a "host:port" address.
func checkLoopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if err := checkLoopback(host); err != nil {
		return fmt.Errorf("%w: %v", errNotLoopback, err)
	}
	return nil
}

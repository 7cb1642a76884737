package relaytest

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// HAProxy is a real HAProxy (Debian package haproxy) run as a child
// process in TCP mode in front of SMTP servers, the way a fleet of postern
// nodes is run: each connection goes to a backend that passes its health
// check, opened with a PROXY protocol v2 header that names the original
// client (the backends must accept it: postern's
// listen_proxy_protocol_from), and the health check is an HTTP GET of
// /readyz on each backend's admin listener, so that a node that drains
// (or is not ready) stops getting connections.
type HAProxy struct {
	// Addr is the frontend's address ("IP:port"): clients connect here.
	Addr string

	sock string // the stats socket (Server)
	cmd  *exec.Cmd
	done chan struct{}
	logs *lockedBuffer
}

// HAProxyBackend is one server behind the proxy.
type HAProxyBackend struct {
	// SMTP is the address connections are forwarded to.
	SMTP string
	// Health is the address of the server's HTTP listener whose /readyz
	// must answer 200 for the server to get connections; "" for no
	// check (the server is always taken as up).
	Health string
}

// HAProxyOptions configure NewHAProxy.
type HAProxyOptions struct {
	// Listen is the frontend's address; "" picks a free port on
	// 127.0.0.1.
	Listen string
	// Backends are the servers, in order: Server(i) is Backends[i].
	Backends []HAProxyBackend
	// CheckHost is the Host header of the health checks: a name the
	// servers answer to (postern's admin listener refuses other names);
	// "" sends "localhost".
	CheckHost string
	// CheckInterval is the time between two checks of a server (200 ms
	// if 0). One failed check takes a server out, one passed check puts
	// it back.
	CheckInterval time.Duration
}

// HAProxyPath finds the haproxy binary: on $PATH, else Debian's
// /usr/sbin/haproxy.
func HAProxyPath() (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/haproxy"
	if _, err := os.Stat(debian); err != nil {
		return "", fmt.Errorf("haproxy (Debian package haproxy) is not installed: run `make deps`")
	}
	return debian, nil
}

// NewHAProxy writes a config into a temporary directory, runs haproxy in
// the foreground (-db) and waits until its frontend listens. It is stopped
// (by its PID) when the test ends, or earlier by Stop.
func NewHAProxy(t testing.TB, o HAProxyOptions) *HAProxy {
	t.Helper()
	bin, err := HAProxyPath()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Backends) == 0 {
		t.Fatal("relaytest: NewHAProxy without backends")
	}
	if o.Listen == "" {
		o.Listen = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	}
	for _, a := range []string{o.Listen} {
		if err := checkLoopbackAddr(a); err != nil {
			t.Fatalf("relaytest: HAProxy frontend %s: %v", a, err)
		}
	}
	if o.CheckHost == "" {
		o.CheckHost = "localhost"
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = 200 * time.Millisecond
	}
	dir := t.TempDir()
	h := &HAProxy{Addr: o.Listen, sock: filepath.Join(dir, "stats.sock"), done: make(chan struct{}), logs: &lockedBuffer{}}
	conf, err := haproxyConfig(o, h.sock)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	file := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(bin, "-db", "-f", file)
	h.cmd.Stdout, h.cmd.Stderr = h.logs, h.logs
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.cmd.Wait(); close(h.done) }()
	t.Cleanup(h.Stop)
	if err := waitListening(h.Addr, h.done); err != nil {
		t.Fatalf("haproxy: %v\n%s\nconfig:\n%s", err, h.logs.String(), conf)
	}
	return h
}

// haproxyConfig is the configuration NewHAProxy runs: round robin over
// the backends; a connection that cannot be made is tried again on
// another server (redispatch), so that a server closing its listener
// between two checks costs no client its connection.
func haproxyConfig(o HAProxyOptions, sock string) (string, error) {
	inter := fmt.Sprintf("%dms", o.CheckInterval.Milliseconds())
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 500
  stats socket %s mode 600 level admin
defaults
  mode tcp
  timeout connect 2s
  timeout client 2m
  timeout server 2m
  timeout check 2s
  retries 3
  option redispatch
frontend smtp
  bind %s
  default_backend smtp
backend smtp
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host %s
  http-check expect status 200
  default-server inter %s fastinter %s downinter %s fall 1 rise 1 send-proxy-v2
`, sock, o.Listen, o.CheckHost, inter, inter, inter)
	for i, s := range o.Backends {
		if err := checkLoopbackAddr(s.SMTP); err != nil {
			return "", fmt.Errorf("HAProxy backend %d: %v", i, err)
		}
		fmt.Fprintf(&b, "  server n%d %s", i, s.SMTP)
		if s.Health != "" {
			host, port, err := net.SplitHostPort(s.Health)
			if err != nil {
				return "", fmt.Errorf("HAProxy backend %d health: %v", i, err)
			}
			if err := checkLoopbackAddr(s.Health); err != nil {
				return "", fmt.Errorf("HAProxy backend %d health: %v", i, err)
			}
			fmt.Fprintf(&b, " check addr %s port %s", host, port)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

// Server returns the state HAProxy gives Backends[i] ("UP", "DOWN",
// "UP 1/2" while it changes, "no check" without a health check), read
// from its stats socket.
func (h *HAProxy) Server(i int) (string, error) {
	c, err := net.DialTimeout("unix", h.sock, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return "", err
	}
	r := csv.NewReader(bufio.NewReader(c))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return "", fmt.Errorf("haproxy show stat: %v", err)
	}
	if len(rows) == 0 {
		return "", fmt.Errorf("haproxy show stat: no header")
	}
	col := map[string]int{}
	for j, name := range rows[0] {
		col[strings.TrimPrefix(name, "# ")] = j
	}
	want := fmt.Sprintf("n%d", i)
	for _, row := range rows[1:] {
		if len(row) > col["status"] && row[col["pxname"]] == "smtp" && row[col["svname"]] == want {
			return row[col["status"]], nil
		}
	}
	return "", fmt.Errorf("haproxy show stat: no server %s", want)
}

// WaitServer waits until Backends[i]'s state is state ("UP", "DOWN"), or
// fails the test after timeout.
func (h *HAProxy) WaitServer(t testing.TB, i int, state string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := h.Server(i)
		if err == nil && got == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy: server %d is %q (%v) after %s, want %q\n%s", i, got, err, timeout, state, h.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends HAProxy (SIGKILL to its PID: it keeps no state) and waits for
// it. It may be called more than once.
func (h *HAProxy) Stop() {
	select {
	case <-h.done:
		return
	default:
	}
	h.cmd.Process.Kill()
	<-h.done
}

// Logs is what HAProxy printed (its alerts and warnings), for failure
// messages.
func (h *HAProxy) Logs() string { return h.logs.String() }

package main

// The harness for end-to-end tests: they build the real postern binary once,
// run it as a child process on loopback ports with a config written per
// test, and drive it with real peers (swaks, Postfix's smtp-sink, dkimpy)
// and in-process ones (relaytest's DNS server and SMTP receiver).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/postgres/pgtest"
	"postern/queue/reply"
)

// binPath is the postern binary built by TestMain.
var binPath string

// raceEnabled is set by race_test.go when the tests run with -race.
var raceEnabled bool

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postern-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "postern")
	// The binary is built as the tests are: with the race detector when
	// they run with it (make test), so that races in the daemon fail too.
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building postern:", err)
		os.Exit(1)
	}
	code := pgtest.Main(m) // stops the PostgreSQL cluster, if a test started one
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	issuedMu sync.Mutex
	issued   = map[string]bool{}
)

// freeAddr returns 127.0.4.1:<a port free now>, never the same one twice
// in this test binary: the kernel may hand a just-closed port out again,
// and two listeners of one config on one port is a config error. Not
// 127.0.0.1: the ports picked there are in the ephemeral range, and the
// outgoing connections of other packages' tests (run in parallel
// processes) take ports on 127.0.0.1 from it; none binds 127.0.4.1.
func freeAddr(t testing.TB) string {
	t.Helper()
	issuedMu.Lock()
	defer issuedMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.4.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !issued[addr] {
			issued[addr] = true
			return addr
		}
	}
}

// instance is one running postern process.
type instance struct {
	t       testing.TB
	dir     string // the config's directory (data_dir is dir/data)
	cfgPath string
	cfg     testConfig
	cmd     *exec.Cmd
	// wrap, when set, is the command serve runs under (setpriv, to run
	// the server as another user).
	wrap []string
	// env is added to serve's environment (SSL_CERT_FILE, to trust a
	// test CA).
	env     []string
	logs    *logBuffer
	done    chan struct{}
	exitErr error
}

// testConfig is what varies between tests; everything else is fixed.
type testConfig struct {
	Submission, Submissions, Relay string // listen addresses ("" = off)
	Admin                          string // admin API address ("" = off)
	MX                             string // listen.mx address ("" = off)
	API                            string // send API address ("" = off)
	Limits                         string // the limits map's YAML ("" = 10 MiB, 100 recipients)
	Trusted                        []string
	Resolver                       string
	DeliveryPort                   int
	DeliveryTLS                    string
	RetryInitial, RetryMax         string
	Lifetime                       string
	DelayWarning                   string // delivery.delay_warning ("" = 0s, off)
	Extra                          string // more YAML appended verbatim
}

func (c testConfig) yaml(dir string) string {
	trusted := `["127.0.0.0/8", "::1/128"]`
	if c.Trusted != nil {
		q := make([]string, len(c.Trusted))
		for i, n := range c.Trusted {
			q[i] = fmt.Sprintf("%q", n)
		}
		trusted = "[" + strings.Join(q, ", ") + "]"
	}
	or := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	return fmt.Sprintf(`hostname: postern.test
data_dir: %s
log: {level: debug, format: json}
listen:
  submission: %q
  submissions: %q
  relay: %q
  admin: %q
  mx: %q
  api: %q
auth: {users_file: users}
relay: {trusted_networks: %s}
limits: %s
delivery:
  resolver: %q
  port: %d
  tls: %s
  retry: {initial: %s, max: %s, lifetime: %s}
  delay_warning: %s
shutdown_timeout: 10s
%s`, filepath.Join(dir, "data"), c.Submission, c.Submissions, c.Relay, c.Admin, c.MX, c.API, trusted, or(c.Limits, "{max_message_size: 10MiB, max_recipients: 100}"),
		c.Resolver, c.DeliveryPort, or(c.DeliveryTLS, "opportunistic"),
		or(c.RetryInitial, "300ms"), or(c.RetryMax, "2s"), or(c.Lifetime, "1h"), or(c.DelayWarning, "0s"), c.Extra)
}

// newInstance writes a config into a fresh directory; start runs it.
func newInstance(t testing.TB, cfg testConfig) *instance {
	t.Helper()
	return newInstanceIn(t, t.TempDir(), cfg)
}

// newInstanceIn is newInstance in dir, for tests that need a directory
// other users can reach (t.TempDir's parent is not).
func newInstanceIn(t testing.TB, dir string, cfg testConfig) *instance {
	t.Helper()
	if cfg.Submission == "" && cfg.Submissions == "" && cfg.Relay == "" {
		cfg.Submission, cfg.Submissions, cfg.Relay = freeAddr(t), freeAddr(t), freeAddr(t)
	}
	in := &instance{t: t, dir: dir, cfgPath: filepath.Join(dir, "postern.yaml"), cfg: cfg}
	if err := os.WriteFile(in.cfgPath, []byte(cfg.yaml(dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	return in
}

// postern runs a CLI command of the binary against this instance's config.
func (in *instance) postern(stdin string, args ...string) (string, error) {
	in.t.Helper()
	args = append(args, "--config", in.cfgPath)
	cmd := exec.Command(binPath, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// addUser adds a user through the CLI, as an administrator would.
func (in *instance) addUser(name, password string, allow ...string) {
	in.t.Helper()
	args := []string{"user", "add", name}
	if len(allow) > 0 {
		args = append(args, "--allow", strings.Join(allow, ","))
	}
	if out, err := in.postern(password+"\n", args...); err != nil {
		in.t.Fatalf("user add: %v\n%s", err, out)
	}
}

// start runs `postern serve` and waits until it logs that it started.
func (in *instance) start() {
	in.t.Helper()
	in.logs = &logBuffer{}
	argv := append(append([]string(nil), in.wrap...), binPath, "serve", "--config", in.cfgPath)
	in.cmd = exec.Command(argv[0], argv[1:]...)
	if in.env != nil {
		in.cmd.Env = append(os.Environ(), in.env...)
	}
	in.cmd.Stderr = in.logs
	in.cmd.Stdout = in.logs
	if len(in.env) > 0 {
		in.cmd.Env = append(os.Environ(), in.env...)
	}
	if err := in.cmd.Start(); err != nil {
		in.t.Fatal(err)
	}
	in.done = make(chan struct{})
	go func() {
		in.exitErr = in.cmd.Wait()
		close(in.done)
	}()
	in.t.Cleanup(func() { in.kill() })
	if _, err := in.logs.wait(in.done, 60*time.Second, func(e logEntry) bool { return e.isMsg("postern started") }); err != nil {
		// SIGQUIT makes the Go runtime print every goroutine's stack:
		// where start-up is stuck.
		in.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-in.done:
		case <-time.After(10 * time.Second):
		}
		in.t.Fatalf("postern did not start: %v\n%s", err, in.logs.String())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (in *instance) stop() {
	in.t.Helper()
	if in.cmd == nil {
		return
	}
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		in.kill()
		in.t.Fatalf("postern did not stop within 30s of SIGTERM\n%s", in.logs.String())
	}
	if in.exitErr != nil {
		in.t.Fatalf("postern exited with %v after SIGTERM\n%s", in.exitErr, in.logs.String())
	}
	in.cmd = nil
}

// kill ends the process with SIGKILL if it still runs (a crash).
func (in *instance) kill() {
	if in.cmd == nil {
		return
	}
	in.cmd.Process.Kill()
	<-in.done
	in.cmd = nil
}

// waitLog waits for a log entry matching f and returns it.
func (in *instance) waitLog(timeout time.Duration, f func(logEntry) bool) logEntry {
	in.t.Helper()
	e, err := in.logs.wait(in.done, timeout, f)
	if err != nil {
		in.t.Fatalf("%v\nlog:\n%s", err, in.logs.String())
	}
	return e
}

// logEntry is one JSON log line of postern.
type logEntry map[string]any

func (e logEntry) str(k string) string { s, _ := e[k].(string); return s }

// reply is the line's typed "reply" object (code, enhanced_code, text),
// the zero Reply when it has none.
func (e logEntry) reply() reply.Reply {
	var r reply.Reply
	if b, err := json.Marshal(e["reply"]); err == nil {
		json.Unmarshal(b, &r)
	}
	return r
}

func (e logEntry) isMsg(msg string) bool { return e.str("msg") == msg }

// logBuffer collects the process's output and lets tests wait for lines.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	entries []logEntry
	partial []byte
	changed chan struct{}
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := l.partial[:i]
		l.partial = l.partial[i+1:]
		var e logEntry
		if json.Unmarshal(line, &e) == nil {
			l.entries = append(l.entries, e)
		}
	}
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// all returns the entries matching f so far.
func (l *logBuffer) all(f func(logEntry) bool) []logEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logEntry
	for _, e := range l.entries {
		if f(e) {
			out = append(out, e)
		}
	}
	return out
}

// wait blocks until an entry matches f, the process exits, or timeout.
// f runs with the buffer locked: it must not call back into the buffer.
func (l *logBuffer) wait(exited <-chan struct{}, timeout time.Duration, f func(logEntry) bool) (logEntry, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		l.mu.Lock()
		for ; seen < len(l.entries); seen++ {
			if f(l.entries[seen]) {
				e := l.entries[seen]
				l.mu.Unlock()
				return e, nil
			}
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-exited:
			// Drain what was written before the exit, then give up.
			l.mu.Lock()
			n := len(l.entries)
			l.mu.Unlock()
			if seen == n {
				return nil, fmt.Errorf("postern exited before the expected log line")
			}
		case <-deadline.C:
			return nil, fmt.Errorf("no matching log line within %s", timeout)
		}
	}
}

// swaks runs the real swaks client and returns its transcript.
func swaks(t testing.TB, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatal("swaks is not installed: run `make deps` (make test does it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"--timeout", "30"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// smtpDialog opens a raw connection to addr and returns a function that
// sends a line and returns the whole reply (all lines), for tests that must
// see exact reply codes.
type smtpDialog struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dial(t testing.TB, addr string) *smtpDialog {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &smtpDialog{t: t, conn: c, r: bufio.NewReader(c)}
	d.reply() // greeting
	return d
}

func (d *smtpDialog) reply() string {
	d.t.Helper()
	d.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var all strings.Builder
	for {
		line, err := d.r.ReadString('\n')
		if err != nil {
			d.t.Fatalf("reading reply: %v (so far %q)", err, all.String())
		}
		all.WriteString(line)
		if len(line) < 4 || line[3] != '-' {
			return all.String()
		}
	}
}

func (d *smtpDialog) cmd(line string) string {
	d.t.Helper()
	if _, err := io.WriteString(d.conn, line+"\r\n"); err != nil {
		d.t.Fatal(err)
	}
	return d.reply()
}

// startSmtpSink runs Postfix's smtp-sink on addr with extra flags (-8: no
// 8BITMIME), dumping each message into a file of the directory it
// returns, and stops it when the test ends.
func startSmtpSink(t testing.TB, addr string, flags ...string) string {
	t.Helper()
	sink, err := exec.LookPath("smtp-sink")
	if err != nil {
		sink = "/usr/sbin/smtp-sink"
	}
	if _, err := os.Stat(sink); err != nil {
		t.Fatal("smtp-sink (Debian package postfix) is not installed: run `make deps`")
	}
	// smtp-sink runs as nobody (it refuses to run as root), so its dump
	// directory must be reachable by nobody: t.TempDir's parent is not.
	dump, err := os.MkdirTemp("", "postern-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dump) })
	os.Chmod(dump, 0o777)
	args := append([]string{"-u", "nobody", "-d", filepath.Join(dump, "%Y%m%d%H%M%S.")}, flags...)
	cmd := exec.Command(sink, append(args, addr, "10")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return dump
}

// showJSON is `postern queue show --json ID`, decoded.
func showJSON(t *testing.T, in *instance, id string) queue.Message {
	t.Helper()
	out, err := in.postern("", "queue", "show", "--json", id)
	if err != nil {
		t.Fatalf("queue show: %v\n%s", err, out)
	}
	var m queue.Message
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("queue show --json: %v\n%s", err, out)
	}
	return m
}

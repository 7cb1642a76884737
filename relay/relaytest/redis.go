package relaytest

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is Debian's redis-server (apt-get install redis-server; `make
// deps` installs it) run as a child process on 127.0.0.1, with nothing
// written to disk: the shared store of limits.redis, for tests of several
// postern nodes and of what happens when the store goes away.
type Redis struct {
	// Addr is host:port; it stays the same across Kill and Restart, so a
	// client configured with it sees the store go and come back.
	Addr string

	opts RedisOptions
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs *lockedBuffer
}

// RedisOptions configure StartRedis.
type RedisOptions struct {
	// Password, when set, is required of clients (requirepass).
	Password string
}

// NewRedis starts a Redis server for the test and stops it when the test
// ends; it fails the test when redis-server is missing or does not start.
func NewRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	r, err := StartRedis(opts)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	t.Cleanup(r.Kill)
	return r
}

// StartRedis starts a Redis server on a free loopback port. The caller
// stops it with Kill.
func StartRedis(opts RedisOptions) (*Redis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New("redis-server is not installed: apt-get install redis-server (make deps does it)")
	}
	var last error
	// The port is free when picked but another process may take it before
	// redis-server binds it: try a few.
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		r := &Redis{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), opts: opts, port: port}
		if last = r.Restart(); last == nil {
			return r, nil
		}
	}
	return nil, last
}

// Restart starts the server again on its address after Kill (and is how
// StartRedis starts it the first time). Its data is gone: nothing is
// persisted.
func (r *Redis) Restart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return errors.New("redis-server is already running")
	}
	args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port),
		"--save", "", "--appendonly", "no", "--protected-mode", "no"}
	if r.opts.Password != "" {
		args = append(args, "--requirepass", r.opts.Password)
	}
	cmd := exec.Command("redis-server", args...)
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group, so that a signal sent to the test's group
	// (a terminal's ^C) is not what stops it, and Kill stops it alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	// Ready when it accepts connections (it logs "Ready to accept
	// connections" too, but a dial is what a client needs).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on %s exited at start:\n%s", r.Addr, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server on %s did not accept connections within 10s:\n%s", r.Addr, logs.String())
		}
	}
	r.cmd, r.done, r.logs = cmd, done, logs
	return nil
}

// Kill stops the server at once (SIGKILL, by its PID), as a crash or a
// lost host would: clients see their connections reset and new ones
// refused. It does nothing when the server is not running.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// Logs returns what the server has written since it last started.
func (r *Redis) Logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.logs == nil {
		return ""
	}
	return r.logs.String()
}

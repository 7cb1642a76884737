// Package pgtest runs a throwaway PostgreSQL cluster for tests: Debian's
// postgresql package, its own initdb in a temporary directory, on a free
// loopback port, as an unprivileged user when the tests run as root
// (PostgreSQL refuses root). One cluster serves a test binary; each test
// gets a database of its own.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a running PostgreSQL server.
type Cluster struct {
	Dir  string // data directory
	Port int
	pid  int
	bin  string
	n    atomic.Int64
}

var (
	shared    *Cluster
	sharedErr error
	once      sync.Once
)

// Main runs the tests of m and then stops the shared cluster, if one was
// started. Call it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// Shared returns the test binary's cluster, starting it at the first
// call. Without PostgreSQL installed the test fails: `make deps`
// installs it.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	once.Do(func() { shared, sharedErr = Start() })
	if sharedErr != nil {
		t.Fatalf("pgtest: %v", sharedErr)
	}
	return shared
}

// DB creates a new, empty database in the shared cluster and returns its
// DSN; it is dropped at the end of the test.
func DB(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.n.Add(1))
	if err := c.exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() { c.exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })
	return c.DSN(name)
}

// DSN is the connection string of database db.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

func (c *Cluster) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// Bin finds the PostgreSQL server programs (Debian keeps them out of
// PATH, by major version).
func Bin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("PostgreSQL is not installed (no initdb; `make deps` installs Debian's postgresql)")
}

// Start creates and starts a new cluster on a free loopback port.
func Start() (*Cluster, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: filepath.Join(dir, "data"), bin: bin}
	as, err := runAs(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	run := func(name string, args ...string) error {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		if as != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
		}
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run("initdb", "-D", c.Dir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// pg_stat_statements, when installed (Debian's postgresql has it),
	// shows where the queue's time goes: make bench reports it.
	opts := ""
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(bin)), "..", "..", "share", "postgresql", "*", "extension", "pg_stat_statements.control")); len(m) > 0 {
		opts = " -c shared_preload_libraries=pg_stat_statements"
	}
	for try := 0; ; try++ {
		c.Port, err = freePort()
		if err == nil {
			err = run("pg_ctl", "-D", c.Dir, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "-o",
				fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=300%s", c.Port, dir, opts), "start")
		}
		if err == nil {
			break
		}
		if try == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("%v\n%s", err, log)
		}
	}
	pidFile, err := os.ReadFile(filepath.Join(c.Dir, "postmaster.pid"))
	if err == nil {
		c.pid, err = strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("postmaster.pid: %v", err)
	}
	return c, nil
}

// Stop stops the server by its PID (SIGQUIT: immediate shutdown) and
// removes its files.
func (c *Cluster) Stop() {
	if p, err := os.FindProcess(c.pid); err == nil {
		p.Signal(syscall.SIGQUIT)
		for i := 0; i < 100 && p.Signal(syscall.Signal(0)) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.RemoveAll(filepath.Dir(c.Dir))
}

// runAs returns the credentials to run PostgreSQL with when this process
// is root (Debian's postgres user, owning dir), or nil.
func runAs(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and there is no postgres user to run PostgreSQL as: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// PID is the postmaster's process id: the server's other processes are
// its children.
func (c *Cluster) PID() int { return c.pid }

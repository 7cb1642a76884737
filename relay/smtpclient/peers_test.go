package smtpclient_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"postern/relay/relaytest"
	"postern/relay/smtpclient"
)

// Real peers: Postfix's smtpd (3.7: PIPELINING, CHUNKING, 8BITMIME, and a
// recipient limit answered 452 4.5.3) and smtp-sink (PIPELINING, no
// CHUNKING). Both come with Debian's postfix package (`make deps`).
// Round trips are counted on the client's side here: flightConn counts
// the times the client writes after having read.

// flightConn counts the client's flights: writes that follow a read (or
// start the connection).
type flightConn struct {
	net.Conn
	mu      sync.Mutex
	flights int
	read    bool
}

func (c *flightConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read = c.read || n > 0
	c.mu.Unlock()
	return n, err
}

func (c *flightConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.read || c.flights == 0 {
		c.flights++
		c.read = false
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *flightConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flights
}

func connectCounting(t *testing.T, addr string) (*smtpclient.Client, *flightConn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fc := &flightConn{Conn: raw}
	c := smtpclient.New(fc, testOpts)
	t.Cleanup(func() { c.Close() })
	if err := c.Greet(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, fc
}

// needRoot skips a test that runs Postfix's daemons, which need root.
func needRoot(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("%s is not installed (Debian package postfix): run `make deps`", b)
		}
	}
	if os.Getuid() != 0 {
		t.Skip("Postfix's daemons and smtp-sink need root here")
	}
}

// scratch is a directory the postfix and nobody users can reach.
func scratch(t *testing.T, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// waitGreeting waits until addr answers 220.
func waitGreeting(t *testing.T, addr string, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "220") {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s on %s did not greet within 30s", what, addr)
}

// startPostfix runs a throwaway Postfix (master, smtpd, cleanup, qmgr,
// discard) in a scratch directory, never touching /etc/postfix or the
// system's queue, with three smtpd listeners on loopback: Postfix's
// defaults, one without CHUNKING, one without PIPELINING and CHUNKING. It
// takes 3 recipients per transaction, refuses bad@x.test, and discards
// what it accepts.
func startPostfix(t *testing.T) (full, noChunking, plain string) {
	needRoot(t, "/usr/sbin/postfix", "/usr/lib/postfix/sbin/master")
	dir := scratch(t, "postern-postfix-")
	conf, queue, data := filepath.Join(dir, "conf"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", data).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	var addrs []string
	for len(addrs) < 3 {
		a := "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t, "127.0.0.1"))
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %s
data_directory = %s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.smtpclient.test
mydomain = smtpclient.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = check_recipient_access inline:{ bad@x.test=REJECT }
smtpd_recipient_limit = 3
smtpd_peername_lookup = no
default_transport = discard:
relay_transport = discard:
maillog_file_prefixes = %s
maillog_file = %s/maillog
`, queue, data, dir, dir)
	master := fmt.Sprintf(`%s inet n - n - - smtpd
%s inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=chunking
%s inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=pipelining,chunking
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
proxymap unix - - n - - proxymap
discard unix - - n - - discard
anvil unix - - n - 1 anvil
postlog unix-dgram n - n - 1 postlogd
`, addrs[0], addrs[1], addrs[2])
	for name, text := range map[string]string{"main.cf": main, "master.cf": master} {
		if err := os.WriteFile(filepath.Join(conf, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	maillog := func() string { b, _ := os.ReadFile(filepath.Join(dir, "maillog")); return string(b) }
	if out, err := exec.Command("/usr/sbin/postfix", "-c", conf, "check").CombinedOutput(); err != nil {
		t.Fatalf("postfix check: %v\n%s%s", err, out, maillog())
	}
	cmd := exec.Command("/usr/lib/postfix/sbin/master", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGTERM: master passes it on to its children.
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	for _, a := range addrs {
		waitGreeting(t, a, "Postfix")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Postfix's log:\n%s", maillog())
		}
	})
	return addrs[0], addrs[1], addrs[2]
}

// TestPostfix: messages to Postfix's smtpd on one connection, with every
// extension, without CHUNKING, without PIPELINING and CHUNKING: all
// delivered, a recipient refused in Postfix's words, five recipients in
// two transactions (Postfix takes three and answers 452 4.5.3), and the
// round trips per message on a reused connection counted.
func TestPostfix(t *testing.T) {
	full, noChunking, plain := startPostfix(t)
	for _, tt := range []struct {
		name, addr string
		flights    int // per message of two recipients, on a reused connection
	}{
		{"pipelining and chunking", full, 2},
		{"pipelining", noChunking, 2},
		{"neither", plain, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, fc := connectCounting(t, tt.addr)
			e := c.Ext()
			if !e.EightBitMIME || e.Pipelining != (tt.addr != plain) || e.Chunking != (tt.addr == full) {
				t.Fatalf("Postfix offers %+v", e)
			}
			send(t, c, tx("b@x.test", "c@x.test"))
			before := fc.count()
			send(t, c, tx("b@x.test", "c@x.test"))
			if n := fc.count() - before; n != tt.flights {
				t.Errorf("%d round trips for a message on a reused connection, want %d", n, tt.flights)
			}
			t.Logf("%s: %d round trips per message on a reused connection", tt.name, fc.count()-before)

			res := send(t, c, tx("r1@x.test", "r2@x.test", "r3@x.test", "r4@x.test", "r5@x.test"))
			if res.Transactions != 2 {
				t.Errorf("%d transactions for 5 recipients, want 2", res.Transactions)
			}
			r, err := c.Send(context.Background(), tx("b@x.test", "bad@x.test"))
			if err != nil {
				t.Fatal(err)
			}
			if !r.Rcpts[0].Delivered() || r.Rcpts[1].Reply == nil || r.Rcpts[1].Reply.Code != 554 ||
				r.Rcpts[1].Reply.Enhanced.String() != "5.7.1" || r.Rcpts[1].Reply.Command != smtpclient.CmdRCPT {
				t.Errorf("refused recipient: %+v %+v", r.Rcpts[0], r.Rcpts[1].Reply)
			}
			if !c.Reusable() {
				t.Error("connection not reusable")
			}
		})
	}
}

// startSink runs smtp-sink on a free loopback port with extra flags,
// dumping each message into a file of the directory it returns.
func startSink(t *testing.T, flags ...string) (addr, dump string) {
	needRoot(t, "/usr/sbin/smtp-sink")
	dump = scratch(t, "postern-sink-")
	os.Chmod(dump, 0o777)
	addr = "127.0.0.1:" + strconv.Itoa(relaytest.FreePort(t, "127.0.0.1"))
	args := append([]string{"-u", "nobody", "-d", filepath.Join(dump, "%Y%m%d%H%M%S.")}, flags...)
	cmd := exec.Command("/usr/sbin/smtp-sink", append(args, addr, "10")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitGreeting(t, addr, "smtp-sink")
	return addr, dump
}

// TestSmtpSink: smtp-sink pipelines but knows no CHUNKING; with -p it does
// not pipeline either, and with -8 it does not offer 8BITMIME (then no
// BODY=8BITMIME is declared). Each message arrives whole.
func TestSmtpSink(t *testing.T) {
	for _, tt := range []struct {
		name    string
		flags   []string
		flights int
	}{
		{"pipelining", nil, 2},
		{"no pipelining, no 8BITMIME", []string{"-p", "-8"}, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, dump := startSink(t, tt.flags...)
			c, fc := connectCounting(t, addr)
			if c.Ext().Chunking || c.Ext().Pipelining != (tt.flights == 2) || c.Ext().EightBitMIME == (tt.flags != nil) {
				t.Fatalf("smtp-sink offers %+v", c.Ext())
			}
			send(t, c, tx("b@x.test", "c@x.test"))
			before := fc.count()
			send(t, c, tx("b@x.test", "c@x.test"))
			if n := fc.count() - before; n != tt.flights {
				t.Errorf("%d round trips for a message on a reused connection, want %d", n, tt.flights)
			}
			c.Quit(time.Second)
			deadline := time.Now().Add(waitLimit)
			var files []string
			for len(files) < 2 && time.Now().Before(deadline) {
				files, _ = filepath.Glob(filepath.Join(dump, "*"))
				time.Sleep(20 * time.Millisecond)
			}
			if len(files) != 2 {
				t.Fatalf("%d dumps, want 2", len(files))
			}
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(strings.ReplaceAll(string(b), "\r\n", "\n"), strings.ReplaceAll(msg, "\r\n", "\n")) {
					t.Errorf("dump %s ends %q", f, b[max(0, len(b)-60):])
				}
				if tt.flags != nil && strings.Contains(string(b), "BODY=8BITMIME") {
					t.Errorf("BODY=8BITMIME declared to a server without 8BITMIME: %s", b)
				}
			}
		})
	}
}

package main

// End-to-end test of issue 15's bounce intake, with Postfix itself as the
// remote MX that accepts a message for an unknown user and bounces it
// later, to the VERP return path, at postern's listen.mx.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"postern/queue/postgres/pgtest"
)

// postfixMX runs Postfix as the MX of dest.test on addr: it accepts any
// recipient at RCPT (local_recipient_maps is empty), delivers locally,
// and so bounces an unknown user after the 250, as a DSN it relays to
// relayhost (postern's listen.mx). Its configuration, queue and log live
// in a scratch directory under /var/spool (Postfix's daemons, user
// postfix, must reach it; t.TempDir's parent is not reachable), /etc/postfix
// is never read for this instance's state, and its master daemon runs in
// the foreground as our child: stopped by PID (SIGTERM, which it passes
// on), then its process group (master calls setsid) is killed if anything
// is left. It returns the path of Postfix's log.
func postfixMX(t *testing.T, addr, relayhost string) string {
	t.Helper()
	master := "/usr/lib/postfix/sbin/master"
	if _, err := os.Stat(master); err != nil {
		t.Fatal("Postfix is not installed: run `make deps`")
	}
	dir, err := os.MkdirTemp("/var/spool", "postern-e2e-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	conf, queue, data := filepath.Join(dir, "conf"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", data).CombinedOutput(); err != nil {
		t.Fatalf("chown postfix %s: %v\n%s", data, err, out)
	}
	maillog := filepath.Join(dir, "maillog")
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %s
data_directory = %s
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.dest.test
mydomain = dest.test
myorigin = dest.test
mydestination = dest.test
# Accept every recipient at RCPT: the unknown user is found by local
# delivery, after the 250, and bounced (RFC 5321 §3.7 "accept, then bounce").
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# The bounce goes to listen.mx, by address: no DNS.
relayhost = [%s]:%s
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
maillog_file = %s
`, queue, data, strings.Split(relayhost, ":")[0], strings.Split(relayhost, ":")[1], maillog)
	masterCF := addr + ` inet  n       -       n       -       -       smtpd
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
local       unix  -       n       n       -       -       local
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
`
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(masterCF), 0o644); err != nil {
		t.Fatal(err)
	}
	// Creates the queue's subdirectories with their owners and modes.
	if out, err := exec.Command("/usr/sbin/postfix", "-c", conf, "check").CombinedOutput(); err != nil {
		t.Fatalf("postfix -c %s check: %v\n%s", conf, err, out)
	}
	cmd := exec.Command(master, "-c", conf)
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		syscall.Kill(-pid, syscall.SIGKILL) // whatever of its group is left
	})
	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	if err := waitGreeting(addr, 30*time.Second, exited); err != nil {
		log, _ := os.ReadFile(maillog)
		t.Fatalf("Postfix did not start: %v\n%s\n%s", err, out.String(), log)
	}
	return maillog
}

// waitGreeting dials addr until it answers with a 220 greeting, the
// process behind it exits (exited, when not nil, says so) or timeout
// passes: a server started as a child announces readiness no other way.
func waitGreeting(addr string, timeout time.Duration, exited func() bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if exited != nil && exited() {
			return errors.New("the process exited")
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err == nil && strings.HasPrefix(line, "220") {
				return nil
			}
			last = fmt.Errorf("greeting %q: %v", line, err)
		} else {
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not answering with 220 within %s: %v", addr, timeout, last)
}

var verpRE = regexp.MustCompile(`from=<(b\+[a-z2-7]{32}@bounces\.postern\.test)>`)

// TestPostfixBouncesToListenMX: postern delivers to Postfix with a VERP
// return path; Postfix accepts the unknown user, bounces it later to that
// return path, at listen.mx; the bounce becomes a message.bounced (the log
// line) and a suppression, and the next message to the address is refused
// at RCPT. listen.mx refuses every other recipient and never relays; a
// complaint report to the same return path becomes message.complained.
func TestPostfixBouncesToListenMX(t *testing.T) {
	t.Parallel()
	postfixBouncesToListenMX(t, false)
}

// The same with the PostgreSQL queue: the trace, the suppression and the
// events live in the database, where any node's listen.mx finds them.
func TestPostfixBouncesToListenMXPostgres(t *testing.T) {
	t.Parallel()
	postfixBouncesToListenMX(t, true)
}

func postfixBouncesToListenMX(t *testing.T, pg bool) {
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	mxAddr := freeAddr(t)
	cfg.MX, cfg.Extra = mxAddr, "bounces: {domain: bounces.postern.test}\n"
	dir := t.TempDir()
	if pg {
		cfg.Extra += postgresQueue(t, dir, pgtest.DB(t), "30s")
	}
	in := newInstanceIn(t, dir, cfg)
	maillog := postfixMX(t, fmt.Sprintf("127.0.2.2:%d", w.port), mxAddr)
	in.start()

	if out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@sender.test", "--to", "nosuchuser@dest.test", "--data", swaksData); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	e := in.waitLog(60*time.Second, func(e logEntry) bool { return e.isMsg("mx: message.bounced") })
	if e.str("rcpt") != "nosuchuser@dest.test" || e["suppressed"] != true {
		t.Errorf("bounce log line %v", e)
	}
	// Postfix saw the VERP return path, not the sender.
	log, _ := os.ReadFile(maillog)
	m := verpRE.FindSubmatch(log)
	if m == nil {
		t.Fatalf("Postfix's log shows no VERP return path:\n%s", log)
	}
	// postern accepted the message before Postfix bounced it: it was
	// delivered, and the bounce reached postern by listen.mx alone.
	if n := len(in.logs.all(func(e logEntry) bool { return e.isMsg("delivered") })); n != 1 {
		t.Errorf("%d delivered lines, want 1", n)
	}

	out, err := in.postern("", "suppression", "list")
	if err != nil || !strings.Contains(out, "nosuchuser@dest.test") || !strings.Contains(out, "bounce") {
		t.Errorf("suppression list: %v\n%s", err, out)
	}
	refused := pySMTP(t, in.cfg.Relay, "app@sender.test", []string{"nosuchuser@dest.test"}, nil, nil)
	if got := refused["nosuchuser@dest.test"]; !strings.HasPrefix(got, "550 5.1.1 Recipient address suppressed") {
		t.Errorf("second message: %q, want refused at RCPT", got)
	}

	// listen.mx: nothing but valid tokens, never a relay.
	d := dial(t, mxAddr)
	for _, c := range []struct{ send, want string }{
		{"EHLO mx.dest.test", "250"},
		{"AUTH PLAIN AGFwcABzZWNyZXQ=", "5"}, // no AUTH here
		{"MAIL FROM:<>", "250"},
		{"RCPT TO:<bob@dest.test>", "550 5.7.1"},
		{"RCPT TO:<postmaster@bounces.postern.test>", "550 5.1.1"},
		{"RCPT TO:<b+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@bounces.postern.test>", "550 5.1.1"},
	} {
		if got := d.cmd(c.send); !strings.HasPrefix(got, c.want) {
			t.Errorf("%s: %q, want %s", c.send, got, c.want)
		}
	}

	// Last, a complaint (RFC 5965 Appendix B's report) about the same
	// message to the same return path: message.complained, and the
	// suppression becomes a complaint.
	arf, err := os.ReadFile(filepath.Join("..", "..", "relay", "bounces", "testdata", "arf-rfc5965.eml"))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, mxAddr)
	for _, line := range []string{"EHLO fbl.example.com", "MAIL FROM:<>", "RCPT TO:<" + string(m[1]) + ">"} {
		if got := c.cmd(line); !strings.HasPrefix(got, "250") {
			t.Fatalf("%s: %q", line, got)
		}
	}
	if got := c.cmd("DATA"); !strings.HasPrefix(got, "354") {
		t.Fatalf("DATA: %q", got)
	}
	// No line of the sample starts with a dot: no dot-stuffing needed.
	body := strings.ReplaceAll(strings.TrimRight(string(arf), "\n"), "\n", "\r\n")
	if got := c.cmd(body + "\r\n."); !strings.HasPrefix(got, "250") {
		t.Fatalf("end of DATA: %q", got)
	}
	e = in.waitLog(30*time.Second, func(e logEntry) bool { return e.isMsg("mx: message.complained") })
	if e.str("rcpt") != "nosuchuser@dest.test" || e.str("feedback_type") != "abuse" {
		t.Errorf("complaint log line %v", e)
	}
	out, _ = in.postern("", "suppression", "list")
	if !strings.Contains(out, "complaint") {
		t.Errorf("suppression list after the complaint:\n%s", out)
	}
}

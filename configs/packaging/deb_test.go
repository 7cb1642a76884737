package packaging_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDebPackage builds the .deb with `make package`, installs it with
// dpkg -i, makes a config with postern init, starts postern from the
// unit's ExecStartPre and ExecStart lines as the unit's user (no systemd
// needed), sends a message through the installed sendmail as an ordinary
// user, and purges the package: nothing of it is left, and the Postfix
// package the test machines carry still has every file as it was.
//
// It changes the machine (a package, a system user), so it needs root
// and dpkg, as make test has; elsewhere POSTERN_NO_ROOT_TESTS=1 leaves it
// out knowingly. It refuses to run where a postern package is already
// installed.
func TestDebPackage(t *testing.T) {
	_, noDpkg := exec.LookPath("dpkg")
	if os.Geteuid() != 0 || noDpkg != nil {
		if os.Getenv("POSTERN_NO_ROOT_TESTS") == "1" {
			t.Skip("POSTERN_NO_ROOT_TESTS=1: the package test needs root and dpkg")
		}
		t.Fatal("the package test installs a .deb: it needs root and dpkg (make test in CI has both); or set POSTERN_NO_ROOT_TESTS=1")
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "postern").Output(); strings.Contains(string(out), "installed") {
		t.Fatalf("a postern package is installed (%s): the test would replace it", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// What must be the same afterwards: the MTA that owns
	// /usr/sbin/sendmail (Postfix here), byte for byte.
	before := mtaState(t)

	run("make", "-C", "../..", "package")
	debs, _ := filepath.Glob("../../bin/postern_*.deb")
	if len(debs) != 1 {
		t.Fatalf("make package made %v", debs)
	}
	t.Cleanup(func() { exec.Command("dpkg", "-P", "postern").Run() })
	out := run("dpkg", "-i", debs[0])

	// The user, the data directory and the maildrop, the unit.
	u, err := user.Lookup("postern")
	if err != nil {
		t.Fatalf("no postern user after install: %v\n%s", err, out)
	}
	for path, want := range map[string]os.FileMode{
		"/var/lib/postern":          os.ModeDir | 0o711,
		"/var/lib/postern/maildrop": os.ModeDir | os.ModeSetgid | os.ModeSticky | 0o733,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != want || fmt.Sprint(st.Uid) != u.Uid || fmt.Sprint(st.Gid) != u.Gid {
			t.Errorf("%s: %v %d:%d, want %v postern:postern", path, fi.Mode(), st.Uid, st.Gid, want)
		}
	}
	unit, err := os.ReadFile("/lib/systemd/system/postern.service")
	if err != nil {
		t.Fatal(err)
	}

	// sendmail: the alternative where no MTA owns the path; else that MTA
	// keeps it, and postern's is the alternative's target.
	sendmail := "/usr/sbin/sendmail"
	if before.owner != "" {
		if !strings.Contains(out, "belongs to "+before.owner) {
			t.Errorf("postinst did not say it left %s's sendmail alone:\n%s", before.owner, out)
		}
		if got := mtaState(t); got != before {
			t.Fatalf("installing postern changed %s's sendmail:\n%+v\n%+v", before.owner, before, got)
		}
		sendmail = "/usr/lib/postern/sendmail"
		t.Logf("%s owns /usr/sbin/sendmail: sending through %s", before.owner, sendmail)
	} else if dst, _ := filepath.EvalSymlinks("/usr/sbin/sendmail"); dst != "/usr/bin/postern" {
		t.Fatalf("/usr/sbin/sendmail is %q, not postern's alternative", dst)
	}

	// A config from postern init, on loopback ports, in capture mode.
	run("postern", "init", "--yes", "--hostname", "mail.example.test")
	cfgPath := "/etc/postern/postern.yaml"
	if fi, err := os.Stat(cfgPath); err != nil || fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) != u.Uid || fi.Mode().Perm()&0o004 == 0 {
		t.Fatalf("init's config: %v, %v: want it the postern user's and readable by sendmail's users", err, fi)
	}
	cfg, _ := os.ReadFile(cfgPath)
	text := string(cfg)
	for _, l := range []string{"submission", "submissions", "relay", "admin"} {
		old := lineOf(t, text, "  "+l+": ")
		text = strings.Replace(text, old, fmt.Sprintf("  %s: %q", l, freeAddr(t)), 1)
	}
	text += "delivery: {mode: capture}\n"
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	// ExecStartPre and ExecStart as the unit's User=, with $NOTIFY_SOCKET
	// as systemd would set it: READY=1 says it started.
	asUser := func(name string, argv []string) *exec.Cmd {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		return exec.CommandContext(ctx, "setpriv", append([]string{"--reuid=" + u.Uid, "--regid=" + u.Gid, "--init-groups", "--"}, argv...)...)
	}
	if b, err := asUser("postern", execLine(t, unit, "ExecStartPre")).CombinedOutput(); err != nil {
		t.Fatalf("ExecStartPre: %v\n%s", err, b)
	}
	// Not in t.TempDir(), whose parent only root may enter.
	sockDir, err := os.MkdirTemp("", "postern-notify-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	os.Chmod(sockDir, 0o755)
	notify := filepath.Join(sockDir, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	os.Chmod(notify, 0o777) // the postern user writes to it
	serve := asUser("postern", execLine(t, unit, "ExecStart"))
	serve.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	logs, _ := serve.StderrPipe()
	captured := make(chan string, 1)
	var logText bytes.Buffer
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		s := bufio.NewScanner(io.TeeReader(logs, &logText))
		for s.Scan() {
			if strings.Contains(s.Text(), "captured") {
				select {
				case captured <- s.Text():
				default:
				}
			}
		}
	}()
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			serve.Process.Signal(syscall.SIGTERM)
			<-logDone
			serve.Wait()
		}
	}
	defer stop()
	sock.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 64)
	if n, err := sock.Read(buf); err != nil || string(buf[:n]) != "READY=1" {
		serve.Process.Kill()
		<-logDone
		t.Fatalf("no READY=1 from serve: %q, %v\n%s", buf[:n], err, logText.String())
	}

	// A message through sendmail, from a user who is not postern.
	send := asUser("nobody", []string{sendmail, "-v", "-t", "-f", "postmaster@example.test"})
	send.Stdin = strings.NewReader("To: bob@example.org\nSubject: from the package test\n\nhello\n")
	if b, err := send.CombinedOutput(); err != nil || !strings.Contains(string(b), "250") {
		t.Fatalf("sendmail: %v\n%s", err, b)
	}
	select {
	case line := <-captured:
		t.Log(line)
	case <-ctx.Done():
		t.Fatalf("the message was not captured\n%s", logText.String())
	}
	msgs, _ := filepath.Glob("/var/lib/postern/capture/new/*")
	if len(msgs) != 1 {
		t.Fatalf("capture/new holds %v", msgs)
	}
	msg, _ := os.ReadFile(msgs[0])
	if !bytes.Contains(msg, []byte("Subject: from the package test")) || !bytes.Contains(msg, []byte("DKIM-Signature:")) {
		t.Errorf("the captured message is not the one sent, signed:\n%s", msg)
	}
	stop()
	if serve.ProcessState == nil || !serve.ProcessState.Success() {
		t.Errorf("serve did not exit cleanly on SIGTERM: %v\n%s", serve.ProcessState, logText.String())
	}

	// Removed, the configuration stays; purged, nothing is left.
	run("dpkg", "-r", "postern")
	if _, err := os.Stat(cfgPath); err != nil {
		t.Errorf("dpkg -r removed the configuration: %v", err)
	}
	run("dpkg", "-P", "postern")
	for _, p := range []string{"/etc/postern", "/var/lib/postern", "/usr/bin/postern", "/usr/lib/postern", "/lib/systemd/system/postern.service", "/usr/share/doc/postern"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is left after purge", p)
		}
	}
	if _, err := user.Lookup("postern"); err == nil {
		t.Error("the postern user is left after purge")
	}
	if _, err := user.LookupGroup("postern"); err == nil {
		t.Error("the postern group is left after purge")
	}
	if b, err := exec.Command("update-alternatives", "--query", "sendmail").CombinedOutput(); err == nil && strings.Contains(string(b), "postern") {
		t.Errorf("the sendmail alternative is left after purge:\n%s", b)
	}
	if after := mtaState(t); after != before {
		t.Errorf("the MTA's files changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

// mta is what the machine's MTA package looks like: the package owning
// /usr/sbin/sendmail, the file's hash, mailq's link, and dpkg --verify's
// report on that package (empty when every file is as shipped).
type mta struct {
	owner, sendmail, mailq, verify string
}

func mtaState(t *testing.T) mta {
	t.Helper()
	var m mta
	if out, err := exec.Command("dpkg-query", "-S", "/usr/sbin/sendmail").Output(); err == nil {
		m.owner, _, _ = strings.Cut(strings.TrimSpace(string(out)), ":")
	}
	if m.owner == "postern" {
		m.owner = ""
	}
	if b, err := os.ReadFile("/usr/sbin/sendmail"); err == nil {
		m.sendmail = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	m.mailq, _ = os.Readlink("/usr/bin/mailq")
	if m.owner != "" {
		out, _ := exec.Command("dpkg", "--verify", m.owner).CombinedOutput()
		m.verify = string(out)
	}
	return m
}

// execLine is the command of the unit's KEY= line, split into words (the
// unit's lines have no quoting).
func execLine(t *testing.T, unit []byte, key string) []string {
	t.Helper()
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("the unit has no %s= line", key)
	return nil
}

func lineOf(t *testing.T, text, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no line %q in\n%s", prefix, text)
	return ""
}

// freeAddr is a loopback address with a port free now, on 127.0.4.9:
// not 127.0.0.1, whose ephemeral ports other tests' connections take.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.4.9:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

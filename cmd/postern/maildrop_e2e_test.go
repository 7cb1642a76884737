package main

// End-to-end tests of the maildrop (relay/pickup): `postern sendmail` run
// by an unprivileged local user while the daemon is stopped leaves the
// message in data_dir/maildrop, where no other user can see it, and the
// daemon queues it when it starts. The commands run as other users
// through setpriv (util-linux), so these tests need root.

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"postern/relay/pickup"
	"postern/relay/relaytest"
)

// The users the tests run commands as: nobody, a user ID with no account
// at all, in no group of the server's, and the server's own user and
// group, as a package would make them (without an account: none is
// needed).
const (
	nobodyUID = 65534
	otherUID  = 65533
	serverUID = 65532
)

func needRootAndSetpriv(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("POSTERN_NO_ROOT_TESTS") != "" {
			t.Skip("POSTERN_NO_ROOT_TESTS is set")
		}
		t.Fatal("this test runs commands as other users and needs root (set POSTERN_NO_ROOT_TESTS=1 to leave it out knowingly)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is not installed")
	}
}

// openInstance is an instance whose directory and config every local user
// can read, as /etc/postern and the data_dir's parent are on a real
// system (t.TempDir's parent is private to root).
func openInstance(t *testing.T, cfg testConfig) *instance {
	t.Helper()
	dir, err := os.MkdirTemp("", "postern-maildrop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in := newInstanceIn(t, dir, cfg)
	if err := os.Chmod(in.cfgPath, 0o644); err != nil {
		t.Fatal(err)
	}
	// The built binary stands for /usr/local/bin/postern, which every
	// user may run.
	if err := os.Chmod(filepath.Dir(binPath), 0o755); err != nil {
		t.Fatal(err)
	}
	return in
}

// setprivArgs is the command line prefix that runs a command as uid, its
// group the same number, with no other groups.
func setprivArgs(uid int) []string {
	id := strconv.Itoa(uid)
	return []string{"setpriv", "--reuid=" + id, "--regid=" + id, "--clear-groups", "--"}
}

// runAs runs a command as uid (its group the same number, no other
// groups), with stdin, and returns its output and exit code.
func runAs(t *testing.T, uid int, stdin string, name string, args ...string) (string, int) {
	t.Helper()
	argv := append(append(setprivArgs(uid), name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	return runCmd(t, cmd, stdin)
}

// drops lists the drops waiting in the maildrop (not bad/, not temporary
// files).
func drops(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Name() != pickup.BadDir && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

func TestMaildropWhileStopped(t *testing.T) {
	t.Parallel()
	needRootAndSetpriv(t)
	w := newWorld(t)
	w.mx("example.org", "127.0.2.2")
	// The MX offers DSN, so that the DSN requests are seen to travel from
	// sendmail through the drop and the queue to it.
	rcv := w.receiver("127.0.2.2", relaytest.WithServer(func(s *smtp.Server) { s.EnableDSN = true }))
	in := openInstance(t, w.config())
	// The server runs as its own user, as in production: the installer
	// made data_dir for it, and a start and a stop made the maildrop.
	// So the server reads drops through the group the maildrop gives
	// them, not as root.
	data := filepath.Join(in.dir, "data")
	maildrop := filepath.Join(data, "maildrop")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, serverUID, serverUID); err != nil {
		t.Fatal(err)
	}
	in.wrap = setprivArgs(serverUID)
	in.start()
	in.stop()
	for path, want := range map[string]fs.FileMode{data: fs.ModeDir | 0o701, maildrop: pickup.DirMode} {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode() != want || fi.Sys().(*syscall.Stat_t).Uid != serverUID || fi.Sys().(*syscall.Stat_t).Gid != serverUID {
			t.Fatalf("%s: %v, %v; want mode %v, owned by %d:%d\n%s", path, fi.Mode(), err, want, serverUID, serverUID, in.logs.String())
		}
	}

	// nobody runs sendmail with the daemon down: exit 0, one drop.
	out, code := runAs(t, nobodyUID, "To: b@example.org\nSubject: dropped\n\nwritten while postern was down\n",
		binPath, "sendmail", "--config", in.cfgPath, "-t", "-v", "-N", "failure,delay", "-R", "hdrs", "-V", "env-7")
	if code != 0 || !strings.Contains(out, "left in the maildrop as "+maildrop+"/") || !strings.Contains(out, "cannot reach postern at "+in.cfg.Relay) {
		t.Fatalf("sendmail as nobody with postern stopped: exit %d\n%s", code, out)
	}
	waiting := drops(t, maildrop)
	if len(waiting) != 1 {
		t.Fatalf("drops in the maildrop: %q, want one", waiting)
	}
	drop := waiting[0]
	fi, err := os.Lstat(drop)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobodyUID || st.Gid != serverUID || fi.Mode() != pickup.DropMode {
		t.Errorf("drop %s: uid %d gid %d mode %v; want nobody's, the server's group %d, %v", drop, st.Uid, st.Gid, fi.Mode(), serverUID, pickup.DropMode)
	}
	// Another local user can neither list the maildrop nor read the drop.
	if out, code := runAs(t, otherUID, "", "ls", maildrop); code == 0 || !strings.Contains(out, "Permission denied") {
		t.Errorf("uid %d listed the maildrop: exit %d\n%s", otherUID, code, out)
	}
	if out, code := runAs(t, otherUID, "", "cat", drop); code == 0 || !strings.Contains(out, "Permission denied") || strings.Contains(out, "dropped") {
		t.Errorf("uid %d read the drop: exit %d\n%s", otherUID, code, out)
	}
	// Nor delete or replace it (the sticky bit).
	if out, code := runAs(t, otherUID, "", "rm", "-f", drop); code == 0 {
		t.Errorf("uid %d removed the drop\n%s", otherUID, out)
	}

	// The daemon starts and picks it up.
	in.start()
	e := in.waitLog(20*time.Second, func(e logEntry) bool { return e.isMsg("picked up") })
	if e["uid"] != float64(nobodyUID) || e.str("user") != "nobody" || e.str("id") == "" || e.str("file") != filepath.Base(drop) {
		t.Errorf("picked up line: %v", e)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	m := msgs[0]
	if m.From != "nobody@postern.test" || !reflect.DeepEqual(m.To, []string{"b@example.org"}) {
		t.Errorf("envelope %q -> %q, want nobody@postern.test -> b@example.org", m.From, m.To)
	}
	if !bytes.HasPrefix(m.Data, []byte("Received: by postern.test (postern, from userid 65534 nobody)\r\n\tfor <b@example.org>;")) {
		t.Errorf("the message does not start with a Received field naming uid 65534:\n%s", m.Data)
	}
	for _, want := range []string{"\r\nFrom: <nobody@postern.test>\r\n", "\r\nSubject: dropped\r\n", "\r\nMessage-ID: <", "\r\n\r\nwritten while postern was down\r\n"} {
		if !bytes.Contains(m.Data, []byte(want)) {
			t.Errorf("the message lacks %q:\n%s", want, m.Data)
		}
	}
	if m.Opts.Return != smtp.DSNReturnHeaders || m.Opts.EnvelopeID != "env-7" ||
		len(m.RcptOpts) != 1 || !reflect.DeepEqual(m.RcptOpts[0].Notify, []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}) {
		t.Errorf("DSN requests at the MX: RET %q ENVID %q NOTIFY %v; want HDRS, env-7, FAILURE,DELAY", m.Opts.Return, m.Opts.EnvelopeID, m.RcptOpts)
	}
	if _, err := os.Lstat(drop); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the drop is still there after it was queued: %v", err)
	}
	in.waitLog(20*time.Second, func(e logEntry) bool { return e.isMsg("delivered") })
}

// TestMaildropRefusals: with the daemon running, what a user puts in the
// maildrop that is not a drop sendmail made is moved aside and logged,
// never queued; sendmail itself still submits over SMTP, leaving nothing
// in the maildrop.
func TestMaildropRefusals(t *testing.T) {
	t.Parallel()
	needRootAndSetpriv(t)
	w := newWorld(t)
	w.mx("example.org", "127.0.2.3")
	rcv := w.receiver("127.0.2.3")
	in := openInstance(t, w.config())
	in.start()
	maildrop := filepath.Join(in.dir, "data", "maildrop")
	bad := filepath.Join(maildrop, pickup.BadDir)

	// A valid drop's bytes, in a file nobody owns outside the maildrop
	// (but on its file system, for the hard link).
	valid, err := (&pickup.Drop{From: "nobody@postern.test", Rcpts: []string{"b@example.org"}}).Encode([]byte("Subject: planted\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(in.dir, "planted")
	if err := os.WriteFile(planted, valid, 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chown(planted, nobodyUID, nobodyUID)

	refused := func(name, reason string) {
		t.Helper()
		path := filepath.Join(maildrop, name)
		e := in.waitLog(20*time.Second, func(e logEntry) bool { return e.isMsg("drop refused") && e.str("file") == path })
		if !strings.Contains(e.str("reason"), reason) || e.str("moved_to") != filepath.Join(bad, name) || e["uid"] != float64(nobodyUID) {
			t.Errorf("refusal of %s: %v; want reason %q, moved into bad/, uid %d", name, e, reason, nobodyUID)
		}
		if _, err := os.Lstat(filepath.Join(bad, name)); err != nil {
			t.Errorf("%s is not in bad/: %v", name, err)
		}
	}
	for _, c := range []struct {
		name, reason string
		cmd          []string
	}{
		{"garbage", "envelope line: does not start with {", []string{"sh", "-c", "printf 'Subject: no envelope\\n\\nx\\n' > " + maildrop + "/garbage"}},
		{"symlink", "is a symbolic link (to " + planted + ")", []string{"ln", "-s", planted, maildrop + "/symlink"}},
		{"hardlink", "has 2 hard links", []string{"ln", planted, maildrop + "/hardlink"}},
	} {
		if out, code := runAs(t, nobodyUID, "", c.cmd[0], c.cmd[1:]...); code != 0 {
			t.Fatalf("%q as nobody: exit %d\n%s", c.cmd, code, out)
		}
		refused(c.name, c.reason)
	}

	// The daemon is up: sendmail submits over SMTP, as before.
	out, code := runAs(t, nobodyUID, "Subject: over SMTP\n\nx\n", binPath, "sendmail", "--config", in.cfgPath, "-v", "b@example.org")
	if code != 0 || !strings.HasPrefix(out, "250 2.0.0 OK: queued as ") {
		t.Fatalf("sendmail with postern running: exit %d\n%s", code, out)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	if !bytes.HasPrefix(msgs[0].Data, []byte("Received: from postern.test ([127.0.0.1])")) || !bytes.Contains(msgs[0].Data, []byte("Subject: over SMTP")) {
		t.Errorf("the message did not come over SMTP:\n%s", msgs[0].Data)
	}
	if d := drops(t, maildrop); len(d) != 0 {
		t.Errorf("drops written with postern running: %q", d)
	}
	if n := len(in.logs.all(func(e logEntry) bool { return e.isMsg("picked up") })); n != 0 {
		t.Errorf("%d drops picked up; none was a drop sendmail made", n)
	}
	in.stop()
	if n := len(rcv.Messages()); n != 1 {
		t.Errorf("the MX got %d messages, want only the one over SMTP: a refused drop was sent", n)
	}
}

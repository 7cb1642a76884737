//go:build unix

package pickup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"postern/queue"
	"postern/relay/status"
	"postern/relay/submit"
)

// fakeSubmit records what it is given and answers with errs, one per
// call (nil once they run out). It reads each message to its end, as the
// queue does, so that the pickup's reader's errors come back from it.
type fakeSubmit struct {
	mu    sync.Mutex
	errs  []error
	calls []submitted
	done  chan struct{} // when set, receives after each call
}

type submitted struct {
	env    *queue.Envelope
	origin *submit.Origin
	msg    string
}

func (f *fakeSubmit) Submit(ctx context.Context, env *queue.Envelope, o *submit.Origin, br *bufio.Reader) (string, int64, error) {
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		if f.done != nil {
			f.done <- struct{}{}
		}
	}()
	msg, err := io.ReadAll(br)
	if err != nil {
		return "", 0, err
	}
	f.calls = append(f.calls, submitted{env, o, string(msg)})
	n := len(f.calls)
	if n <= len(f.errs) && f.errs[n-1] != nil {
		return "", 0, f.errs[n-1]
	}
	return fmt.Sprintf("%016X", n), int64(len(msg)), nil
}

// logs collects the pickup's JSON log lines.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// lines returns the log lines with message msg.
func (l *logs) lines(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

type fixture struct {
	t   *testing.T
	dir string
	sub *fakeSubmit
	log *logs
	p   *Pickup
	now time.Time // when the fixture was made: drops are dated from it
}

func newFixture(t *testing.T, lim Limits) *fixture {
	dir := filepath.Join(dataDir(t), "maildrop")
	if _, err := Prepare(dir); err != nil {
		t.Fatal(err)
	}
	// The pickup keeps the real clock: the files' times are real too.
	f := &fixture{t: t, dir: dir, sub: &fakeSubmit{}, log: &logs{}, now: time.Now()}
	f.p = New(Options{
		Dir: dir, Submit: f.sub, Limits: lim,
		Logger:     slog.New(slog.NewJSONHandler(f.log, nil)),
		LookupUser: func(uid int) string { return fmt.Sprintf("user%d", uid) },
	})
	return f
}

// drop writes a drop as sendmail does, made at the fixture's time plus
// age, and returns its name.
func (f *fixture) drop(d *Drop, msg string, at time.Duration) string {
	f.t.Helper()
	path, err := Write(f.dir, d, []byte(msg), f.now.Add(at))
	if err != nil {
		f.t.Fatal(err)
	}
	return filepath.Base(path)
}

// raw writes data under name, as a user could.
func (f *fixture) raw(name, data string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(data), 0o640); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) exists(name string) bool {
	_, err := os.Lstat(filepath.Join(f.dir, name))
	return err == nil
}

// refused checks that name was moved into bad/ and logged with its
// reason (or reply code), and that nothing of it was queued.
func (f *fixture) refused(name, reason string, code float64) {
	f.t.Helper()
	if f.exists(name) {
		f.t.Errorf("%s is still in the maildrop", name)
	}
	if _, err := os.Lstat(filepath.Join(f.dir, BadDir, name)); err != nil {
		f.t.Errorf("%s was not moved into bad/: %v", name, err)
	}
	for _, l := range f.log.lines("drop refused") {
		if l["file"] != filepath.Join(f.dir, name) || l["moved_to"] != filepath.Join(f.dir, BadDir, name) {
			continue
		}
		r, _ := l["reason"].(string)
		rep, _ := l["reply"].(map[string]any)
		if reason != "" && strings.Contains(r, reason) || code != 0 && rep["code"] == code {
			return
		}
		f.t.Errorf("%s refused with %v, want reason %q or code %v", name, l, reason, code)
		return
	}
	f.t.Errorf("no \"drop refused\" line for %s:\n%s", name, f.log.buf.String())
}

var drop1 = &Drop{From: "app@example.org", Rcpts: []string{"bob@example.org", "carol@example.net"}, Notify: []string{"FAILURE"}, Ret: "HDRS", EnvID: "e1"}

func TestPickupQueuesInOrder(t *testing.T) {
	f := newFixture(t, Limits{})
	// Written latest first: the pickup goes by the names, which sort by
	// the time each drop was made.
	third := f.drop(&Drop{From: "", Rcpts: []string{"c@example.org"}}, "Subject: 3\r\n\r\n", 3*time.Second)
	second := f.drop(&Drop{From: "b@example.org", Rcpts: []string{"c@example.org"}}, "Subject: 2\r\n\r\n", 2*time.Second)
	first := f.drop(drop1, testMsg, time.Second)
	wantUID := os.Getuid()
	if os.Geteuid() == 0 {
		// The owner the kernel recorded, not the daemon's.
		os.Chown(filepath.Join(f.dir, first), 65534, 65534)
		wantUID = 65534
	}

	if r := f.p.Scan(context.Background()); r != (Round{PickedUp: 3}) {
		t.Fatalf("Scan = %+v\n%s", r, f.log.buf.String())
	}
	if len(f.sub.calls) != 3 {
		t.Fatalf("%d submissions, want 3", len(f.sub.calls))
	}
	c := f.sub.calls[0]
	wantEnv := &queue.Envelope{From: "app@example.org", Rcpts: []string{"bob@example.org", "carol@example.net"}, Listener: "maildrop",
		Ret: "HDRS", EnvID: "e1", DSN: []queue.RcptDSN{{Notify: []string{"FAILURE"}}, {Notify: []string{"FAILURE"}}}}
	if !reflect.DeepEqual(c.env, wantEnv) {
		t.Errorf("envelope %+v, want %+v", c.env, wantEnv)
	}
	if c.origin.UID != wantUID || c.origin.UserName != fmt.Sprintf("user%d", wantUID) || c.origin.IP.IsValid() || c.origin.User != nil {
		t.Errorf("origin %+v, want the local user %d", c.origin, wantUID)
	}
	if c.msg != testMsg {
		t.Errorf("message %q, want %q", c.msg, testMsg)
	}
	if f.sub.calls[1].env.From != "b@example.org" || f.sub.calls[2].env.From != "" || f.sub.calls[2].env.DSN != nil {
		t.Errorf("order or envelopes: %+v, %+v", f.sub.calls[1].env, f.sub.calls[2].env)
	}
	for _, n := range []string{first, second, third} {
		if f.exists(n) {
			t.Errorf("%s is still in the maildrop after it was queued", n)
		}
	}
	lines := f.log.lines("picked up")
	if len(lines) != 3 || lines[0]["id"] != "0000000000000001" || lines[0]["uid"] != float64(wantUID) || lines[0]["file"] != first {
		t.Errorf("picked up lines: %v", lines)
	}
	// Nothing left: the next round does nothing.
	if r := f.p.Scan(context.Background()); r != (Round{}) || len(f.sub.calls) != 3 {
		t.Errorf("second Scan = %+v, %d calls", r, len(f.sub.calls))
	}
}

func TestPickupTemporaryFailureLeavesTheDrop(t *testing.T) {
	f := newFixture(t, Limits{})
	name := f.drop(drop1, testMsg, 0)
	f.sub.errs = []error{
		fmt.Errorf("queue: write spool file: %w", syscall.ENOSPC), // no status: temporary
		status.New(451, 3, 0, "try again"),
	}
	for i := range 2 {
		if r := f.p.Scan(context.Background()); r != (Round{Deferred: 1}) || !f.exists(name) {
			t.Fatalf("round %d: %+v, drop there: %v", i, r, f.exists(name))
		}
	}
	if n := len(f.log.lines("drop deferred")); n != 2 {
		t.Errorf("%d \"drop deferred\" lines, want 2", n)
	}
	if r := f.p.Scan(context.Background()); r != (Round{PickedUp: 1}) || f.exists(name) {
		t.Errorf("after the failures: %+v, drop there: %v", r, f.exists(name))
	}
}

func TestPickupPermanentFailureMovesAside(t *testing.T) {
	f := newFixture(t, Limits{})
	name := f.drop(drop1, testMsg, 0)
	f.sub.errs = []error{&submit.Rejected{Status: submit.ErrMailLoop}}
	if r := f.p.Scan(context.Background()); r != (Round{Refused: 1}) {
		t.Fatalf("Scan = %+v", r)
	}
	f.refused(name, "", 554)
	// It stays aside: the next round does not see it.
	if r := f.p.Scan(context.Background()); r != (Round{}) || len(f.sub.calls) != 1 {
		t.Errorf("next Scan = %+v, %d calls", r, len(f.sub.calls))
	}
}

// TestPickupRefuses: what is not a drop, or one the relay listener's
// rules refuse, is moved aside and logged, and never queued.
func TestPickupRefuses(t *testing.T) {
	f := newFixture(t, Limits{MaxMessageBytes: 100, MaxRecipients: 2, RecipientDomains: []string{"example.org", "example.net"}})
	f.raw("1-garbage", "From: me\r\n\r\nno envelope line\r\n")
	f.raw("2-version", `{"v":2,"from":"","rcpts":["b@example.org"]}`+"\n"+testMsg)
	// A symbolic link to a valid drop elsewhere: whose is it?
	elsewhere := filepath.Join(t.TempDir(), "x")
	valid, _ := drop1.Encode([]byte(testMsg))
	os.WriteFile(elsewhere, valid, 0o644)
	os.Symlink(elsewhere, filepath.Join(f.dir, "3-symlink"))
	// A hard link: both names are refused.
	f.raw("4-hardlink", string(valid))
	os.Link(filepath.Join(f.dir, "4-hardlink"), filepath.Join(f.dir, "5-hardlink"))
	syscall.Mkfifo(filepath.Join(f.dir, "6-fifo"), 0o640)
	os.Mkdir(filepath.Join(f.dir, "7-directory"), 0o755)
	f.drop(&Drop{From: "a@example.org", Rcpts: []string{"b@example.org", "c@example.org", "d@example.org"}}, testMsg, 0)
	f.drop(&Drop{From: "a@example.org", Rcpts: []string{"b@elsewhere.test"}}, testMsg, time.Second)
	f.drop(&Drop{From: "a@example.org", Rcpts: []string{"b@example.org"}}, "Subject: big\r\n\r\n"+strings.Repeat("x", 100)+"\r\n", 2*time.Second)
	f.drop(&Drop{From: "a@example.org", Rcpts: []string{"b@example.org"}}, "Subject: long\r\n\r\n"+strings.Repeat("x", 1999)+"\r\n", 3*time.Second)
	entries, _ := os.ReadDir(f.dir)
	var drops []string
	for _, e := range entries {
		if e.Name() != BadDir && e.Name()[0] >= '1' && e.Name()[0] <= '9' && len(e.Name()) > 20 {
			drops = append(drops, e.Name())
		}
	}

	r := f.p.Scan(context.Background())
	if r.PickedUp != 0 || r.Refused != 11 || r.Deferred != 0 {
		t.Errorf("Scan = %+v, want 11 refused\n%s", r, f.log.buf.String())
	}
	f.refused("1-garbage", "envelope line: does not start with {", 0)
	f.refused("2-version", "format version: version 2, want 1", 0)
	f.refused("3-symlink", "is a symbolic link (to "+elsewhere+")", 0)
	f.refused("4-hardlink", "has 2 hard links", 0)
	f.refused("5-hardlink", "has 2 hard links", 0)
	f.refused("6-fifo", "is not a regular file", 0)
	f.refused("7-directory", "is not a regular file", 0)
	f.refused(drops[0], "", 554) // too many recipients: 554 5.5.3
	f.refused(drops[1], "", 550) // a recipient domain the relay listener refuses
	f.refused(drops[2], "", 552) // over limits.max_message_size
	f.refused(drops[3], "", 554) // a line over 2,000 octets
	if b, err := os.ReadFile(elsewhere); err != nil || !bytes.Equal(b, valid) {
		t.Errorf("the symbolic link's target changed: %q, %v", b, err)
	}
	// The size and the line length are found while the message streams
	// into Submit, which then queues nothing.
	if len(f.sub.calls) != 0 {
		t.Errorf("%d refused drops were queued", len(f.sub.calls))
	}
}

// TestPickupFixesLineEnds: a drop with bare LF (written by hand, not by
// sendmail) reaches the pipeline with CRLF, as the relay listener would
// pass it from a trusted client.
func TestPickupFixesLineEnds(t *testing.T) {
	f := newFixture(t, Limits{})
	f.drop(drop1, "Subject: lf\n\nline\nbare\rcr\n", 0)
	if r := f.p.Scan(context.Background()); r != (Round{PickedUp: 1}) {
		t.Fatalf("Scan = %+v", r)
	}
	if got := f.sub.calls[0].msg; got != "Subject: lf\r\n\r\nline\r\nbare\r\ncr\r\n" {
		t.Errorf("message %q", got)
	}
}

// TestPickupTemporaryFiles: sendmail's temporary names start with a dot;
// the pickup leaves them while they may still be being written, and moves
// aside one abandoned for more than an hour.
func TestPickupTemporaryFiles(t *testing.T) {
	f := newFixture(t, Limits{})
	f.raw(".fresh.tmp-1", "{")
	f.raw(".old.tmp-2", "{")
	old := f.now.Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(f.dir, ".old.tmp-2"), old, old)
	os.Chtimes(filepath.Join(f.dir, ".fresh.tmp-1"), f.now, f.now)
	if r := f.p.Scan(context.Background()); r != (Round{Refused: 1}) || len(f.sub.calls) != 0 {
		t.Fatalf("Scan = %+v, %d calls", r, len(f.sub.calls))
	}
	if !f.exists(".fresh.tmp-1") {
		t.Error("a temporary file being written was moved")
	}
	f.refused(".old.tmp-2", "temporary file abandoned", 0)
}

// TestPickupStartStop: the loop takes a drop made before it started and
// one made while it runs, and Stop ends it.
func TestPickupStartStop(t *testing.T) {
	f := newFixture(t, Limits{})
	f.sub.done = make(chan struct{})
	f.drop(drop1, testMsg, 0)
	f.p.Start()
	<-f.sub.done
	f.drop(drop1, testMsg, time.Second)
	<-f.sub.done
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.p.Stop(ctx)
	if n := len(f.log.lines("picked up")); n != 2 {
		t.Errorf("%d picked up, want 2\n%s", n, f.log.buf.String())
	}
	entries, _ := os.ReadDir(f.dir)
	if len(entries) != 1 { // bad/
		t.Errorf("left in the maildrop: %v", entries)
	}
}

func TestLimitsCheck(t *testing.T) {
	lim := Limits{MaxRecipients: 1, SenderDomains: []string{"example.org."}, RecipientDomains: []string{"dest.test"}}
	for _, tt := range []struct {
		d    Drop
		part error
		code int
	}{
		{Drop{From: "a@example.org", Rcpts: []string{"b@dest.test"}}, nil, 0},
		{Drop{From: "", Rcpts: []string{"b@DEST.test"}}, nil, 0},
		{Drop{From: "a@example.org", Rcpts: []string{"b@dest.test", "c@dest.test"}}, ErrRcpt, 554},
		{Drop{From: "a@other.test", Rcpts: []string{"b@dest.test"}}, ErrSender, 553},
		{Drop{From: "a@example.org", Rcpts: []string{"b@other.test"}}, ErrRcpt, 550},
	} {
		err := lim.Check(&tt.d)
		if tt.part == nil {
			if err != nil {
				t.Errorf("Check(%+v) = %v", tt.d, err)
			}
			continue
		}
		if !errors.Is(err, tt.part) || status.From(err).Code != tt.code || !status.From(err).Permanent() {
			t.Errorf("Check(%+v) = %v, want %v with %d", tt.d, err, tt.part, tt.code)
		}
	}
	if err := (Limits{MaxMessageBytes: 10}).CheckMessage(strings.NewReader("0123456789")); err != nil {
		t.Errorf("10 bytes of 10: %v", err)
	}
	if err := (Limits{MaxMessageBytes: 10}).CheckMessage(strings.NewReader("0123456789x")); status.From(err).Code != 552 {
		t.Errorf("11 bytes of 10: %v", err)
	}
	line := strings.Repeat("x", maxLine-2) + "\r\n"
	if err := (Limits{}).CheckMessage(strings.NewReader(line + line)); err != nil {
		t.Errorf("lines of %d octets: %v", maxLine, err)
	}
	if err := (Limits{}).CheckMessage(strings.NewReader("x" + line)); status.From(err).Code != 554 {
		t.Errorf("a line of %d octets: %v", maxLine+1, err)
	}
}

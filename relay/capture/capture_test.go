package capture

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"postern/queue"
)

type body string

func (b body) Size() int64 { return int64(len(b)) }
func (b body) Open() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(string(b))), nil
}

type brokenBody struct{}

func (brokenBody) Size() int64                  { return 1 }
func (brokenBody) Open() (io.ReadCloser, error) { return nil, errors.New("disk on fire") }

func TestUniqueName(t *testing.T) {
	at := time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC)
	for _, tt := range []struct {
		host, want string
	}{
		{"postern.test", "1795514400.M123456P42Q7Rabcd.postern.test"},
		{"odd/host:name", `1795514400.M123456P42Q7Rabcd.odd\057host\072name`},
	} {
		if got := uniqueName(at, 42, 7, "abcd", tt.host); got != tt.want {
			t.Errorf("uniqueName(%q) = %q, want %q", tt.host, got, tt.want)
		}
	}
	// Microseconds keep their leading zeros, so that names sort by time
	// within a second.
	early := uniqueName(time.Unix(100, 5000), 1, 1, "r", "h")
	if !strings.HasPrefix(early, "100.M000005P1Q1") {
		t.Errorf("uniqueName = %q", early)
	}
}

func TestDeliver(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "capture")
	m, err := New(dir, Options{Hostname: "postern.test"})
	if err != nil {
		t.Fatal(err)
	}
	const msg = "From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n"
	names := map[string]bool{}
	for i := range 50 {
		d := &queue.Delivery{ID: "1", From: "a@x.test", Rcpts: []string{"b@y.test", "c@y.test"}, Domain: "y.test", Body: body(msg)}
		if i == 0 {
			d.From = "" // the null sender
		}
		for _, r := range m.Deliver(context.Background(), d) {
			if r.Outcome != queue.Delivered || !strings.HasPrefix(r.Reply.String(), "250 2.0.0 captured in "+dir) {
				t.Fatalf("result = %+v", r)
			}
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "new"))
	if len(entries) != 50 {
		t.Fatalf("new/ has %d files, want 50", len(entries))
	}
	nameRE := regexp.MustCompile(`^[0-9]+\.M[0-9]{6}P[0-9]+Q[0-9]+R[0-9a-f]{16}\.postern\.test$`)
	for _, e := range entries {
		if !nameRE.MatchString(e.Name()) {
			t.Errorf("file name %q does not follow the Maildir spec", e.Name())
		}
		names[e.Name()] = true
		if info, _ := e.Info(); info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", e.Name(), info.Mode())
		}
	}
	if len(names) != 50 {
		t.Errorf("%d distinct names for 50 messages", len(names))
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ keeps %d files", len(tmp))
	}
	if _, err := os.Stat(filepath.Join(dir, "cur")); err != nil {
		t.Errorf("cur/: %v", err)
	}
	var sawNull bool
	for name := range names {
		data, _ := os.ReadFile(filepath.Join(dir, "new", name))
		rest, ok := strings.CutSuffix(string(data), "Delivered-To: b@y.test\r\nDelivered-To: c@y.test\r\n"+msg)
		switch {
		case !ok:
			t.Fatalf("%s =\n%s", name, data)
		case rest == "Return-Path: <>\r\n":
			sawNull = true
		case rest != "Return-Path: <a@x.test>\r\n":
			t.Errorf("%s starts %q", name, rest)
		}
	}
	if !sawNull {
		t.Error("no file with Return-Path: <> for the null sender")
	}
}

func TestDeliverFailures(t *testing.T) {
	m, err := New(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := &queue.Delivery{ID: "1", From: "a@x.test", Rcpts: []string{"b@y.test"}, Body: brokenBody{}}
	if r := m.Deliver(context.Background(), d); r[0].Outcome != queue.Temporary || !strings.HasPrefix(r[0].Reply.String(), "451 4.3.0") {
		t.Errorf("unreadable body: %+v", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Body = body("x\r\n")
	if r := m.Deliver(ctx, d); r[0].Outcome != queue.Temporary {
		t.Errorf("canceled: %+v", r)
	}
	// A Maildir that cannot be written (its tmp/ gone) defers.
	os.RemoveAll(filepath.Join(m.Dir(), "tmp"))
	if r := m.Deliver(context.Background(), d); r[0].Outcome != queue.Temporary {
		t.Errorf("no tmp/: %+v", r)
	}
	if entries, _ := os.ReadDir(filepath.Join(m.Dir(), "new")); len(entries) != 0 {
		t.Errorf("new/ has %d files after failures", len(entries))
	}
}

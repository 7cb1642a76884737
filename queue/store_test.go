package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestEnqueueGet(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	env := &Envelope{From: "a@example.org", Rcpts: []string{"b@x.test", "c@y.test"},
		User: "alice", ClientIP: "192.0.2.1", Listener: "submission"}
	const body = "Subject: hi\r\n\r\nhello\r\n"
	id, err := q.Enqueue(context.Background(), env, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseID(id); err != nil {
		t.Fatalf("id %q: %v", id, err)
	}
	m := h.get(id)
	if m.ID != id || m.Envelope.From != env.From || !slices.Equal(m.Envelope.Rcpts, env.Rcpts) ||
		m.Envelope.User != "alice" || m.Envelope.ClientIP != "192.0.2.1" || m.Envelope.Listener != "submission" {
		t.Errorf("envelope = %+v", m.Envelope)
	}
	if m.Size != int64(len(body)) || !m.Created.Equal(t0) || len(m.Rcpts) != 2 {
		t.Errorf("message = %+v", m)
	}
	for _, r := range m.Rcpts {
		if r.State != StateQueued || r.Attempts != 0 || !r.NextAttempt.Equal(t0) {
			t.Errorf("recipient = %+v", r)
		}
	}
	if _, err := q.Get("00000000000000FF"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := q.Get("nonsense"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(malformed) = %v, want ErrNotFound", err)
	}
	if _, err := q.Enqueue(context.Background(), &Envelope{From: "a@b"}, strings.NewReader("x")); err == nil {
		t.Error("Enqueue without recipients succeeded")
	}
}

// spoolFiles lists the spool directory.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func randomBody(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestBodyStorage checks the boundary between inline and spooled bodies,
// and that each reads back byte-identical through a delivery and leaves
// nothing behind once delivered.
func TestBodyStorage(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		spooled bool
	}{
		{"empty", 0, false},
		{"small", 4 << 10, false},
		{"largest inline", inlineMax, false},
		{"smallest spooled", inlineMax + 1, true},
		{"large", 5<<20 + 123, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			q := h.open()
			body := randomBody(t, tt.size)
			id, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"b@x.test"}}, bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if m := h.get(id); m.Size != int64(tt.size) {
				t.Errorf("Size = %d, want %d", m.Size, tt.size)
			}
			if files := spoolFiles(t, h.spoolDir()); (len(files) == 1) != tt.spooled {
				t.Errorf("spool files = %v, spooled = %v", files, tt.spooled)
			}
			q.Start()
			h.wait(1)
			calls := h.fake.Calls()
			if len(calls) != 1 || !bytes.Equal(calls[0].body, body) || calls[0].Body.Size() != int64(tt.size) {
				t.Fatalf("body did not read back identical (calls %d)", len(calls))
			}
			if files := spoolFiles(t, h.spoolDir()); len(files) != 0 {
				t.Errorf("spool files left after delivery: %v", files)
			}
			if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
				t.Errorf("delivered message still queued: %v", err)
			}
		})
	}
}

func TestOrphanSpoolCleanup(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	id := h.enqueue("", string(randomBody(t, inlineMax+10)), "b@x.test")
	kept := spoolFiles(t, h.spoolDir())
	if len(kept) != 1 {
		t.Fatalf("spool files = %v", kept)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// What an Enqueue that crashed before its commit leaves behind.
	for _, name := range []string{"m0123456789abcdef", "junk"} {
		if err := os.WriteFile(filepath.Join(h.spoolDir(), name), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(h.spoolDir(), "subdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	h.open()
	if got, want := spoolFiles(t, h.spoolDir()), []string{kept[0], "subdir"}; !slices.Equal(got, want) {
		t.Errorf("after reopen spool holds %v, want %v", got, want)
	}
	if m := h.get(id); m.Size != inlineMax+10 {
		t.Errorf("spooled message damaged: %+v", m)
	}
}

// failingFile is a spool file whose writes fail like a full or read-only
// disk.
type failingFile struct {
	*os.File
	err error
}

func (f failingFile) Write(p []byte) (int, error) {
	return 0, &os.PathError{Op: "write", Path: f.Name(), Err: f.err}
}

// errReader returns n bytes and then err.
type errReader struct {
	n   int
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	r.n -= k
	clear(p[:k])
	return k, nil
}

// TestEnqueueFailureLeavesNothing: whatever step fails, the caller sees the
// cause (the session answers 452 4.3.1 for ENOSPC and EROFS) and the queue
// holds neither a record nor a spool file.
func TestEnqueueFailureLeavesNothing(t *testing.T) {
	errClient := errors.New("client went away")
	tests := []struct {
		name   string
		create func(string) (spoolFile, error)
		body   io.Reader
		want   error
	}{
		{"spool write ENOSPC", func(p string) (spoolFile, error) {
			f, err := createSpoolFile(p)
			return failingFile{f.(*os.File), syscall.ENOSPC}, err
		}, bytes.NewReader(make([]byte, inlineMax*3)), syscall.ENOSPC},
		{"spool create EROFS", func(p string) (spoolFile, error) {
			return nil, &os.PathError{Op: "open", Path: p, Err: syscall.EROFS}
		}, bytes.NewReader(make([]byte, inlineMax*3)), syscall.EROFS},
		{"body read error while spooling", createSpoolFile, &errReader{n: inlineMax * 2, err: errClient}, errClient},
		{"body read error while small", createSpoolFile, &errReader{n: 100, err: errClient}, errClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			q := h.open()
			q.createSpool = tt.create
			_, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"b@x.test"}}, tt.body)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Enqueue error = %v, want errors.Is %v", err, tt.want)
			}
			if files := spoolFiles(t, h.spoolDir()); len(files) != 0 {
				t.Errorf("spool files left: %v", files)
			}
			if ms, err := q.List(Filter{}); err != nil || len(ms) != 0 {
				t.Errorf("List = %d messages, %v", len(ms), err)
			}
		})
	}
}

func TestSecondOpenLocked(t *testing.T) {
	defer func(d time.Duration) { lockTimeout = d }(lockTimeout)
	lockTimeout = 100 * time.Millisecond
	h := newHarness(t)
	h.open()
	path := filepath.Join(h.dir, "queue.db")
	q2, err := Open(Options{Path: path})
	if err == nil {
		q2.Close(context.Background())
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open: %v; want ErrLocked naming %s", err, path)
	}
}

func TestCorruptFile(t *testing.T) {
	dir := t.TempDir()
	// A healthy queue file to damage.
	good := filepath.Join(dir, "good.db")
	q, err := Open(Options{Path: good})
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if _, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"a@b"}}, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	q.Close(context.Background())
	healthy, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}

	garbage := bytes.Repeat([]byte{0xAB}, 16<<10)
	zeroedMeta := slices.Clone(healthy)
	clear(zeroedMeta[:2*4096]) // both meta pages (page size 4096 here)
	// Valid meta pages over garbage: bbolt panics reading the freelist.
	badPages := slices.Clone(healthy)
	for i := 2 * 4096; i < len(badPages); i++ {
		badPages[i] = 0xAB
	}
	tests := map[string][]byte{
		"garbage pages": badPages,
		"garbage":       garbage,
		"zeroed meta":   zeroedMeta,
		"short header":  healthy[:100],
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".db")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			q, err := Open(Options{Path: path})
			if err == nil {
				q.Close(context.Background())
				t.Fatal("Open of a corrupt file succeeded")
			}
			if errors.Is(err, ErrLocked) {
				t.Errorf("corruption reported as a lock: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}

// TestConcurrentEnqueue: many sessions at once share commits (batch)
// and still each get a distinct, retrievable ID.
func TestConcurrentEnqueue(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	const writers, each = 20, 25
	ids := make(chan string, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				body := fmt.Sprintf("writer %d message %d", w, i)
				id, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"b@x.test"}}, strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
		if _, err := q.Get(id); err != nil {
			t.Fatalf("Get(%s): %v", id, err)
		}
	}
	ms, err := q.List(Filter{})
	if err != nil || len(ms) != writers*each || len(seen) != writers*each {
		t.Fatalf("List = %d messages (%v), ids %d", len(ms), err, len(seen))
	}
	if !slices.IsSortedFunc(ms, func(a, b *Message) int { return strings.Compare(a.ID, b.ID) }) {
		t.Error("List is not in ID order")
	}
	// Every message has exactly one schedule entry.
	err = q.db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bSchedule).Stats().KeyN; n != writers*each {
			t.Errorf("schedule holds %d entries", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestClosedQueue(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	// Close without Start, twice.
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	q.Start() // after Close: does nothing
	if _, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"a@b"}}, strings.NewReader("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close = %v", err)
	}
	if _, err := q.List(Filter{}); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close = %v", err)
	}
}

// TestLegacyReply: a record written before replies were typed keeps its
// reply as text, with the enhanced code the queue had decided itself; the
// text is shown and bounced as it is, never parsed back into a code. Such
// a record is written back in the typed form.
func TestLegacyReply(t *testing.T) {
	old := `{"env":{"from":"a@x.test"},"created":"2026-11-24T10:00:00Z","size":3,` +
		`"rcpts":[{"addr":"b@y.test","state":"failed","attempts":3,"reply":"retry lifetime 120h0m0s expired; last reply: 451 later","status":"5.4.7"},` +
		`{"addr":"c@y.test","state":"deferred","attempts":1,"reply":"451 4.3.0 try later"}]}`
	rec, err := decodeRecord([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if r := rec.Rcpts[0].LastReply; r != rp(0, "5.4.7", "retry lifetime 120h0m0s expired; last reply: 451 later") {
		t.Errorf("expired recipient: %+v", r)
	}
	if r := rec.Rcpts[1].LastReply; r != rp(0, "", "451 4.3.0 try later") {
		t.Errorf("deferred recipient: %+v", r)
	}
	data, err := marshalRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"reply"`) || strings.Contains(string(data), `"status"`) {
		t.Errorf("written back with the legacy fields: %s", data)
	}
	again, err := decodeRecord(data)
	if err != nil || again.Rcpts[0].LastReply != rec.Rcpts[0].LastReply || again.Rcpts[1].LastReply != rec.Rcpts[1].LastReply {
		t.Errorf("round trip: %+v, %v", again, err)
	}
}

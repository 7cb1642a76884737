package queue

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestHoldRelease(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	id := h.enqueue("alice@example.org", "x", "b@x.test")
	if err := q.Hold(id); err != nil {
		t.Fatal(err)
	}
	if err := q.Hold(id); err != nil {
		t.Errorf("second Hold: %v", err)
	}
	if m := h.get(id); !m.Held || m.State != StateHeld || m.Rcpts[0].State != StateQueued {
		t.Errorf("held message = %+v", m)
	}
	if jobs, next, _ := q.lease(t0.Add(1000*time.Hour), 10); len(jobs) != 0 || !next.IsZero() {
		t.Fatalf("held message leased (%d jobs, next %v)", len(jobs), next)
	}
	if err := q.Retry(id); !errors.Is(err, ErrHeld) {
		t.Errorf("Retry of a held message = %v, want ErrHeld", err)
	}
	if d := q.Depth(); d[StateHeld] != 1 || d[StateQueued] != 0 {
		t.Errorf("Depth = %v", d)
	}
	if ms, _ := q.List(Filter{State: StateHeld}); len(ms) != 1 || ms[0].ID != id {
		t.Errorf("List(held) = %v", ms)
	}

	h.clock.Advance(time.Hour)
	if err := q.Release(id); err != nil {
		t.Fatal(err)
	}
	if err := q.Release(id); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Release = %v, want ErrNotHeld", err)
	}
	m := h.get(id)
	if m.Held || m.State != StateQueued || m.Rcpts[0].NextAttempt.After(t0.Add(time.Hour)) {
		t.Errorf("released message = %+v", m)
	}
	if n := h.step(); n != 1 {
		t.Errorf("released message not leased: %d jobs", n)
	}
	for _, op := range []func(string) error{q.Hold, q.Release, q.Retry, q.Delete, q.Bounce} {
		if err := op("00000000000000FF"); !errors.Is(err, ErrNotFound) {
			t.Errorf("op on unknown id = %v", err)
		}
		if err := op("junk"); !errors.Is(err, ErrNotFound) {
			t.Errorf("op on malformed id = %v", err)
		}
	}
}

func TestRetry(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "", "later"))
	h.fake.on("c@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	id := h.enqueue("", "x", "b@x.test", "c@x.test")
	h.step()
	if r := h.get(id).Rcpts[0]; !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after attempt 1: %+v", r)
	}
	h.clock.Advance(10 * time.Second)
	if err := q.Retry(id); err != nil {
		t.Fatal(err)
	}
	m := h.get(id)
	if !m.Rcpts[0].NextAttempt.Equal(t0.Add(10*time.Second)) || m.Rcpts[1].State != StateFailed {
		t.Errorf("after Retry: %+v", m.Rcpts)
	}
	if err := q.Retry(id); err != nil {
		t.Errorf("Retry of a due message: %v", err)
	}
	if n := h.step(); n != 1 {
		t.Fatalf("not due after Retry: %d jobs", n)
	}
	// Delivered now; c failed: only the failed record is left.
	if err := q.Retry(id); !errors.Is(err, ErrFinal) {
		t.Errorf("Retry of a failed record = %v, want ErrFinal", err)
	}
	if err := q.Hold(id); !errors.Is(err, ErrFinal) {
		t.Errorf("Hold of a failed record = %v, want ErrFinal", err)
	}
	if err := q.Bounce(id); !errors.Is(err, ErrFinal) {
		t.Errorf("Bounce of a failed record = %v, want ErrFinal", err)
	}
}

func TestRetryAll(t *testing.T) {
	h := newHarness(t)
	for _, r := range []string{"a@x.test", "b@x.test", "c@x.test"} {
		h.fake.on(r, 1, Temporary, rp(451, "", "later"))
	}
	q := h.open()
	a := h.enqueue("", "x", "a@x.test")
	b := h.enqueue("", "x", "b@x.test")
	c := h.enqueue("", "x", "c@x.test")
	h.step()
	if err := q.Hold(c); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Second)
	n, err := q.RetryAll()
	if err != nil || n != 2 {
		t.Fatalf("RetryAll = %d, %v; want 2", n, err)
	}
	for _, id := range []string{a, b} {
		if r := h.get(id).Rcpts[0]; !r.NextAttempt.Equal(t0.Add(time.Second)) {
			t.Errorf("%s not due: %+v", id, r)
		}
	}
	if r := h.get(c).Rcpts[0]; !r.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Errorf("held message moved: %+v", r)
	}
	if n := h.step(); n != 2 {
		t.Errorf("%d jobs after RetryAll, want 2", n)
	}
}

func TestDelete(t *testing.T) {
	for _, size := range []int{10, inlineMax + 10} {
		h := newHarness(t)
		q := h.open()
		id := h.enqueue("alice@example.org", string(randomBody(t, size)), "b@x.test")
		if err := q.Delete(id); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete = %v", err)
		}
		if err := q.Delete(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete = %v", err)
		}
		if files := spoolFiles(t, h.spoolDir()); len(files) != 0 {
			t.Errorf("spool files left: %v", files)
		}
		err := q.db.View(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bMessages, bBodies, bSpool, bSchedule, bPurge} {
				if n := tx.Bucket(b).Stats().KeyN; n != 0 {
					t.Errorf("bucket %s holds %d keys", b, n)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if d := q.Depth(); d[StateQueued] != 0 || len(h.dsns()) != 0 {
			t.Errorf("Depth %v, DSNs %d", d, len(h.dsns()))
		}
	}
}

func TestAdminBounce(t *testing.T) {
	h := newHarness(t)
	h.fake.on("b@x.test", 1, Temporary, rp(451, "4.3.0", "later"))
	q := h.open()
	id := h.enqueue("alice@example.org", "Subject: x\r\n\r\n", "b@x.test", "c@y.test")
	h.step() // c delivered, b deferred
	if err := q.Hold(id); err != nil {
		t.Fatal(err)
	}
	if err := q.Bounce(id); err != nil {
		t.Fatal(err)
	}
	m := h.get(id)
	if m.State != StateFailed || m.Rcpts[0].State != StateFailed || m.Rcpts[0].LastReply != adminBounce {
		t.Errorf("after Bounce: %+v", m)
	}
	_, rep := h.onlyDSN()
	if len(rep.perRcpt) != 1 {
		t.Fatalf("blocks %v", rep.perRcpt)
	}
	b := rep.rcptBlock(t, "b@x.test")
	if b.Get("Status") != "5.0.0" || !strings.Contains(b.Get("Diagnostic-Code"), "bounced by the administrator") {
		t.Errorf("block %v", b)
	}
	if d := q.Depth(); d[StateFailed] != 1 || d[StateHeld] != 0 || d[StateQueued] != 1 {
		t.Errorf("Depth = %v", d)
	}
}

// TestPurgeFailed: a failed record stays for KeepFailed, then the
// dispatcher removes it.
func TestPurgeFailed(t *testing.T) {
	h := newHarness(t)
	h.opts = func(o *Options) { o.KeepFailed = time.Hour }
	h.fake.on("b@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	id := h.enqueue("", "x", "b@x.test")
	h.step()
	q.purge(t0.Add(59 * time.Minute))
	if m := h.get(id); m.State != StateFailed {
		t.Fatalf("purged early: %+v", m)
	}
	if ms, _ := q.List(Filter{State: StateFailed}); len(ms) != 1 {
		t.Errorf("List(failed) = %d", len(ms))
	}
	q.Start()
	h.advance(time.Hour)
	// The in-memory depth is updated just after the commit that makes the
	// record disappear: wait for both.
	eventually(t, "the purge", func() bool {
		_, err := q.Get(id)
		return errors.Is(err, ErrNotFound) && q.Depth()[StateFailed] == 0
	})
	err := q.db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bPurge).Stats().KeyN; n != 0 {
			t.Errorf("purge index holds %d keys", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDepth: the counters follow every change and are rebuilt the same at
// Open.
func TestDepth(t *testing.T) {
	h := newHarness(t)
	h.fake.on("d@x.test", 1, Temporary, rp(451, "", "later"))
	h.fake.on("f@x.test", 1, Permanent, rp(550, "", "no"))
	q := h.open()
	h.enqueue("", "x", "d@x.test")
	h.enqueue("", "x", "f@x.test")
	h.enqueue("", "x", "ok@x.test")
	h.step() // deferred, failed, delivered
	h.enqueue("", "x", "q@x.test")
	held := h.enqueue("", "x", "h@x.test")
	if err := q.Hold(held); err != nil {
		t.Fatal(err)
	}
	del := h.enqueue("", "x", "gone@x.test")
	if err := q.Delete(del); err != nil {
		t.Fatal(err)
	}
	want := map[State]int{StateQueued: 1, StateDeferred: 1, StateHeld: 1, StateFailed: 1}
	if d := q.Depth(); !maps.Equal(d, want) {
		t.Errorf("Depth = %v, want %v", d, want)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	q = h.open()
	if d := q.Depth(); !maps.Equal(d, want) {
		t.Errorf("Depth after restart = %v, want %v", d, want)
	}
	all, _ := q.List(Filter{})
	for _, s := range []State{StateQueued, StateDeferred, StateHeld, StateFailed} {
		ms, err := q.List(Filter{State: s})
		if err != nil || len(ms) != 1 || ms[0].State != s {
			t.Errorf("List(%s) = %v, %v", s, ms, err)
		}
	}
	if len(all) != 4 || !slices.IsSortedFunc(all, func(a, b *Message) int { return strings.Compare(a.ID, b.ID) }) {
		t.Errorf("List() = %d messages, not oldest first", len(all))
	}
}

// TestOpenLargeQueue: Open counts 100,000 queued messages. How long that
// takes is measured by BenchmarkOpen (README: Performance), not asserted
// here.
func TestOpenLargeQueue(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 100,000 messages")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "queue.db")
	q, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	q.db.NoSync = true
	fill(t, q, 100_000, t0)
	q.Close(context.Background())
	q, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	if d := q.Depth(); d[StateQueued] != 100_000 {
		t.Errorf("Depth = %v", d)
	}
}

// TestInflightOperator: Delete, Hold and Bounce while an attempt is in
// flight. The attempt finishes; recording respects what the operator did.
// Run under -race.
func TestInflightOperator(t *testing.T) {
	tests := []struct {
		name  string
		op    func(q *Queue, id string) error
		check func(t *testing.T, h *harness, id string)
	}{
		{"delete", (*Queue).Delete, func(t *testing.T, h *harness, id string) {
			if _, err := h.q.Get(id); !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted message back: %v", err)
			}
			if files := spoolFiles(t, h.spoolDir()); len(files) != 0 {
				t.Errorf("spool files: %v", files)
			}
			if d := h.q.Depth(); d[StateDeferred]+d[StateQueued]+d[StateFailed] != 0 {
				t.Errorf("Depth = %v", d)
			}
		}},
		{"hold", (*Queue).Hold, func(t *testing.T, h *harness, id string) {
			m := h.get(id)
			if m.State != StateHeld || m.Rcpts[0].State != StateDeferred || m.Rcpts[0].LastReply != rp(451, "", "later") {
				t.Errorf("after hold in flight: %+v", m)
			}
			if jobs, _, _ := h.q.lease(t0.Add(100*time.Hour), 10); len(jobs) != 0 {
				t.Error("held message leased")
			}
		}},
		{"bounce", (*Queue).Bounce, func(t *testing.T, h *harness, id string) {
			m := h.get(id)
			if m.State != StateFailed || m.Rcpts[0].LastReply != adminBounce {
				t.Errorf("after bounce in flight: %+v", m)
			}
			if n := len(h.dsns()); n != 1 {
				t.Errorf("%d DSNs", n)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.fake.block = make(chan struct{})
			h.fake.on("b@x.test", 1, Temporary, rp(451, "", "later"))
			q := h.open()
			id := h.enqueue("alice@example.org", string(randomBody(t, inlineMax+100)), "b@x.test")
			q.Start()
			<-h.fake.called
			errc := make(chan error)
			go func() { errc <- tt.op(q, id) }()
			close(h.fake.block) // races with the operation
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			h.wait(1)
			tt.check(t, h, id)
		})
	}
}

func TestMessageJSON(t *testing.T) {
	m := &Message{
		ID:       "0000000000000001",
		Envelope: Envelope{From: "alice@example.org", Rcpts: []string{"b@x.test"}},
		Created:  t0, Size: 42, Held: true, State: StateHeld,
		Rcpts: []Recipient{{Address: "b@x.test", State: StateDeferred, Attempts: 2,
			NextAttempt: t0.Add(time.Hour), LastAttempt: t0, LastReply: rp(451, "", "later"), RemoteMTA: "mx.test", leased: true}},
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	keys := slices.Sorted(maps.Keys(got))
	if want := []string{"created_at", "from", "held", "id", "recipients", "size", "state"}; !slices.Equal(keys, want) {
		t.Errorf("message keys %v, want %v", keys, want)
	}
	r := got["recipients"].([]any)[0].(map[string]any)
	rkeys := slices.Sorted(maps.Keys(r))
	// last_reply is the reply on one line, for people and older
	// clients; reply is the same typed.
	if want := []string{"address", "attempts", "last_attempt", "last_reply", "next_attempt", "remote_mta", "reply", "state"}; !slices.Equal(rkeys, want) {
		t.Errorf("recipient keys %v, want %v", rkeys, want)
	}
	if rep := r["reply"].(map[string]any); r["last_reply"] != "451 later" || rep["code"] != 451.0 || rep["text"] != "later" || rep["enhanced_code"] != nil {
		t.Errorf("recipient reply: last_reply %v, reply %v", r["last_reply"], r["reply"])
	}
	if got["from"] != "alice@example.org" || got["state"] != "held" || got["created_at"] != "2026-11-24T10:00:00Z" {
		t.Errorf("JSON = %s", data)
	}
	var back Message
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	m.Rcpts[0] = m.Rcpts[0].public()
	if back.Envelope.From != m.Envelope.From || !slices.Equal(back.Envelope.Rcpts, m.Envelope.Rcpts) ||
		!back.Created.Equal(m.Created) || back.Rcpts[0] != m.Rcpts[0] || back.State != StateHeld {
		t.Errorf("round trip: %+v", back)
	}
}

// TestEnqueueRecovers: after a failed disk write, the next Enqueue works.
func TestEnqueueRecovers(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	q.createSpool = func(p string) (spoolFile, error) {
		return nil, &os.PathError{Op: "open", Path: p, Err: os.ErrPermission}
	}
	big := string(randomBody(t, inlineMax*2))
	if _, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"b@x.test"}}, strings.NewReader(big)); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Enqueue = %v, want the cause", err)
	}
	q.createSpool = createSpoolFile
	id := h.enqueue("", big, "b@x.test")
	if m := h.get(id); m.Size != int64(len(big)) {
		t.Errorf("size %d", m.Size)
	}
}

// TestReopenAfterDeadHandle: a bbolt handle that stops working (after a
// failed mmap bbolt answers ErrInvalidMapping forever; a closed handle
// ErrDatabaseNotOpen) is replaced: the call that meets it fails, later
// calls work.
func TestReopenAfterDeadHandle(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	id := h.enqueue("", "x", "b@x.test")
	if err := q.db.Close(); err != nil { // the handle dies under the queue
		t.Fatal(err)
	}
	if _, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"b@x.test"}}, strings.NewReader("y")); !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		t.Fatalf("Enqueue on a dead handle = %v", err)
	}
	id2 := h.enqueue("", "y", "c@x.test")
	for _, id := range []string{id, id2} {
		if _, err := q.Get(id); err != nil {
			t.Errorf("Get(%s) after reopen: %v", id, err)
		}
	}
}

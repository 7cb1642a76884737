//go:build linux

package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCommitFailureRecovers makes bbolt's own commit fail the way a full
// disk does, without a full disk: RLIMIT_FSIZE stops the file from growing
// (EFBIG; the Go runtime ignores SIGXFSZ). bbolt v1.5.0 rolls the failed
// commit back (Tx.Commit → tx.rollback reloads the freelist from disk), so
// the same handle keeps working: the failing Enqueue returns the cause,
// nothing of it is stored, and once there is room again Enqueue succeeds
// and every earlier message is intact.
//
// RLIMIT_FSIZE is per process, so this test must not run in parallel with
// anything that writes files.
func TestCommitFailureRecovers(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	var ids []string
	for range 3 {
		ids = append(ids, h.enqueue("", "small", "b@x.test"))
	}
	fi, err := os.Stat(filepath.Join(h.dir, "queue.db"))
	if err != nil {
		t.Fatal(err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(fi.Size())
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()

	// Inline bodies near 64 KiB make the file grow within a few commits.
	body := strings.Repeat("x", inlineMax)
	var failed error
	for range 50 {
		_, err := q.Enqueue(context.Background(), &Envelope{Rcpts: []string{"c@x.test"}}, strings.NewReader(body))
		if err != nil {
			failed = err
			break
		}
	}
	restore()
	if failed == nil {
		t.Fatal("no commit failed under RLIMIT_FSIZE")
	}
	// bbolt formats this one with %s; errnoOf puts the errno back.
	if !errors.Is(failed, syscall.EFBIG) {
		t.Errorf("commit error does not wrap EFBIG: %v", failed)
	}
	if !strings.Contains(failed.Error(), "commit message") {
		t.Errorf("error = %v", failed)
	}
	before, _ := q.List(Filter{})

	id := h.enqueue("", body, "d@x.test")
	after, err := q.List(Filter{})
	if err != nil || len(after) != len(before)+1 {
		t.Fatalf("after recovery List = %d messages (%v), want %d", len(after), err, len(before)+1)
	}
	for _, id := range append(ids, id) {
		h.get(id)
	}
	if d := q.Depth(); d[StateQueued] != len(after) {
		t.Errorf("Depth = %v, want %d queued", d, len(after))
	}
	// And the file is sound: reopen and count again.
	q.Close(context.Background())
	q = h.open()
	if ms, err := q.List(Filter{}); err != nil || len(ms) != len(after) {
		t.Errorf("after reopen: %d messages, %v", len(ms), err)
	}
}

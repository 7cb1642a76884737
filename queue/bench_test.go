package queue

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkEnqueue measures durable enqueues of 4 KiB messages, each fully
// synced, with 1 writer and with 20 concurrent writers sharing commits
// through the group-commit loop.
func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB
	for _, writers := range []int{1, 20} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			dir := b.TempDir()
			q, err := Open(Options{Path: filepath.Join(dir, "queue.db")})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close(context.Background())
			start := enqueueAll(b, q, writers, body)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkLease leases the same few due messages while 100, 100,000 or
// 1,000,000 others wait in the future, or while 100,000 are due ahead of
// them at a destination the Gate refuses (gated). Equal costs show that
// leasing looks only at what is due and may go (the in-memory schedule is
// ordered by time, and a refused destination's lane is parked, not walked).
// The database runs with NoSync here: the fsync per lease is a constant
// that would only hide the difference being measured. b.Loop runs the
// setup once.
func BenchmarkLease(b *testing.B) {
	const due = 8
	for _, c := range []struct {
		name           string
		waiting, gated int
	}{
		{"waiting=100", 100, 0},
		{"waiting=100000", 100_000, 0},
		{"waiting=1000000", 1_000_000, 0},
		{"gated=100000", 100, 100_000},
	} {
		b.Run(c.name, func(b *testing.B) {
			clock := &fakeClock{t: t0}
			g := newFakeGate()
			g.limit["gated.test"] = 0
			q, err := Open(Options{Path: filepath.Join(b.TempDir(), "queue.db"), Now: clock.Now, Workers: due, Gate: g})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close(context.Background())
			q.db.NoSync = true
			far := t0.AddDate(100, 0, 0) // beyond any clock this benchmark reaches
			fill(b, q, c.waiting, far)
			// Due before the others, at every clock this benchmark
			// reaches: the head of the schedule.
			fillTo(b, q, c.gated, t0.Add(-time.Hour), "b@gated.test")
			fill(b, q, due, t0)
			for b.Loop() {
				jobs, _, err := q.lease(clock.Now(), due)
				if err != nil || len(jobs) != due {
					b.Fatalf("leased %d, %v", len(jobs), err)
				}
				for _, j := range jobs {
					q.release(j)
				}
				// Past any backoff (at most Max + 10%), so the same
				// messages are due again.
				clock.Advance(2 * time.Hour)
			}
		})
	}
}

// enqueueAll enqueues b.N copies of body from writers goroutines, with the
// benchmark's timer reset first, and returns when it was reset.
func enqueueAll(b *testing.B, q *Queue, writers int, body []byte) time.Time {
	env := &Envelope{From: "a@example.org", Rcpts: []string{"b@example.net"}}
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := q.Enqueue(context.Background(), env, bytes.NewReader(body)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return start
}

// instantDeliverer delivers every recipient at once, without a network.
type instantDeliverer struct{}

func (instantDeliverer) Deliver(_ context.Context, d *Delivery) []Result {
	return resultsFor(d, Result{Outcome: Delivered, Reply: rp(250, "2.0.0", "ok")})
}

// BenchmarkCycle is a message's whole life in the queue, every step synced:
// enqueue, lease (or hand-off to a free worker), attempt, and the commit
// of its results (the "ack", which deletes it), with 1 and 20 concurrent
// writers and the daemon's 64 workers. The deliverer answers at once, so
// this is the queue's own cost per message.
func BenchmarkCycle(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB
	for _, writers := range []int{1, 20} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			var done atomic.Int64
			all := make(chan struct{})
			target := int64(b.N)
			q, err := Open(Options{
				Path: filepath.Join(b.TempDir(), "queue.db"), Deliverer: instantDeliverer{}, Workers: 64,
				OnFinal: func(*Message) {
					if done.Add(1) == target {
						close(all)
					}
				},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close(context.Background())
			q.Start()
			start := enqueueAll(b, q, writers, body)
			<-all
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkOpen is a restart with 100,000 messages queued: Open checks the
// spool directory and rebuilds the depth counts. The bound is 2 s.
func BenchmarkOpen(b *testing.B) {
	const queued = 100_000
	path := filepath.Join(b.TempDir(), "queue.db")
	q, err := Open(Options{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	q.db.NoSync = true
	fill(b, q, queued, t0)
	q.Close(context.Background())
	for b.Loop() {
		q, err := Open(Options{Path: path})
		if err != nil {
			b.Fatal(err)
		}
		if d := q.Depth()[StateQueued]; d != queued {
			b.Fatalf("depth %d after Open, want %d", d, queued)
		}
		q.Close(context.Background())
	}
}

// fill inserts n one-recipient messages due at next, 10,000 per commit.
func fill(tb testing.TB, q *Queue, n int, next time.Time) {
	tb.Helper()
	fillTo(tb, q, n, next, "b@example.net")
}

// fillRecord inserts n copies of rec, 10,000 per commit, through the
// staged path, so that the in-memory schedule holds them too.
func fillRecord(tb testing.TB, q *Queue, n int, rec *record) {
	tb.Helper()
	data, err := marshalRecord(rec)
	if err != nil {
		tb.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 100)
	sum := summarize(rec)
	for n > 0 {
		k := min(n, 10_000)
		n -= k
		err := q.update(func(tx *bolt.Tx) error {
			for range k {
				if _, err := q.insertRec(tx, data, body, "", rec.Next, sum); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

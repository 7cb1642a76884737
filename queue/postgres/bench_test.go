package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/postgres/pgtest"
)

// BenchmarkLease leases one due message out of a queue where waiting
// holds 100 or 1,000,000 messages due later: the cost stays that of the
// due work (one index probe), not of the queue's size. The waiting rows
// are written with one INSERT ... SELECT from generate_series.
func BenchmarkLease(b *testing.B) {
	for _, waiting := range []int{100, 1_000_000} {
		b.Run(fmt.Sprintf("waiting=%d", waiting), func(b *testing.B) {
			dsn := pgtest.DB(b)
			q, err := Open(context.Background(), Options{DSN: dsn, Node: "bench", Lease: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close(context.Background())
			ctx := context.Background()
			if _, err := q.pool.Exec(ctx, `INSERT INTO postern_messages (created, envelope, size, body, rcpts, state, due)
				SELECT now(), '{"from":"s@x.test"}', 3, 'x', '[{"address":"r@y.test","state":"queued"}]', 'queued',
				       now() + interval '1 day' + g * interval '1 ms'
				FROM generate_series(1, $1) g`, waiting); err != nil {
				b.Fatal(err)
			}
			if _, err := q.pool.Exec(ctx, `ANALYZE postern_messages`); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				enqueueB(b, q)
				b.StartTimer()
				jobs, _, err := q.leaseDue(16)
				if err != nil || len(jobs) != 1 {
					b.Fatalf("lease: %d, %v", len(jobs), err)
				}
			}
		})
	}
}

var envB = &queue.Envelope{From: "s@x.test", Rcpts: []string{"r@y.test"}}

func enqueueB(b *testing.B, q *Queue) {
	b.Helper()
	if _, err := q.insert(context.Background(), envB, []byte("x\r\n"), q.clock().Add(-time.Second), ""); err != nil {
		b.Fatal(err)
	}
}

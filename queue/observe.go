package queue

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Observer receives what the queue does, for metrics. The queue defines it
// (the consumer owns the interface); the administration package implements
// it with Prometheus, so this package does not import Prometheus.
//
// Contract: every method is called after the commit it reports on, never
// inside a transaction and never while a queue lock is held; each must
// return quickly and must not call back into the Queue.
type Observer interface {
	// Delivered, Deferred and Failed count recipients whose attempt (or,
	// for Failed, an expiry or an administrator's Bounce) was recorded.
	Delivered(n int)
	Deferred(n int)
	Failed(n int)
	// Bounced counts delivery status notifications queued (failures,
	// delay warnings and success reports alike).
	Bounced()
	// AttemptDuration is the length of one Deliverer.Deliver call.
	AttemptDuration(d time.Duration)
}

// NopObserver discards every count: the Observer of a queue given none.
type NopObserver struct{}

func (NopObserver) Delivered(int)                 {}
func (NopObserver) Deferred(int)                  {}
func (NopObserver) Failed(int)                    {}
func (NopObserver) Bounced()                      {}
func (NopObserver) AttemptDuration(time.Duration) {}

// Depth returns the number of messages per message-level state: queued,
// deferred, held and failed (records kept for Options.KeepFailed). It reads
// counters kept in memory, so it is cheap enough for every metrics scrape.
func (q *Queue) Depth() map[State]int {
	d := map[State]int{StateQueued: 0, StateDeferred: 0, StateHeld: 0, StateFailed: 0}
	q.mu.Lock()
	maps.Copy(d, q.depth)
	q.mu.Unlock()
	return d
}

// count applies the changes of one commit to the depth counters. The key
// "" (a message that does not exist, before or after) is ignored.
func (q *Queue) count(delta map[State]int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for s, n := range delta {
		if s != "" && n != 0 {
			q.depth[s] += n
		}
	}
}

// scan rebuilds, at Open, the depth counters and the in-memory schedule
// (lanes.go) from the records. It decodes only the fields they need, so
// 100,000 messages take a fraction of a second (BenchmarkOpen).
func (q *Queue) scan() error {
	depth := make(map[State]int)
	ix := newIndex()
	err := q.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bMessages).ForEach(func(k, v []byte) error {
			var light struct {
				Env struct {
					From string `json:"from"`
				} `json:"env"`
				Held  bool `json:"held"`
				Rcpts []struct {
					Address  string    `json:"addr"`
					State    State     `json:"state"`
					Attempts int       `json:"attempts"`
					Next     time.Time `json:"next"`
				} `json:"rcpts"`
			}
			if err := json.Unmarshal(v, &light); err != nil || len(light.Rcpts) == 0 {
				return nil // unreadable: not counted, not scheduled
			}
			rec := record{Held: light.Held, Rcpts: make([]Recipient, len(light.Rcpts))}
			rec.Env.From = light.Env.From
			for i, r := range light.Rcpts {
				rec.Rcpts[i] = Recipient{Address: r.Address, State: r.State, Attempts: r.Attempts, NextAttempt: r.Next}
			}
			depth[rec.state()]++
			ix.set(binary.BigEndian.Uint64(k), summarize(&rec))
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("queue: %s: count messages: %w", q.path, err)
	}
	delete(depth, "")
	q.mu.Lock()
	q.depth = depth
	q.mu.Unlock()
	q.ixMu.Lock()
	q.ix = ix
	q.ixMu.Unlock()
	return nil
}

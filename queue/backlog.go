package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// EventBacklog is what one subscriber still has to deliver, for operators
// (postern webhooks list) and metrics.
type EventBacklog struct {
	Subscriber string
	// Pending counts the deliveries waiting, due or not; Failing counts
	// those of them with at least one failed attempt.
	Pending, Failing int
	// First holds the first deliveries in recording order, at most the
	// limit EventBacklogs was given.
	First []EventDelivery
}

// EventBacklogs returns the backlog of every configured subscriber, in the
// order of Options.Subscribers, one entry each even when nothing waits.
// Only the first limit deliveries of each are read in full (their
// events); the rest are counted, so a scrape with limit 0 never reads an
// event.
func (q *Queue) EventBacklogs(limit int) ([]EventBacklog, error) {
	out := make([]EventBacklog, len(q.subs))
	err := q.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bDeliveries).Cursor()
		for i, s := range q.subs {
			b := EventBacklog{Subscriber: s.Name}
			prefix := append([]byte(s.Name), 0)
			for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				if len(k) != len(prefix)+8 {
					return fmt.Errorf("queue: outbox delivery key %x", k)
				}
				var st outboxState
				if err := json.Unmarshal(v, &st); err != nil {
					return fmt.Errorf("queue: outbox delivery %x: %w", k, err)
				}
				b.Pending++
				if st.Attempts > 0 {
					b.Failing++
				}
				if len(b.First) < limit {
					d, err := readDelivery(tx, binary.BigEndian.Uint64(k[len(prefix):]), st)
					if err != nil {
						return err
					}
					b.First = append(b.First, d)
				}
			}
			out[i] = b
		}
		return nil
	})
	return out, err
}

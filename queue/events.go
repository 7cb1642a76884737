package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/dsn"
	"postern/queue/reply"
)

// EventType names what happened to a message for one recipient.
type EventType string

const (
	EventAccepted   EventType = "message.accepted"   // queued
	EventDelivered  EventType = "message.delivered"  // a server took it
	EventDeferred   EventType = "message.deferred"   // an attempt failed temporarily
	EventDelayed    EventType = "message.delayed"    // still deferred after Options.DelayWarning
	EventBounced    EventType = "message.bounced"    // failed for good
	EventSuppressed EventType = "message.suppressed" // not sent: the address is suppressed
	EventComplained EventType = "message.complained" // the recipient reported it as spam
)

// EventTypes lists every EventType, for configuration checks.
func EventTypes() []EventType {
	return []EventType{EventAccepted, EventDelivered, EventDeferred, EventDelayed, EventBounced, EventSuppressed, EventComplained}
}

// Event is one thing that happened to a message for one recipient. The
// queue writes the events of a state change in the transaction that makes
// the change (an outbox): a crash neither loses one nor records one that
// did not happen. Only messages someone submitted (Envelope.Listener set)
// have events; the queue's own DSNs have none.
type Event struct {
	ID        string            `json:"id"` // unique, random: receivers deduplicate on it
	Type      EventType         `json:"type"`
	Time      time.Time         `json:"time"`
	QueueID   string            `json:"queue_id,omitempty"`
	MessageID string            `json:"message_id,omitempty"`
	Recipient string            `json:"recipient,omitempty"`
	User      string            `json:"user,omitempty"`
	Tags      []string          `json:"tags,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Attempt   int               `json:"attempt,omitempty"`
	RemoteMTA string            `json:"remote_mta,omitempty"`
	Reply     reply.Reply       `json:"reply,omitzero"`
	// FeedbackType is a complaint's kind, as the report named it (RFC
	// 5965 §3.5: abuse, fraud, virus, other).
	FeedbackType string `json:"feedback_type,omitempty"`
}

// Subscriber is one consumer of events (a webhook endpoint): each event it
// wants gets a delivery of its own, so one slow or failing subscriber never
// holds up another.
type Subscriber struct {
	Name  string            // stable across restarts: it keys the deliveries
	Wants func(*Event) bool // nil: every event
}

// EventDelivery is one event waiting for one subscriber.
type EventDelivery struct {
	Seq       uint64 // the event's place in the outbox: order of recording
	Event     Event
	Attempts  int
	Next      time.Time // when it is due
	LastError string
}

// outboxState is an EventDelivery's stored part.
type outboxState struct {
	Attempts  int       `json:"attempts,omitempty"`
	Next      time.Time `json:"next"`
	LastError string    `json:"error,omitempty"`
	QueueID   string    `json:"queue_id,omitempty"` // for the per-message order
}

// NewEventID is a new event's ID: 128 random bits, printable. Every
// backend names its events so.
func NewEventID() string { return newEventID() }

// newEventID is 128 random bits, printable.
func newEventID() string {
	var b [16]byte
	rand.Read(b[:])
	return "ev_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// eventTemplate is an event of rec with what every event of it carries.
func eventTemplate(id uint64, rec *record, now time.Time) Event {
	return Event{Time: now, QueueID: formatID(id), MessageID: rec.Env.MessageID, User: rec.Env.User,
		Tags: rec.Env.Tags, Metadata: rec.Env.Metadata}
}

// acceptedEvents are the events of a message just queued: none without
// subscribers (the common case costs nothing).
func acceptedEvents(id uint64, rec *record, now time.Time, subs []Subscriber) []Event {
	if len(subs) == 0 || rec.Env.Listener == "" {
		return nil
	}
	evs := make([]Event, 0, len(rec.Rcpts)+len(rec.Env.Suppressed))
	for _, r := range rec.Rcpts {
		ev := eventTemplate(id, rec, now)
		ev.Type, ev.Recipient = EventAccepted, r.Address
		evs = append(evs, ev)
	}
	for _, r := range rec.Env.Suppressed {
		ev := eventTemplate(id, rec, now)
		ev.Type, ev.Recipient, ev.Reply = EventSuppressed, r.Address, r.Reply
		evs = append(evs, ev)
	}
	return evs
}

// SuppressedRcpt is a recipient left out of a message because it is on
// the suppression list (Envelope.Suppressed).
type SuppressedRcpt struct {
	Address string
	Reply   reply.Reply // the reply that suppressed it
}

// changeEvents are the events of one committed change of message id: a
// recipient leaving a pending state, a new deferral, and the delay notices
// among items (the DSN plan).
func changeEvents(id uint64, before, after *record, items []planItem, now time.Time) []Event {
	if after.Env.Listener == "" {
		return nil
	}
	var evs []Event
	for i := range after.Rcpts {
		b, a := before.Rcpts[i], after.Rcpts[i]
		// A pending recipient that became final, or whose attempt's
		// result (a deferral) was just recorded: the lease is what
		// tells the latter from an operator's retry.
		if !b.State.pending() || (a.State == b.State && !(b.leased && !a.leased)) {
			continue
		}
		var t EventType
		switch a.State {
		case StateDelivered:
			t = EventDelivered
		case StateFailed:
			t = EventBounced
		case StateDeferred:
			t = EventDeferred
		default:
			continue
		}
		ev := eventTemplate(id, after, now)
		ev.Type, ev.Recipient, ev.Attempt, ev.RemoteMTA, ev.Reply = t, a.Address, a.Attempts, a.RemoteMTA, a.LastReply
		evs = append(evs, ev)
	}
	for _, it := range items {
		if it.action != dsn.Delayed {
			continue
		}
		r := after.Rcpts[it.idx]
		ev := eventTemplate(id, after, now)
		ev.Type, ev.Recipient, ev.Attempt, ev.RemoteMTA, ev.Reply = EventDelayed, r.Address, r.Attempts, r.RemoteMTA, r.LastReply
		evs = append(evs, ev)
	}
	return evs
}

// emit records evs in tx for every subscriber that wants them and returns
// how many deliveries it wrote. Without subscribers it writes nothing.
func (q *Queue) emit(tx *bolt.Tx, evs []Event) (int, error) {
	n := 0
	for i := range evs {
		ev := &evs[i]
		var seq uint64
		for _, s := range q.subs {
			if s.Wants != nil && !s.Wants(ev) {
				continue
			}
			if seq == 0 {
				if ev.ID == "" {
					ev.ID = newEventID()
				}
				ob := tx.Bucket(bOutbox)
				var err error
				if seq, err = ob.NextSequence(); err != nil {
					return n, err
				}
				data, err := json.Marshal(ev)
				if err != nil {
					return n, err
				}
				if err := ob.Put(idKey(seq), data); err != nil {
					return n, err
				}
			}
			st, _ := json.Marshal(outboxState{Next: ev.Time, QueueID: ev.QueueID})
			if err := tx.Bucket(bDeliveries).Put(deliveryKey(s.Name, seq), st); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// deliveryKey is subscriber name, NUL, and the event's sequence number, so
// that one subscriber's deliveries sort together in recording order.
func deliveryKey(sub string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(sub), 0), seq)
}

// eventsRecorded wakes the consumers of events after a commit that wrote
// some.
func (q *Queue) eventsRecorded(n int) {
	if n == 0 {
		return
	}
	select {
	case q.eventKick <- struct{}{}:
	default:
	}
}

// EventsWritten is signalled after a commit that recorded events: a
// consumer waits on it (and on a timer for retries) instead of polling.
func (q *Queue) EventsWritten() <-chan struct{} { return q.eventKick }

// RecordEvents records events that no message state change carries (a
// recipient refused because it is suppressed, a complaint), in a
// transaction of their own; ID and Time are filled in when empty.
func (q *Queue) RecordEvents(evs ...Event) error {
	if len(q.subs) == 0 {
		return nil // nobody would read them: spare the commit
	}
	now := q.clock()
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	var n int
	err := q.updateOpen(func(tx *bolt.Tx) error {
		var err error
		n, err = q.emit(tx, evs)
		return err
	})
	q.eventsRecorded(n)
	return err
}

// updateOpen runs fn in a write transaction of its own (Queue.update),
// unless the queue is closed. Not for the commit loop, whose callers
// already hold dbMu.
func (q *Queue) updateOpen(fn func(*bolt.Tx) error) error {
	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		return ErrClosed
	}
	err := q.update(fn)
	q.dbMu.RUnlock()
	if err != nil {
		q.checkDB(err) // needs dbMu exclusively
	}
	return err
}

// view runs fn in a read transaction, unless the queue is closed.
func (q *Queue) view(fn func(*bolt.Tx) error) error {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return ErrClosed
	}
	return q.db.View(fn)
}

// DueEvents returns up to limit deliveries for sub that are due at now, in
// recording order, at most one per message: an event waits until the
// earlier events of its message have been dealt with (EventDone), so a
// subscriber sees each message's events in order. next is when the
// earliest delivery not returned falls due (zero: none is waiting).
func (q *Queue) DueEvents(sub string, now time.Time, limit int) (due []EventDelivery, next time.Time, err error) {
	err = q.view(func(tx *bolt.Tx) error {
		blocked := map[string]bool{}
		prefix := append([]byte(sub), 0)
		c := tx.Bucket(bDeliveries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var st outboxState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("queue: outbox delivery %x: %w", k, err)
			}
			if st.QueueID != "" {
				if blocked[st.QueueID] {
					continue
				}
				blocked[st.QueueID] = true
			}
			if st.Next.After(now) {
				if next.IsZero() || st.Next.Before(next) {
					next = st.Next
				}
				continue
			}
			if len(due) == limit {
				if next.IsZero() || st.Next.Before(next) {
					next = st.Next
				}
				continue
			}
			seq := binary.BigEndian.Uint64(k[len(prefix):])
			d, err := readDelivery(tx, seq, st)
			if err != nil {
				return err
			}
			due = append(due, d)
		}
		return nil
	})
	return due, next, err
}

func readDelivery(tx *bolt.Tx, seq uint64, st outboxState) (EventDelivery, error) {
	d := EventDelivery{Seq: seq, Attempts: st.Attempts, Next: st.Next, LastError: st.LastError}
	data := tx.Bucket(bOutbox).Get(idKey(seq))
	if data == nil {
		return d, fmt.Errorf("queue: outbox event %d is missing", seq)
	}
	if err := json.Unmarshal(data, &d.Event); err != nil {
		return d, fmt.Errorf("queue: outbox event %d: %w", seq, err)
	}
	return d, nil
}

// PendingEvents lists every delivery sub still has to make, due or not
// (all subscribers' when sub is ""), for operators.
func (q *Queue) PendingEvents(sub string) (map[string][]EventDelivery, error) {
	out := map[string][]EventDelivery{}
	err := q.view(func(tx *bolt.Tx) error {
		var prefix []byte
		if sub != "" {
			prefix = append([]byte(sub), 0)
		}
		c := tx.Bucket(bDeliveries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var st outboxState
			if err := json.Unmarshal(v, &st); err != nil {
				return err
			}
			i := bytes.IndexByte(k, 0)
			if i < 0 || len(k)-i-1 != 8 {
				return fmt.Errorf("queue: outbox delivery key %x", k)
			}
			d, err := readDelivery(tx, binary.BigEndian.Uint64(k[i+1:]), st)
			if err != nil {
				return err
			}
			name := string(k[:i])
			out[name] = append(out[name], d)
		}
		return nil
	})
	return out, err
}

// ErrNoDelivery is returned for a delivery that is not (or no longer)
// waiting.
var ErrNoDelivery = errors.New("queue: no such event delivery")

// EventDone ends sub's delivery of event seq: made, or given up. The event
// itself goes with its last delivery.
func (q *Queue) EventDone(sub string, seq uint64) error {
	// A missing delivery is the caller's answer, not the transaction's
	// failure: returned from fn it would roll back the shared commit and
	// make every other writer in it run again alone (as commitChange's
	// stop avoids).
	var missing bool
	err := q.sharedUpdate(func(tx *bolt.Tx) error {
		b := tx.Bucket(bDeliveries)
		k := deliveryKey(sub, seq)
		if missing = b.Get(k) == nil; missing {
			return nil
		}
		if err := b.Delete(k); err != nil {
			return err
		}
		// Another subscriber may still have to deliver it (Open drops
		// the deliveries of subscribers no longer configured).
		for _, s := range q.subs {
			if b.Get(deliveryKey(s.Name, seq)) != nil {
				return nil
			}
		}
		return tx.Bucket(bOutbox).Delete(idKey(seq))
	})
	if err == nil && missing {
		return ErrNoDelivery
	}
	return err
}

// EventRetry records a failed attempt of sub's delivery of event seq and
// when to try again.
func (q *Queue) EventRetry(sub string, seq uint64, next time.Time, errText string) error {
	var missing bool // as in EventDone
	err := q.sharedUpdate(func(tx *bolt.Tx) error {
		b := tx.Bucket(bDeliveries)
		k := deliveryKey(sub, seq)
		v := b.Get(k)
		if missing = v == nil; missing {
			return nil
		}
		var st outboxState
		if err := json.Unmarshal(v, &st); err != nil {
			return err
		}
		st.Attempts++
		st.Next, st.LastError = next.UTC(), errText
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		return b.Put(k, data)
	})
	if err == nil && missing {
		return ErrNoDelivery
	}
	return err
}

// dropUnsubscribed removes the deliveries of subscribers no longer
// configured (a webhook removed from the config), and events nobody waits
// for, at Open.
func (q *Queue) dropUnsubscribed() (int, error) {
	names := map[string]bool{}
	for _, s := range q.subs {
		names[s.Name] = true
	}
	dropped := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bDeliveries)
		wanted := map[uint64]bool{}
		var stale [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			i := bytes.IndexByte(k, 0)
			if i < 0 || len(k)-i-1 != 8 || !names[string(k[:i])] {
				stale = append(stale, bytes.Clone(k))
				continue
			}
			wanted[binary.BigEndian.Uint64(k[i+1:])] = true
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		dropped = len(stale)
		ob := tx.Bucket(bOutbox)
		var orphans [][]byte
		oc := ob.Cursor()
		for k, _ := oc.First(); k != nil; k, _ = oc.Next() {
			if !wanted[binary.BigEndian.Uint64(k)] {
				orphans = append(orphans, bytes.Clone(k))
			}
		}
		for _, k := range orphans {
			if err := ob.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	return dropped, err
}

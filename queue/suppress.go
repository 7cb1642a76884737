package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/reply"
)

// Why an address is suppressed.
const (
	SuppressBounce    = "bounce"    // a remote said the address does not exist
	SuppressComplaint = "complaint" // the recipient reported mail as spam
	SuppressManual    = "manual"    // an operator or the API added it
)

// Suppression is one address a user's mail is no longer sent to. User ""
// is mail without an authenticated user (the relay listener).
type Suppression struct {
	User    string      `json:"user"`
	Address string      `json:"address"`
	Reason  string      `json:"reason"`
	Reply   reply.Reply `json:"reply,omitzero"` // the remote's, for a bounce
	QueueID string      `json:"queue_id,omitempty"`
	Created time.Time   `json:"created_at"`
	Expires time.Time   `json:"expires_at,omitzero"` // zero: never
}

// SuppressionOptions turns the suppression list on (Options.Suppression).
type SuppressionOptions struct {
	// Enabled: a recipient that fails for good because its address does
	// not exist is suppressed for the message's user, in the transaction
	// that records the failure.
	Enabled bool
	// ExpireAfter is how long an automatic suppression lasts; 0: forever.
	ExpireAfter time.Duration
}

// addressGone reports whether a permanent failure says that the address
// itself cannot receive mail, as opposed to a refusal of this message
// (content, size, policy, a full mailbox) that another message might pass.
// RFC 3463 §3.2 (addressing status) and RFC 7505 §4.2 (null MX, X.1.10);
// X.2.1 is a mailbox disabled for good. Only enhanced codes are read: the
// text of a reply is never parsed.
func addressGone(r reply.Reply) bool {
	e := r.Enhanced
	if e.Class != 5 {
		return false
	}
	switch {
	case e.Subject == 1:
		switch e.Detail {
		case 1, 2, 3, 6, 10: // bad mailbox, bad system, bad syntax, moved, null MX
			return true
		}
	case e.Subject == 2 && e.Detail == 1:
		return true
	}
	return false
}

// suppressionKey is user, NUL, address in lower case: mailbox local parts
// are case-sensitive in principle (RFC 5321 §2.4), but no receiver that
// said one does not exist will accept it in another case.
func suppressionKey(user, addr string) []byte {
	return append(append([]byte(user), 0), strings.ToLower(addr)...)
}

// suppressFailures suppresses, in tx, the recipients of rec that a change
// failed because their address is gone.
func (q *Queue) suppressFailures(tx *bolt.Tx, id uint64, before, after *record, now time.Time) error {
	if !q.suppress.Enabled || after.Env.Listener == "" {
		return nil
	}
	for i := range after.Rcpts {
		b, a := before.Rcpts[i], after.Rcpts[i]
		if !b.State.pending() || a.State != StateFailed || !addressGone(a.LastReply) {
			continue
		}
		s := Suppression{User: after.Env.User, Address: a.Address, Reason: SuppressBounce, Reply: a.LastReply,
			QueueID: formatID(id), Created: now}
		if q.suppress.ExpireAfter > 0 {
			s.Expires = now.Add(q.suppress.ExpireAfter)
		}
		if err := putSuppression(tx, s); err != nil {
			return err
		}
	}
	return nil
}

func putSuppression(tx *bolt.Tx, s Suppression) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return tx.Bucket(bSuppressed).Put(suppressionKey(s.User, s.Address), data)
}

// Suppressed returns user's suppression of addr, or nil if there is none
// (or it expired).
func (q *Queue) Suppressed(user, addr string) (*Suppression, error) {
	var s *Suppression
	err := q.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bSuppressed).Get(suppressionKey(user, addr))
		if v == nil {
			return nil
		}
		s = new(Suppression)
		return json.Unmarshal(v, s)
	})
	if err != nil {
		return nil, err
	}
	if s != nil && !s.Expires.IsZero() && !q.clock().Before(s.Expires) {
		return nil, nil
	}
	return s, nil
}

// Suppress adds or replaces a suppression; Created is set when zero.
func (q *Queue) Suppress(s Suppression) error {
	if s.Address == "" || strings.ContainsRune(s.User, 0) {
		return fmt.Errorf("queue: suppression needs an address and a user without NUL")
	}
	if s.Created.IsZero() {
		s.Created = q.clock()
	}
	if s.Reason == "" {
		s.Reason = SuppressManual
	}
	return q.updateOpen(func(tx *bolt.Tx) error { return putSuppression(tx, s) })
}

// Unsuppress removes user's suppression of addr; ErrNotFound if there was
// none.
func (q *Queue) Unsuppress(user, addr string) error {
	return q.updateOpen(func(tx *bolt.Tx) error {
		b := tx.Bucket(bSuppressed)
		k := suppressionKey(user, addr)
		v := b.Get(k)
		if v == nil {
			return fmt.Errorf("%w: %s is not suppressed", ErrNotFound, addr)
		}
		// An expired entry is not a suppression any more (Suppressed and
		// Suppressions hide it): removing it is "not suppressed" too.
		var s Suppression
		if json.Unmarshal(v, &s) == nil && !s.Expires.IsZero() && !q.clock().Before(s.Expires) {
			return fmt.Errorf("%w: %s is not suppressed (expired)", ErrNotFound, addr)
		}
		return b.Delete(k)
	})
}

// Suppressions lists one user's suppressions (every user's when all is
// true), expired ones left out, in address order.
func (q *Queue) Suppressions(user string, all bool) ([]Suppression, error) {
	now := q.clock()
	var out []Suppression
	err := q.view(func(tx *bolt.Tx) error {
		var prefix []byte
		if !all {
			prefix = append([]byte(user), 0)
		}
		c := tx.Bucket(bSuppressed).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var s Suppression
			if err := json.Unmarshal(v, &s); err != nil {
				return fmt.Errorf("queue: suppression %q: %w", k, err)
			}
			if !s.Expires.IsZero() && !now.Before(s.Expires) {
				continue
			}
			out = append(out, s)
		}
		return nil
	})
	return out, err
}

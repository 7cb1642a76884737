package queue

import (
	"context"
	"io"
	"time"

	"postern/queue/reply"
)

// Deliverer makes one delivery attempt for a batch of recipients of one
// message that share a destination domain. The queue defines this interface
// because the queue consumes it; relay/outbound implements it for MX and smarthost
// delivery.
//
// Contract:
//   - Deliver is called without any queue lock held and may block for the
//     length of an SMTP transaction; it must honour ctx cancellation.
//   - It returns exactly one Result per entry of d.Rcpts, in the same order.
//   - It persists nothing: the queue records the results.
//   - A Result is Permanent only when the remote answered 5xx (or the
//     destination is provably undeliverable, such as a null MX, RFC 7505).
//     Network errors, timeouts, DNS failures and 4xx are Temporary.
type Deliverer interface {
	Deliver(ctx context.Context, d *Delivery) []Result
}

// Delivery is one attempt: one message, recipients at one domain.
type Delivery struct {
	ID      string    // queue ID, for logs
	From    string    // envelope sender; "" is the null reverse-path
	Rcpts   []string  // recipients, all at Domain
	Domain  string    // lower-cased recipient domain
	Attempt int       // 1 for the first attempt
	Created time.Time // when the message was accepted
	// Body is the message as stored (headers and body, CRLF line ends).
	// Open may be called more than once (one per MX tried).
	Body Body

	// DSN parameters of RFC 3461 to pass on to a server that offers DSN
	// (§6.2.1): RET and ENVID of the original MAIL FROM, and NOTIFY and
	// ORCPT per recipient. DSN is parallel to Rcpts, or nil when no
	// recipient of the message had DSN parameters.
	Ret, EnvID string
	DSN        []RcptDSN

	// RequireTLS and TLSOptional are the envelope's (RFC 8689): see
	// Envelope. The deliverer honours them; relay/tlspolicy says how.
	RequireTLS, TLSOptional bool
}

// Body gives repeatable access to a stored message.
type Body interface {
	Size() int64
	Open() (io.ReadCloser, error)
}

// Outcome is the fate of one recipient after one attempt.
type Outcome int

const (
	Delivered Outcome = iota + 1 // the remote accepted the recipient
	Temporary                    // retry later with backoff
	Permanent                    // fail for good; the sender gets a DSN
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Temporary:
		return "deferred"
	case Permanent:
		return "failed"
	}
	return "unknown"
}

// Result is the outcome for one recipient, with the remote's words.
type Result struct {
	Outcome Outcome
	// Reply is the remote's reply (code, enhanced code and text: 550,
	// 5.1.1, "<b@x>: no such user"), or postern's words for a failure of
	// its own, with no code ("dial tcp 127.0.0.2:25: connection refused")
	// or with the code postern chose (451 4.4.3 for a failed DNS lookup).
	// Kept as it is for logs, queue inspection and bounces.
	Reply reply.Reply
	// RemoteMTA is the host that gave the reply, if any.
	RemoteMTA string
	// RemoteDSN, for a Delivered result, says the remote advertised DSN
	// and was given this recipient's NOTIFY and ORCPT: it has taken over
	// reporting success and delay (RFC 3461 §6.2.2.1), so the queue sends
	// no success DSN. When false, a recipient that asked for NOTIFY=SUCCESS
	// gets a "relayed" DSN from the queue (§6.2.2.2).
	RemoteDSN bool
}

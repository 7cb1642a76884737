package queue

import (
	"time"

	"postern/queue/reply"
)

// Gate decides whether a delivery attempt may start now. The queue defines
// it because the queue consumes it: the dispatcher asks before it leases,
// and Enqueue before it hands a new message to a worker, so that a worker
// is only ever given work whose destination has capacity left, and never
// waits for a destination (relay/outbound's Shaper implements it, with
// limits per destination and per provider).
//
// Contract:
//   - Admit is called often (once per candidate delivery in every round
//     of the dispatcher, and from Enqueue on the SMTP sessions'
//     goroutines): it must be quick, must not block, must not call back
//     into the Queue, and must be safe for concurrent use.
//   - An Admission with Release set admits one attempt. The queue calls
//     Release exactly once, when that attempt has ended or will not run
//     (its lease found nothing due, shutdown); a Release of capacity
//     must close the Wait channels it unblocks.
//   - It persists nothing: what a refusal says reaches the queue's
//     records only through Suspended.
type Gate interface {
	Admit(d Dest, now time.Time) Admission
}

// Dest is what the queue knows of a delivery before it is leased: enough
// to tell where it would go (a route may depend on the sender's domain
// and on the attempt number, see relay/outbound.Router).
type Dest struct {
	// Domain is the recipients' domain, lower-cased.
	Domain string
	// Sender is the envelope sender's domain, lower-cased; "" for the
	// null reverse-path.
	Sender string
	// Attempt is the number this attempt would have: 1 for the first.
	Attempt int
	// Retry says an operator asked for this attempt now (Retry, RetryAll,
	// Release): a Gate lets it through a suspension or a dead time, as
	// Postfix's flush forgets dead destinations; its other limits still
	// hold.
	Retry bool
}

// Admission is a Gate's answer. Exactly one of these holds:
//   - Release is set: admitted.
//   - Suspended is not zero: the destination is suspended (dead, or told
//     to slow down) until Until, beyond a moment. The queue defers the
//     due recipients at Domain to Until, in its lease transaction, with
//     Suspended as their last reply, without counting an attempt.
//   - Otherwise the destination has no capacity now: the queue asks again
//     at Until (when it is not zero: a rate limit's next slot, a short
//     suspension's end), or once Wait is closed (a connection of the
//     destination came free), and in any case within a minute.
type Admission struct {
	Release   func()
	Until     time.Time
	Wait      <-chan struct{}
	Suspended reply.Reply
}

// Admitted reports whether a is an admission.
func (a Admission) Admitted() bool { return a.Release != nil }

// openGate admits everything: the queue's Gate when Options.Gate is nil.
type openGate struct{}

func (openGate) Admit(Dest, time.Time) Admission { return Admission{Release: func() {}} }

// Destination describes one destination (or one provider, a group of
// them) as a Gate shapes it, for people: the admin API's GET
// /api/destinations, `postern queue destinations` and the metrics. The
// queue itself never reads it; it is defined here, with Gate, so that the
// HTTP surface and the metrics can share it without importing delivery.
type Destination struct {
	// Name identifies it: the MX hosts, sorted and joined by ",";
	// "domain:D" for a domain whose MX hosts are not known yet; a
	// provider's name; "smarthost:A,B" for a failover list.
	Name string `json:"name"`
	// Kind is "destination", "domain", "provider" or "smarthost".
	Kind string `json:"kind"`
	// Provider is the provider a destination belongs to, if any.
	Provider string `json:"provider,omitempty"`
	// Domains are recipient domains lately delivered through it (a few).
	Domains []string `json:"domains,omitempty"`
	// State is "idle" (nothing in flight), "active", "probing" (one
	// attempt at a time, after a connection failure or until its MX
	// hosts are known), "slowed" (its rate was lowered after a
	// rate-limit reply), "suspended" (told to slow down: nothing is
	// attempted until Until) or "dead" (its hosts did not answer: nothing
	// is attempted until Until).
	State string    `json:"state"`
	Until time.Time `json:"until,omitzero"`
	// Active counts the attempts in flight (each holds one connection).
	Active int `json:"active"`
	// Limits are the limits in force now.
	Limits DestinationLimits `json:"limits"`
	// LastReply is the last reply that changed its state (a rate-limit
	// reply, a connection failure), typed, and when it came.
	LastReply   reply.Reply `json:"last_reply,omitzero"`
	LastReplyAt time.Time   `json:"last_reply_at,omitzero"`
	// Counters since it was first seen (it is forgotten after a while
	// without traffic).
	Delivered          uint64 `json:"delivered"`
	RateLimited        uint64 `json:"rate_limited"`
	ConnectionFailures uint64 `json:"connection_failures"`
}

// DestinationLimits are the limits a Gate enforces on a destination.
type DestinationLimits struct {
	// Connections is how many attempts may run at once (0: no limit of
	// its own, for a provider without one).
	Connections int `json:"connections"`
	// MessagesPerConnection is how many transactions one connection
	// carries before it is closed (0: no limit).
	MessagesPerConnection int `json:"messages_per_connection,omitempty"`
	// Rate is the messages per second allowed now (0: no limit); it is
	// below ConfiguredRate while slowed.
	Rate           float64 `json:"rate,omitempty"`
	ConfiguredRate float64 `json:"configured_rate,omitempty"`
}

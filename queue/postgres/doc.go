// Package postgres is the queue in PostgreSQL: a queue.Backend that
// several postern nodes share, so that the mail a dead node accepted is
// delivered by the others (issue 17). The embedded bbolt queue (package
// queue) stays the default for one machine.
//
// # Tables
//
// The schema is versioned (postern_schema) and migrated at Open under an
// advisory lock, so nodes starting at once migrate once:
//
//	postern_messages      one row per message: envelope and recipients
//	                      (JSON), the body (bytea, NULL once final), the
//	                      message state, held, due, the lease (owner,
//	                      token) and, for a failed record, purge_at
//	postern_suppressions  (user, lower-case address) → Suppression
//	postern_idempotency   (user, key) → the send API's answer
//	postern_state         (namespace, key) → value: queue.StateStore
//	postern_events        the event outbox (webhooks): seq → Event
//	postern_event_deliveries
//	                      (subscriber, seq) → attempts, next attempt,
//	                      last error, queue id (events.go)
//	postern_traces        id → the trace of a submitted message that is
//	                      gone, until it expires (trace.go)
//
// due is when any node may lease the message next: its earliest pending
// recipient's next attempt, or, while a node holds it, the end of that
// node's lease; NULL for a held or final message. A partial index on it
// makes leasing (SELECT ... FOR UPDATE SKIP LOCKED, ordered by due) cost
// what the due work costs, not what the queue holds (BenchmarkLease).
//
// # Durability and leases
//
// Enqueue returns once COMMIT has returned with synchronous_commit on.
// A lease moves due to the lease's end and stamps the row with this
// node's name and a random token; the holder renews it every third of
// the lease while it delivers, and records the results (with the DSN and
// suppressions they call for, in one transaction) only if the token is
// still there. So a node that dies holds its messages until its lease
// ends, never longer, and a node that was merely slow drops its results:
// a duplicate at worst, never a loss. A node that stops cleanly gives
// back what it still holds. A message accepted while a worker is free is
// inserted already leased to this node (the hand-off).
//
// NOTIFY announces new work to idle nodes, at most every 20 ms and
// outside Enqueue's transaction (NOTIFY serialises commits); each node
// LISTENs on a connection of its own.
//
// It imports the queue's types and nothing of relay/ or cmd/
// (relay/layout_test.go).
package postgres

// Package queue is postern's durable outgoing queue and its delivery
// scheduler.
//
// The queue stores accepted messages, decides when each recipient is next
// tried, hands batches of recipients to a Deliverer and records what became
// of them. It knows nothing of SMTP sessions: the session calls Enqueue and
// answers 250 only after Enqueue returns, and relay implements Deliverer.
//
// # Storage layout
//
// Everything lives in one bbolt file (Options.Path) plus a spool directory
// (Options.SpoolDir) for large bodies. The buckets, all created right after
// open, are:
//
//	meta      "version" → format version (currently 1)
//	messages  id → JSON record: envelope, created, size, spool file name,
//	          per-recipient state, and the time of its schedule entry
//	bodies    id → message bytes, for bodies of at most inlineMax (64 KiB)
//	spool     spool file name → id, so orphan files are found at Open
//	          without reading every message
//	schedule  next-attempt (8-byte big-endian unix nanoseconds) ‖ id → ""
//
// An id is the messages bucket's NextSequence, stored as an 8-byte
// big-endian key so keys sort in acceptance order; its printable form is 16
// upper-case hex digits (see formatID). The body is kept apart from the
// record because the record is rewritten on every attempt and the body never
// is.
//
// The schedule bucket holds one key per message that still has a pending
// recipient, at the earliest NextAttempt among those recipients. Because keys
// sort by time, finding due work is a cursor walk from the first key that
// stops at the first key in the future: its cost depends on how much work is
// due, not on how many messages wait (BenchmarkLease shows it).
//
// # Durable order
//
// Enqueue follows the order that makes a crash harmless at every step
// (house style, habit 1):
//
//  1. A small body is read into memory once; a large one is streamed to a
//     new file in SpoolDir, fsynced, and the directory fsynced so the file's
//     name is durable too.
//  2. One bbolt transaction, shared with concurrent callers through
//     db.Batch (group commit), allocates the id and writes the record, the
//     inline body or the spool index entry, and the schedule entry. bbolt
//     fsyncs on commit (NoSync stays false).
//  3. Only then does Enqueue return the id, and only then may the session
//     answer 250.
//
// A crash before step 2 commits leaves at most a spool file no record points
// to; Open removes such orphans. A crash after it leaves a complete message.
// When the last recipient of a message is final, the record is deleted first
// and the spool file second, so a crash in between again leaves only an
// orphan.
//
// # Leasing
//
// Before the Deliverer is called (house style, habit 2), one committed
// transaction bumps Attempts and moves NextAttempt forward by the backoff for
// every recipient it hands out. If postern dies during the attempt, the
// recipients are simply tried again when that time comes, with the attempt
// already counted: neither a loss nor a hot loop. An in-memory set of
// in-flight messages keeps an attempt that outlasts its backoff from being
// leased a second time.
//
// The bbolt file never shrinks by itself; compaction (bbolt's Compact into a
// new file while the queue is closed) is left to an operator command.
package queue

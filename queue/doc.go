// Package queue is postern's durable outgoing queue and its delivery
// scheduler.
//
// The queue stores accepted messages, decides when each recipient is next
// tried, hands batches of recipients to a Deliverer and records what became
// of them. It knows nothing of SMTP sessions: the session calls Enqueue and
// answers 250 only after Enqueue returns, and relay/outbound (or
// relay/capture) implements Deliverer.
//
// # Storage layout
//
// Everything lives in one bbolt file (Options.Path) plus a spool directory
// (Options.SpoolDir) for large bodies. The buckets, all created right after
// open, are:
//
//	meta      "version" → format version (currently 1)
//	messages  id → JSON record: envelope, created, size, spool file name,
//	          held flag, per-recipient state and DSN bookkeeping, and the
//	          times of its schedule and purge entries
//	bodies    id → message bytes, for bodies of at most inlineMax (256 KiB)
//	spool     spool file name → id, so orphan files are found at Open
//	          without reading every message
//	schedule  next-attempt (8-byte big-endian unix nanoseconds) ‖ id → ""
//	purge     purge time (same encoding) ‖ id → "", one per failed record
//	outbox    event sequence (8 bytes) → JSON Event (events.go)
//	outbox-deliveries
//	          subscriber name ‖ NUL ‖ event sequence → JSON attempts,
//	          next attempt, last error, queue id
//	suppressed
//	          user ‖ NUL ‖ lower-case address → JSON Suppression
//	idempotency
//	          user ‖ NUL ‖ key → JSON Accepted (id, Message-ID, time)
//	idempotency-expiry
//	          expiry (8 bytes) ‖ user ‖ NUL ‖ key → ""
//	traces    id → JSON Trace: what a late bounce or complaint needs of a
//	          message that is gone (trace.go)
//	trace-expiry
//	          expiry (8 bytes) ‖ id → "", walked by the purge
//	state     one nested bucket per namespace, key → JSON value: the
//	          durable state other rooms keep beside the queue (state.go)
//
// The state bucket is a small generic store (StateStore): a room names its
// namespace ("mta-sts", "tlsrpt") and the type of its values, and gets
// Get, Put, PutAll, Delete and List, each write a shared, synced commit.
// The queue does not know what the values mean; the room that owns a
// namespace documents its keys and values. Unreadable values are reported
// with their key, never skipped silently, so the owner can delete them.
//
// Format version 1 gained the purge and state buckets and the record's held, purge
// and per-recipient DSN fields without a migration: the bucket is created
// at Open, and absent fields read as their zero values.
//
// A recipient's last reply is stored typed (code, enhanced code, text:
// package reply), as the deliverer gave it. Records written before that
// hold the reply as one line of text (and, for failures the queue decided,
// the enhanced code apart); they are read as a reply of that text with no
// code, never parsed back, and written back typed.
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
//     Queue.batch (group commit, commit.go), allocates the id and writes
//     the record, the inline body or the spool index entry, and the
//     schedule entry. bbolt fsyncs on commit (NoSync stays false).
//  3. Only then does Enqueue return the id, and only then may the session
//     answer 250.
//
// A crash before step 2 commits leaves at most a spool file no record points
// to; Open removes such orphans. A crash after it leaves a complete message.
// When the last recipient of a message is final, the body is deleted first
// (with the record too, unless a recipient failed) and the spool file
// second, so a crash in between again leaves only an orphan.
//
// # Message states
//
// A recipient is queued, deferred, delivered or failed. A message is held
// (Hold took it out of the schedule), else deferred if any recipient is,
// else queued if any is, else failed: every recipient is final and one
// failed. A failed message keeps its record, not its body, for
// Options.KeepFailed (default 7 days) so that operators can see what
// happened; its purge entry lets the dispatcher delete expired records
// with a cursor walk from the first key, as the schedule does for due
// work. A message whose recipients were all delivered is deleted at once.
// Depth counts messages per state in memory: each commit adjusts the
// counts by what it changed, and Open recounts them (about 0.2 s for
// 100,000 messages).
//
// A held message has no schedule entry, so leasing never sees it. Release
// puts it back with its pending recipients due now.
//
// # Events, suppressions and idempotency keys
//
// With Options.Subscribers, every state change of a submitted message
// (accepted, deferred, delayed, delivered, bounced) is also written as
// Events, in the transaction that makes the change: an outbox, so that a
// crash can neither lose an event nor record one for a change that was
// rolled back. Each subscriber that wants an event gets a delivery row of
// its own; DueEvents hands out at most one per message at a time, so a
// subscriber sees each message's events in order, and EventDone and
// EventRetry record what came of an attempt (through the group commit, so
// that the results of a subscriber's concurrent requests share an fsync);
// EventBacklogs counts what waits, for operators and metrics. Nothing is
// written without subscribers.
//
// With Options.Suppression, a recipient that fails for good because its
// address does not exist (enhanced codes 5.1.x for bad mailbox, domain,
// syntax, moved, null MX, and 5.2.1) is added to its user's suppression
// list in that same transaction. Enqueue writes an Envelope's
// IdempotencyKey with the message it inserts, so a key can never name a
// message that was not committed.
//
// With Options.Bounces (trace.go), each delivery of a submitted message
// with a sender carries a return path of its own (VERP: BounceOptions.
// ReturnPath gets the message's id and the indexes of the delivery's
// recipients) in Delivery.ReturnPath, while Envelope.From, which the
// queue's own DSNs go to, is unchanged. A message that leaves the queue
// (its last recipient final) leaves a trace in that same transaction:
// user, listener, Message-ID, tags, metadata and recipients, kept for
// BounceOptions.Keep (7 days by default), so that a bounce or a complaint
// that arrives after delivery can still be matched and reported (Trace).
// RecordFeedback writes what such a report says, its events and the
// suppressions it calls for, in one transaction.
//
// # Bounces
//
// Delivery status notifications (RFC 3461, 3464; package dsn composes
// them) are ordinary messages with the null reverse-path and the original
// sender as their one recipient. One is due when recipients become final
// (failed by a 5xx, by the retry lifetime running out, or by an
// administrator's Bounce; or delivered, with NOTIFY=SUCCESS, to a server
// that did not take over DSN duty: "relayed"), or, once per recipient, when
// a recipient is still deferred Options.DelayWarning after acceptance. Each
// recipient's NOTIFY decides (absent means failures and delays), and a
// message with the null sender never gets one, so bounces cannot loop.
//
// A DSN goes through Options.Signer (DKIM, wired in by cmd/postern) as it
// is composed, read once; the signature is kept as a spooled message's
// prefix is, and a failed signature leaves the DSN unsigned, with a
// warning, rather than hold up the results it reports.
//
// Each DSN is committed in the same transaction as the state change that
// calls for it, and that transaction also marks the recipients reported,
// so a crash can neither lose a bounce nor send it twice. Because composing
// reads the original (a spool file for a large one) and may write a spool
// file for a large DSN, it cannot happen inside the write transaction. The
// order (modify, in report.go) is:
//
//  1. In a read transaction, apply the change to a copy of the record and
//     decide which recipients a DSN reports (plan).
//  2. Outside any transaction, compose the DSN, reading the original, and
//     store it as Enqueue stores a body: in memory, or in a new spool file,
//     synced.
//  3. In one write transaction (shared with other writers through
//     Queue.batchLazy for delivery results), apply the change to the current record and
//     plan again. If the plan differs from step 1's (a concurrent change to
//     the same message), nothing is written, a spooled DSN is removed, and
//     the whole sequence starts over. Otherwise the record, marked
//     reported, and the new DSN message are committed together.
//
// A crash after step 2 leaves at most an orphan spool file. Step 3 is
// first tried alone, predicting no DSN; only when it finds one due does
// the whole sequence run. A step 3 that writes nothing never fails the
// shared transaction (commitChange).
//
// The deliveries of one lease (one per domain) finish separately. While a
// recipient of the message is still leased, with no result recorded, plan
// waits: the last result of the lease reports every recipient that failed
// in it, in one DSN. A recipient is marked leased in the lease transaction
// and unmarked when its result is recorded; a mark left by a crash is
// cleared by the message's next lease.
//
// # Operators and attempts in flight
//
// Hold, Release, Retry, Delete and Bounce may meet a message whose attempt
// is in flight. The attempt finishes; recording its results reads the
// record afresh: a deleted message drops them, a held one records them and
// stays held, and recipients an operator bounced keep their failure.
//
// # Storage errors
//
// A failed write in Enqueue leaves nothing behind and returns the cause
// (errors.Is works with syscall.ENOSPC and the like). bbolt v1.5.0 rolls a
// failed commit back itself (Tx.Commit calls tx.rollback, which reloads the
// freelist from disk), so after a write or fsync error the same handle
// keeps working; TestCommitFailureRecovers checks it with RLIMIT_FSIZE.
// bbolt formats the errors of growing its file with %s, dropping the
// errno; errnoOf restores the few that the session tells apart. The one
// failure that kills the handle is a failed remap: DB.mmap unmaps the file
// and every later transaction returns ErrInvalidMapping. The queue then
// closes and reopens the file (checkDB) under its exclusive lock; the call
// that met the error fails, later ones work.
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
// A message accepted while a worker is free skips the lease transaction:
// Enqueue writes its record already leased and hands it to that worker
// once the enqueue is committed (handoff.go). The results of an attempt
// are a lazy writer (batchLazy): they wait up to 2 ms to share the commit
// of a writer someone is waiting on, an enqueue above all; until they are
// on disk the lease stands, so a crash in between repeats a delivery at
// worst.
//
// The bbolt file never shrinks by itself; compaction (bbolt's Compact into a
// new file while the queue is closed) is left to an operator command.
package queue

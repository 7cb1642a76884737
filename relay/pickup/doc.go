// Package pickup is the maildrop: how a message reaches the queue when
// `postern sendmail` cannot hand it to the daemon (not running, not
// reachable, the connection broke, or a 4xx), as Postfix's postdrop and
// pickup do.
//
// sendmail writes the message with its envelope into data_dir/maildrop
// (Write; the format is in drop.go), durably, and exits 0. The daemon's
// Pickup looks at the directory at start and every second, and queues
// each drop through the submission pipeline (relay/submit) as if its
// owner had submitted it on the relay listener: the same header rules,
// Received field (naming the user ID), DKIM signing and durable enqueue,
// the relay listener's limits (Limits), and the queue's listener name
// "maildrop". The drop is removed only once Submit has returned, so a
// crash in between can queue a message twice, never lose it. A drop that
// is malformed, not a plain file made in the maildrop (a symbolic or hard
// link), or refused for good by the pipeline is moved into bad/ with a
// log line saying why, never deleted; a temporary failure leaves it for
// the next round.
//
// Who sent a drop is its file's owner, as the kernel recorded it (fstat),
// never anything written in it. The directory's modes (dir.go) keep users
// from reading, listing, deleting or renaming each other's drops; Prepare
// sets them at the daemon's start and Inspect reports them to `postern
// config check`.
//
// It may import relay/submit (the pipeline and address syntax), queue and
// its leaves (message, durable, reply), and relay/status. It must not
// import relay/smtpd, relay/outbound, relay/httpapi or the other sources
// and deliverers: like them, it feeds the pipeline and nothing else.
package pickup

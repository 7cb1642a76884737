// Package submit is the submission pipeline: what every message that
// enters postern goes through, whichever door it came in by (an SMTP
// session in relay/smtpd, a local user's drop picked up from the maildrop,
// and later the HTTP send API).
//
// Pipeline.Submit reads the header section (queue/message), applies the
// header rules of RFC 6409 §8 (Date and Message-ID added when missing, Bcc
// removed; headers.go), refuses mail loops and, for an authenticated user,
// a From or Sender that is not theirs, adds the Received trace field,
// converts a message it is about to sign to 7 bits when it has 8-bit
// content (queue/message.To7Bit, RFC 6152 §3: a server without 8BITMIME
// can then take it with its signature intact), signs with DKIM while the
// body streams, and queues the message durably.
// It returns only once the message is on disk. Address syntax, shared by
// the envelope checks of every source, is ParseAddress (address.go).
//
// It may import auth (whose rights a user has), queue and its leaves, and
// relay/status (its refusals are statuses, which each source turns into
// its own kind of reply). It must not import the sources (relay/smtpd and
// the others) nor delivery: data flows from them into it, and from it into
// the queue.
package submit

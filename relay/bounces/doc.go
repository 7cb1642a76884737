// Package bounces is the intake side of issue 15's bounce handling: the
// VERP return paths postern sends with (Tokens), the parsers of the
// reports that come back to them (DSNs, RFC 3464, and ARF complaint
// reports, RFC 5965), and the listen.mx SMTP server that accepts those
// reports, and nothing else, at the bounce domain.
//
// Each report is matched to its message and recipient through the token
// in the address it was sent to, turned into events (message.bounced,
// message.complained) and suppressions, and recorded in the queue in one
// transaction (queue.RecordFeedback) before the 250; the report itself is
// dropped once parsed. Nothing received here is ever queued or relayed.
//
// It may import queue (for its types) and relay/status; it must not import
// the other SMTP rooms (relay/smtpd, relay/submit, relay/outbound) nor
// the HTTP one: cmd/postern wires it.
package bounces

// Package message is the format of the messages postern stores and sends:
// an RFC 5322 header section, then the body, with CRLF line ends only.
//
// It holds the one reader of header sections (ReadHeader for a stream,
// ParseHeader for bytes in memory: the same rules) and the one line-end
// fixer (CRLFReader). Everything in postern that reads a header or fixes
// line ends uses them: the inbound server (relay/smtpd) for the header
// rules and for clients allowed bare line ends, the DKIM signer for the
// fields it signs, delivery (relay/outbound) before dot-stuffing, the DSN
// composer (queue/dsn) for the original it quotes, and the sendmail
// command. So every reader sees the same header section the inbound
// server checked, and no bare CR or LF reaches the wire.
//
// It also holds the 7-bit downgrade (To7Bit, RFC 6152 §3), which
// rewrites the 8-bit parts of a message as quoted-printable or base64 and
// leaves every other byte alone: the submission pipeline uses it before
// DKIM signing, delivery for a server without 8BITMIME.
//
// It sits under queue/ because the queue is where this format is promised
// (queue.Delivery's Body), and it is a leaf: it imports nothing of
// postern, so that dkim, relay and the queue can all use it.
package message

// Package smtpclient is the client side of one SMTP connection: the
// greeting, EHLO (HELO when the server knows no EHLO), STARTTLS, AUTH PLAIN
// and LOGIN, and mail transactions that use what the server offers to
// spend as few round trips as it allows.
//
// # Why it exists
//
// go-smtp's client sends each command and waits for its reply, and keeps
// its connection to itself: a message on a reused connection cost four
// round trips (MAIL, RCPT, DATA, the content), and a parked connection
// could not be checked or closed from outside it. Delivery to far MX hosts
// is bounded by round trips, so postern speaks this side of SMTP itself.
//
// # Round trips
//
// With PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in one write
// and their replies are read in order; the content follows the 354: two
// round trips per transaction on a connection that is already open. With
// CHUNKING (RFC 3030), MAIL and the RCPTs go out in one write and the
// content as BDAT chunks, the last one "BDAT n LAST", with no dot-stuffing
// and no 354: two round trips as well. Without either, one command at a
// time: four. Send splits the recipients into transactions of at most
// LIMITS RCPTMAX (RFC 9422) and sends the recipients a server refused with
// "too many recipients" (452, or 552, RFC 5321 §4.5.3.1.10) in another
// transaction at once, on the same connection.
//
// # Replies
//
// Every reply is read once, where it arrives, into an *Error: the command
// it answered and a queue/reply.Reply (code, enhanced code, text). Send
// returns one per recipient; nothing is turned back into a string and
// parsed again.
//
// # Time and cancellation
//
// Each reply is awaited for Options.CommandTimeout (the greeting included);
// sending the content and awaiting the reply to it have
// Options.DataTimeout each (RFC 5321 §4.5.3.2). A method whose context
// ends closes the connection, which ends any read or write in progress.
//
// # What it may import
//
// The standard library, queue/reply (the typed reply) and queue/message
// (the line-end fixer the content goes through). Not the queue, not
// relay/outbound, not go-smtp: it is a leaf that delivery builds on, and
// what it knows of a message is an envelope and a stream of bytes.
package smtpclient

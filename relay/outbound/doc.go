// Package outbound delivers queued messages: to the MX hosts of their
// recipients' domain (MX), through upstream relays (Smarthost, Failover),
// or either way by rule (Router). Each implements queue.Deliverer: one
// call is one attempt, one SMTP session (one transaction, or more when
// the server limits the recipients of one), one Result per recipient.
//
// # Route
//
// Answers are cached for their TTL (at most 5 minutes; NXDOMAIN and NODATA
// by the SOA minimum, at most 1 minute, not at all without an SOA);
// failures never are. Concurrent identical lookups share one query. See
// dnscache.go.
//
// The MX records of the domain are asked of one DNS server
// (Options.Resolver) or of those in /etc/resolv.conf, with miekg/dns rather
// than the Go resolver so that the DNS answer codes stay visible, through
// tlspolicy.Ask, the DNS exchange the TLS policies use too:
//
//   - MX records: hosts in preference order, random among equal
//     preferences (RFC 5321 §5.1), each resolved to its IPv4 then IPv6
//     addresses;
//   - NOERROR without MX records: the domain itself is the implicit MX
//     (RFC 5321 §5.1); without A or AAAA records either, the recipients
//     fail for good (550 5.1.2);
//   - NXDOMAIN: Permanent, 550 5.1.2;
//   - a single MX "." (null MX, RFC 7505): Permanent, 556 5.1.10;
//   - SERVFAIL, REFUSED, timeouts, unreachable servers: Temporary, 451 4.4.3.
//
// Address literals ("[192.0.2.1]") are refused as destinations
// (Permanent, 550 5.1.2): the submission side should never queue them.
//
// # Transaction
//
// The addresses are tried in order until one takes the transaction; see
// MX.Deliver for when the next one is tried. One attempt looks at the
// first Options.MaxMXHosts MX hosts (5), dials at most
// Options.MaxAddresses addresses (5, Postfix's smtp_mx_address_limit) and
// gives up after Options.MaxSessions hosts that held a session and
// failed (2, smtp_mx_session_limit); Options.AttemptTimeout (30 minutes)
// bounds it whole, DialTimeout (20 s) each connect, CommandTimeout each
// reply and the greeting. With Options.TLSPolicies (tlspolicy.go), each
// host's policy (DANE, MTA-STS, delivery.tls_policy, then Options.TLS as
// the default) decides whether the host is used, and what STARTTLS and
// the certificate must be; a refusal is temporary (451 4.7.x naming the
// policy), and a REQUIRETLS message no host can take is 550 5.7.30.
// Without policies, STARTTLS follows Options.TLS (see TLSMode). Where the
// policy is opportunistic, a failed upgrade is retried at once in plain
// text on the same address.
//
// The SMTP dialogue itself is relay/smtpclient's: with PIPELINING, MAIL,
// every RCPT and DATA in one write; with CHUNKING, the message as BDAT
// chunks (one "BDAT n LAST" for most); so two round trips per message on
// a reused connection, four or more without. A server that limits the
// recipients of a transaction (LIMITS RCPTMAX, or 452 4.5.3 "too many
// recipients", RFC 5321 §4.5.3.1.10) gets the rest in further
// transactions at once, on the same connection, within the same attempt.
//
// Replies keep the remote's words, typed: a reply read on the wire is
// parsed once (smtpclient, ParseReply) into a queue/reply.Reply (code 550,
// enhanced code 5.1.1, text "no such user"), which becomes Result.Reply as
// it is;
// Result.RemoteMTA is the MX host name. Only a 5xx from the remote makes a
// recipient Permanent (and 552 to RCPT does not, RFC 5321 §4.5.3.1.10);
// network errors, timeouts and 4xx are Temporary. Local failures carry a
// postern status (package status) as a reply of its code and words, with
// an empty RemoteMTA; an I/O error with no status is a reply of text alone.
//
// # Smarthosts and routes
//
// A Smarthost is one upstream relay at a fixed address: STARTTLS (never
// opportunistic), implicit TLS or none, the certificate verified for its
// host name unless configured otherwise, and AUTH PLAIN or LOGIN when a
// username is set, over TLS only. A Failover tries several in order; see
// its documentation for when the next one is tried and why a refused
// password is retried rather than bounced. A Router picks MX delivery or
// smarthosts per delivery by recipient and sender domain, with an optional
// fallback to smarthosts after N direct attempts.
//
// # 8BITMIME
//
// BODY=8BITMIME is declared to a server that offers 8BITMIME. One that
// does not gets a 7-bit message as it is and an 8-bit one converted
// (queue/message.To7Bit: quoted-printable or base64 parts, RFC 6152 §3),
// unless it cannot be converted or carries a DKIM signature the
// conversion would break: then 554 5.6.3 before MAIL, and the next MX is
// tried (see downgrade.go; relay/submit converts what it signs before
// signing, so postern's own signatures survive).
//
// # DSN
//
// When the server offers DSN, the RET and ENVID of the original MAIL FROM
// and each recipient's NOTIFY and ORCPT are passed on (RFC 3461 §6.2.1)
// and Result.RemoteDSN is set for the recipients it accepted: it reports
// from then on.
//
// # Connections
//
// A connection whose transaction ended cleanly (the final reply to DATA,
// or a refused MAIL) is kept open for the next delivery to the same
// destination (MX host address, or smarthost, with the same TLS policy)
// for Options.IdleTimeout (unless the server's LIMITS MAILMAX is used
// up), and checked with NOOP before it is used again if it sat parked for
// more than a second;
// one that fails before its MAIL is accepted is replaced by a new one in
// the same attempt, and one that has carried its destination's
// MessagesPerConnection is closed. At most Options.MaxConnsPerHost
// connections are open to one host address at once; a delivery beyond
// that does not wait: it tries the next address. See pool.go. Close (on
// MX, Smarthost, Failover, Router) closes the idle connections; call it
// after the queue has stopped.
//
// # Shaping
//
// The Shaper (shaper.go) decides what the queue may start, as its
// queue.Gate (MX.Admit, Router.Admit), and learns from every attempt
// (MX delivery reports it). A destination is the set of MX hosts of a
// domain: domains hosted together share one. Until a domain's MX hosts
// are known it is a destination of its own, allowed one attempt at a time
// (a probe: a new domain costs the first message's lookups, and a
// tarpit gets one connection, not twenty). A provider groups destinations
// by MX host suffix (".google.com"). Each has limits (Limits):
// connections at once, messages per connection, messages per time unit;
// a provider's connections and rate hold across its destinations.
//
// A 4xx reply that matches a RateLimitPattern (by code, enhanced code and
// text: "421 4.7.28", "4.7.0 ... try again later", "too many
// connections") slows the whole provider, or the destination when it has
// none: the rate is halved (from the rate it was delivering at, the first
// time) and it is suspended briefly (2 s, doubling while refusals come
// without a delivery between, which leave the rate alone: the remote has
// not reopened yet). Each delivery then raises the rate by a sixteenth,
// until the configured rate (or none) is back. A pattern may instead
// suspend for a fixed time (Yahoo's "[TSS04]": two hours).
//
// A destination whose hosts all fail to connect or greet, in
// DefaultDeadAfter attempts in a row, is dead for a minute, doubling up to
// an hour each time a probe fails; a host that answers ends it. While a
// destination or provider is suspended or dead for longer than a moment,
// the queue defers its due recipients without dialing, with the reply
// "4.4.1 delivery temporarily suspended: ..." (the cause's own enhanced
// code when it has one), as Postfix does. Shaper.Destinations shows the
// state of each.
//
// Nodes that share a queue share their destinations too when
// Shaping.Shared is set (limits.redis; shared.go): one rate bucket per
// destination and provider for the fleet, connection slots counted
// across nodes (they expire unless renewed, so a dead node's come back),
// and every suspension or dead time one node decides, with its reason and
// lowered rate, honoured by the others within a second. When the store
// fails, each node's own state decides, as without it.
//
// Canceling the context closes the connection at once. A connection that
// is not kept is closed before Deliver returns, after QUIT when the
// dialogue allows it.
package outbound

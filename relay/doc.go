// Package relay holds no code. It is the parent of postern's network rooms,
// and this comment says how they fit together.
//
//	relay/smtpd      the inbound SMTP server: listeners, sessions; it hands
//	                 each message to the submission pipeline
//	relay/submit     the submission pipeline every source shares: header
//	                 rules, Received, DKIM, durable enqueue
//	relay/pickup     the other source: the maildrop, where sendmail leaves
//	                 what the daemon could not take, and its pickup loop
//	relay/outbound   delivery: MX hosts, smarthosts and the routes between
//	                 them; implements queue.Deliverer
//	relay/smtpclient the client side of one SMTP connection (pipelining,
//	                 CHUNKING), which outbound runs its sessions on
//	relay/capture    the other deliverer: a Maildir instead of the network
//	relay/httpapi    the daemon's HTTP surface: admin API, probes, metrics, send API
//	relay/metrics    Prometheus metrics; implements the observers that the
//	                 queue and smtpd define
//	relay/tlspolicy  outbound transport security: for each MX host the
//	                 TLS it needs (DANE, MTA-STS, configured, opportunistic),
//	                 the check after STARTTLS, the MTA-STS cache and the
//	                 TLS reports (RFC 8460); delivery calls it
//	relay/bounces    bounce intake: VERP return-path tokens, the DSN and
//	                 ARF parsers, and the listen.mx server that turns the
//	                 reports into queue events and suppressions
//	relay/webhooks   delivery webhooks: the queue's events (its outbox)
//	                 posted to HTTP endpoints, signed, retried, in order
//	                 per message
//	relay/certs      the listeners' TLS certificate
//	relay/acme       certificates obtained and renewed from an ACME CA,
//	                 which relay/certs serves
//	relay/spf        SPF records: the parser and RFC 7208's check_host()
//	relay/doctor     postern doctor's checks of what decides whether mail
//	                 arrives (DNS, reverse DNS, SPF, DKIM, DMARC, MTA-STS,
//	                 the certificate), and the zone postern init prints
//	relay/limits     shared limits (limits.redis): rates, AUTH failure
//	                 counters and the users-changed channel in a Redis
//	                 several nodes share, behind interfaces that smtpd
//	                 and auth define
//	relay/status     the one SMTP status type (reply code, enhanced code,
//	                 client-safe text, cause), shared by both SMTP sides
//	relay/relaytest  real in-process DNS and SMTP peers for tests
//
// Mail flows one way: a source (smtpd or pickup) → submit → queue.Enqueue → the
// queue's scheduler →
// queue.Deliverer (outbound or capture) → typed results (queue.Result,
// with the remote's reply as queue/reply values) back into the queue
// record, the bounces and the logs; the events that record writes go
// out through relay/webhooks. No room imports another room of
// relay except relay/status, and the sources relay/submit (relay/metrics
// may name smtpd's observer in tests); the queue imports nothing under
// relay. cmd/postern wires the
// rooms together. layout_test.go checks these rules.
package relay

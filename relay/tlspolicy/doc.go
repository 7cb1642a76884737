// Package tlspolicy decides how delivery must protect each SMTP session:
// for one recipient domain and each of its MX hosts, whether TLS is
// needed, and what authenticates the server. It also keeps the evidence
// (TLS reports, RFC 8460) and the caches (MTA-STS policies) that go with
// it.
//
// # Order
//
// For each MX host the first of these that applies decides (RFC 8461 §2:
// DANE takes precedence over MTA-STS; RFC 7672):
//
//  1. DANE (RFC 7672, 7671): when the resolver validates DNSSEC and its
//     AD bit is trusted (Options.TrustAD), and the domain's MX answer and
//     the host's address answers were secure, the TLSA records at
//     _<port>._tcp.<host> decide: usable ones (DANE-EE(3), DANE-TA(2))
//     make the host DANE-only; a secure RRset with none usable still
//     demands TLS (encrypt). An answer the resolver found bogus (SERVFAIL)
//     means the host is not used at all.
//  2. MTA-STS (RFC 8461): the domain's policy from
//     https://mta-sts.<domain>/.well-known/mta-sts.txt, cached by its id
//     and max_age. In enforce mode only MX hosts that match its mx
//     patterns are used, over TLS with a certificate valid for the MX name
//     (WebPKI). In testing mode the same is checked and reported, not
//     enforced.
//  3. The configured policy for the domain (Override: dane, mta-sts,
//     verify, encrypt, may).
//  4. Otherwise Options.Default, opportunistic TLS unless configured.
//
// The product is a HostPolicy per host. Delivery calls Policies.Domain
// once per attempt, DomainPolicy.Host before dialing a host, Check after
// the STARTTLS handshake (HostPolicy.NoSTARTTLS and HandshakeFailed when
// there was none), and Reporter.Record with what happened. The TLS
// handshake itself is delivery's, with the configuration ClientConfig
// returns: it verifies nothing itself, Check does.
//
// # DNS
//
// Ask is the one DNS exchange of delivery: relay/outbound asks its MX
// and address questions through it (and caches the answers), and this
// room asks its DNSSEC-aware ones (DO and AD bits) through it, so that
// both read /etc/resolv.conf, fall back over TCP and stop on a cancelled
// context the same way.
//
// # Reports
//
// Reporter counts successful and failed sessions per policy domain and
// UTC day (RFC 8460 §4), keeps the counts in the queue database every
// minute, and once a day sends each domain that publishes a TLSRPT record
// its report: gzipped JSON by mail (through a Submitter, which cmd/postern
// backs with the submission pipeline, so that the report is queued and
// DKIM-signed like any message) or by HTTPS POST.
//
// # What it may import
//
// The standard library, github.com/miekg/dns v1, the queue's leaves
// (queue/reply); not the queue itself (its state store is reached through
// the Store interface defined here), not relay/smtpd, relay/outbound,
// relay/submit or relay/httpapi: delivery calls this room, and cmd/postern
// wires it to the queue and the submission pipeline.
package tlspolicy

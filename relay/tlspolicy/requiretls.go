package tlspolicy

import (
	"fmt"

	"postern/queue/reply"
)

// REQUIRETLS (RFC 8689): what one message's own requests change in a
// host's policy.

// RequireTLSFailure is the permanent failure of a REQUIRETLS message that
// cannot be sent to the host as the RFC demands (RFC 8689 §5.2: 5.7.30
// "REQUIRETLS support required"): it is bounced at once, not retried,
// since no retry will make an MX authenticated or make it offer
// REQUIRETLS. Delivery uses it when every host failed so.
func RequireTLSFailure(host, why string) reply.Reply {
	return reply.Reply{Code: 550, Enhanced: reply.Enhanced{Class: 5, Subject: 7, Detail: 30},
		Text: fmt.Sprintf("REQUIRETLS support required: %s %s", host, why)}
}

// ForMessage adapts p to a message's envelope (queue.Delivery's
// RequireTLS and TLSOptional):
//
//   - requireTLS: the server must be authenticated (RFC 8689 §4.2.1):
//     by DANE, by an enforced MTA-STS policy (WebPKI), or with WebPKI
//     when the host came from a DNSSEC-secure MX answer. Otherwise the
//     message must not go to this host: ok is false and the reply is
//     RequireTLSFailure's. After EHLO, delivery must also call
//     OfferedREQUIRETLS and pass REQUIRETLS with MAIL FROM.
//   - tlsOptional ("TLS-Required: No", without REQUIRETLS): the policy's
//     failures are reported but never stop the message (RFC 8689 §5):
//     STARTTLS is still tried, and a failed check or a missing STARTTLS
//     leaves the session in plain text or unauthenticated, as with
//     opportunistic TLS.
func (p HostPolicy) ForMessage(host string, requireTLS, tlsOptional bool) (HostPolicy, reply.Reply, bool) {
	switch {
	case requireTLS:
		p.Testing, p.relaxed = false, false
		switch {
		case p.Mode == DANE && len(p.TLSA) > 0:
		case p.Mode == WebPKI && (p.Source == SourceMTASTS || p.mxSecure):
		case p.mxSecure && p.Mode != DANE:
			p.Mode = WebPKI
			if len(p.Names) == 0 {
				p.Names = []string{host}
			}
		default:
			return p, RequireTLSFailure(host, "cannot be authenticated: neither DANE, MTA-STS nor a DNSSEC-secure MX names it"), false
		}
	case tlsOptional:
		p.relaxed = true
	}
	return p, reply.Reply{}, true
}

// OfferedREQUIRETLS is the check after EHLO of a REQUIRETLS message: a
// server that does not offer REQUIRETLS (RFC 8689 §4.2.1, step 3) gets
// nothing, and the failure is permanent.
func OfferedREQUIRETLS(host string, offered bool) (reply.Reply, bool) {
	if offered {
		return reply.Reply{}, true
	}
	return RequireTLSFailure(host, "does not offer REQUIRETLS"), false
}

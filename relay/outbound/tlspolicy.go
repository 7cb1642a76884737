package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"go.uber.org/zap"

	"postern/queue"
	"postern/queue/reply"
	"postern/relay/smtpclient"
	"postern/relay/status"
	"postern/relay/tlspolicy"
)

// MX delivery under relay/tlspolicy: for each recipient domain its
// policies, for each MX host the first that applies (DANE, MTA-STS,
// delivery.tls_policy, delivery.tls: RFC 8461 §2, RFC 7672), and the
// message's own REQUIRETLS or "TLS-Required: No" (RFC 8689) applied on
// top. The policy room decides; this file asks it at the points of the
// session where its answers matter, turns its refusals into statuses, and
// hands every session's outcome to the TLS reports (RFC 8460).
//
// A refusal by a policy is temporary (451 4.7.5, naming the policy): the
// message waits, is never sent in clear instead, and bounces only when
// retry.lifetime runs out. The exception is REQUIRETLS, which fails for
// good (550 5.7.30) when no MX host can honour it: no retry makes a host
// authenticated or makes it offer the extension.

// TLSRecorder receives the TLS outcome of MX sessions for TLS reports
// (tlspolicy.Reporter). Record must not block.
type TLSRecorder interface {
	Record(tlspolicy.Session)
}

var _ TLSRecorder = (*tlspolicy.Reporter)(nil)

// hostTLS is what one MX session must achieve: the host's policy adapted
// to the message (HostPolicy.ForMessage).
type hostTLS struct {
	policy     tlspolicy.HostPolicy
	requireTLS bool // the message's REQUIRETLS: MAIL carries it
	relaxed    bool // the message's "TLS-Required: No"
}

// key tells connections made under different requirements apart in the
// pool: a connection checked under one policy must not carry a message
// that needs another.
func (h *hostTLS) key() string {
	if h == nil {
		return "-"
	}
	return fmt.Sprintf("%s/%q/%t/%t", h.policy, h.policy.Names, h.requireTLS, h.relaxed)
}

// requireTLSError is the status of a REQUIRETLS refusal r (RFC 8689 §5.2:
// 550 5.7.30), which is permanent only when every MX host failed so (see
// MX.deliver and isRequireTLS).
func requireTLSError(r reply.Reply) *status.Error {
	return status.New(r.Code, r.Enhanced.Subject, r.Enhanced.Detail, r.Text)
}

// isRequireTLS reports whether err is a refusal of requireTLSError.
func isRequireTLS(err error) bool {
	se, ok := errors.AsType[*status.Error](err)
	return ok && se.Code == 550 && se.Subject == 7 && se.Detail == 30
}

// policyName names the policy that decided h, for the texts of its
// refusals: what an operator reads in `postern queue show` and the logs.
func policyName(h *hostTLS, host string) string {
	p := h.policy
	switch p.Source {
	case tlspolicy.SourceDANE:
		return "DANE (TLSA records of " + host + ")"
	case tlspolicy.SourceMTASTS:
		return "the MTA-STS policy of " + p.PolicyDomain
	case tlspolicy.SourceConfig:
		return "delivery.tls_policy for " + p.PolicyDomain
	}
	if h.requireTLS {
		return "REQUIRETLS"
	}
	return "delivery.tls"
}

// policyRefusal is the temporary failure of a session that a policy
// stopped: RFC 3463 X.7.5 "Cryptographic failure" (X.7.10 "Encryption
// needed" without STARTTLS), with the host, what happened and the policy.
func policyRefusal(h *hostTLS, host, what string, failure tlspolicy.ResultType, cause error) error {
	detail := 5
	if failure == tlspolicy.StartTLSNotSupported {
		detail = 10
	}
	text := fmt.Sprintf("%s: %s, required by %s", host, what, policyName(h, host))
	if failure != "" {
		text += " (" + string(failure) + ")"
	}
	return status.Wrap(cause, 451, 7, detail, text)
}

// hostPolicy is the TLS requirement of a session with host for d, from
// dp (nil: no policy consulted). A nil result with a nil error means the
// host is used as delivery.tls says; an error means it is not used at
// all: a policy refuses it (temporary), or d's REQUIRETLS cannot be
// honoured there (isRequireTLS).
func (m *MX) hostPolicy(ctx context.Context, dp *tlspolicy.DomainPolicy, d *queue.Delivery, host string) (*hostTLS, error) {
	if dp == nil {
		if d.RequireTLS {
			return nil, requireTLSError(tlspolicy.RequireTLSFailure(host, "cannot be authenticated: delivery.tls is disabled"))
		}
		return nil, nil
	}
	p, err := dp.Host(ctx, host)
	if err != nil {
		herr, ok := errors.AsType[*tlspolicy.HostError](err)
		if !ok {
			return nil, status.New(451, 7, 5, host+": no TLS policy: "+err.Error())
		}
		m.recordTLS(tlspolicy.Session{Policy: herr.Policy, MXHost: host, Failure: herr.Failure})
		r := herr.Reply()
		return nil, status.New(r.Code, r.Enhanced.Subject, r.Enhanced.Detail, r.Text)
	}
	p, r, ok := p.ForMessage(host, d.RequireTLS, d.TLSOptional)
	if !ok {
		return nil, requireTLSError(r)
	}
	return &hostTLS{policy: p, requireTLS: d.RequireTLS, relaxed: d.TLSOptional && !d.RequireTLS}, nil
}

// recordTLS hands s to the TLS reports, when there are any.
func (c *client) recordTLS(s tlspolicy.Session) {
	if c.opts.TLSReports != nil {
		c.opts.TLSReports.Record(s)
	}
}

// recordSession records the TLS outcome of a session with p on sc. A
// session in plain text that no policy asked more of is no TLS session
// and not counted.
func (c *client) recordSession(p peer, sc *smtpclient.Client, failure tlspolicy.ResultType, tls bool) {
	if !tls && failure == "" {
		return
	}
	s := tlspolicy.Session{Policy: p.tls.policy, MXHost: p.host, Failure: failure}
	local, remote := sc.Addrs()
	s.SendingIP, s.ReceivingIP = addrOf(local), addrOf(remote)
	c.recordTLS(s)
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// startTLSPolicy is startTLS under p.tls: STARTTLS whenever offered, with
// the policy deciding what a missing STARTTLS, a failed handshake and the
// certificate mean (tlspolicy.Check), then EHLO again. A failure the policy
// allows to go on in plain text wraps errTLSFailed, as under Opportunistic.
func (c *client) startTLSPolicy(ctx context.Context, sc *smtpclient.Client, p peer) error {
	h := p.tls
	if !sc.Ext().StartTLS {
		ok, failure := h.policy.NoSTARTTLS()
		c.recordSession(p, sc, failure, false)
		if !ok {
			sc.Quit(min(c.opts.CommandTimeout, quitTimeout))
			return policyRefusal(h, p.host, "STARTTLS not offered", failure, nil)
		}
		return nil
	}
	if err := sc.StartTLS(ctx, tlspolicy.ClientConfig(p.host)); err != nil {
		if !errors.Is(err, smtpclient.ErrTLS) {
			return err
		}
		plain, failure := h.policy.HandshakeFailed(err)
		c.recordSession(p, sc, failure, false)
		if !plain {
			return policyRefusal(h, p.host, "TLS failed", failure, err)
		}
		return fmt.Errorf("%w: %w", errTLSFailed, err)
	}
	cs, _ := sc.ConnectionState()
	ok, failure := tlspolicy.Check(h.policy, cs, p.host)
	c.recordSession(p, sc, failure, true)
	if !ok {
		sc.Quit(min(c.opts.CommandTimeout, quitTimeout))
		return policyRefusal(h, p.host, "certificate not accepted", failure, nil)
	}
	return sc.Hello(ctx)
}

// requireTLSOffered is the check after EHLO of a REQUIRETLS message (RFC
// 8689 §4.2.1): the session is TLS under an authenticating policy (which
// hostPolicy and Check saw to) and the server offers REQUIRETLS.
func requireTLSOffered(p peer, sc *smtpclient.Client) error {
	if !p.requiresTLS() {
		return nil
	}
	if r, ok := tlspolicy.OfferedREQUIRETLS(p.host, sc.TLS() && sc.Ext().RequireTLS); !ok {
		return requireTLSError(r)
	}
	return nil
}

// requiresTLS reports whether the message goes with REQUIRETLS to p.
func (p peer) requiresTLS() bool {
	return p.requireTLS || p.tls != nil && p.tls.requireTLS
}

// logPolicy logs a host that a policy keeps out of d's attempt.
func (m *MX) logPolicy(d *queue.Delivery, host string, err error) {
	m.log.Info("MX host not used: TLS policy", zap.String("id", d.ID), zap.String("domain", d.Domain),
		zap.String("mx", host), replyField(replyOf(err)))
}

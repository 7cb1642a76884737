package outbound_test

import (
	"context"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
	"postern/relay/tlspolicy"
)

// recorder keeps the TLS sessions delivery reports.
type recorder struct {
	mu       sync.Mutex
	sessions []tlspolicy.Session
}

func (r *recorder) Record(s tlspolicy.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions = append(r.sessions, s)
}

func (r *recorder) failures() []tlspolicy.ResultType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []tlspolicy.ResultType
	for _, s := range r.sessions {
		out = append(out, s.Failure)
	}
	return out
}

// policies are TLS policies with the configured override for
// example.test, asking e's DNS, trusting r's certificate.
func (e *env) policies(override tlspolicy.Override, r *relaytest.Receiver) *tlspolicy.Policies {
	e.t.Helper()
	o := tlspolicy.Options{Resolver: e.dns.Addr(), Port: e.port, Overrides: map[string]tlspolicy.Override{}}
	if override != "" {
		o.Overrides["example.test"] = override
	}
	if r != nil {
		o.RootCAs = r.CertPool()
	}
	ps, err := tlspolicy.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	return ps
}

// TestDeliverTLSPolicy: with TLS policies, the host's policy decides what
// STARTTLS and the certificate must be; a refusal is temporary, names the
// policy, sends nothing in clear, and every session is reported.
func TestDeliverTLSPolicy(t *testing.T) {
	const mx1 = "mx1.example.test"
	tests := []struct {
		name     string
		override tlspolicy.Override
		rxOpts   []relaytest.ReceiverOption
		optional bool // the message says TLS-Required: No
		want     want
		wantTLS  bool
		reported []tlspolicy.ResultType
	}{
		{"verify, valid certificate", tlspolicy.OverrideVerify, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, false,
			want{queue.Delivered, "250 ", mx1}, true, []tlspolicy.ResultType{""}},
		{"verify, certificate for another name", tlspolicy.OverrideVerify, []relaytest.ReceiverOption{relaytest.WithSTARTTLS("other.example.test")}, false,
			want{queue.Temporary, "451 4.7.5 mx1.example.test: certificate not accepted, required by delivery.tls_policy for example.test (certificate-host-mismatch)", mx1},
			false, []tlspolicy.ResultType{tlspolicy.CertificateHostMismatch}},
		{"verify, no STARTTLS", tlspolicy.OverrideVerify, nil, false,
			want{queue.Temporary, "451 4.7.10 mx1.example.test: STARTTLS not offered, required by delivery.tls_policy for example.test (starttls-not-supported)", mx1},
			false, []tlspolicy.ResultType{tlspolicy.StartTLSNotSupported}},
		{"verify, no STARTTLS, TLS-Required: No", tlspolicy.OverrideVerify, nil, true,
			want{queue.Delivered, "250 ", mx1}, false, []tlspolicy.ResultType{tlspolicy.StartTLSNotSupported}},
		{"encrypt, self-signed", tlspolicy.OverrideEncrypt, []relaytest.ReceiverOption{relaytest.WithSTARTTLS("other.example.test")}, false,
			want{queue.Delivered, "250 ", mx1}, true, []tlspolicy.ResultType{""}},
		{"no policy, no STARTTLS: plain text, nothing reported", "", nil, false,
			want{queue.Delivered, "250 ", mx1}, false, nil},
		{"dane without TLSA records: host not used", tlspolicy.OverrideDANE, []relaytest.ReceiverOption{relaytest.WithSTARTTLS(mx1)}, false,
			want{queue.Temporary, "451 4.7.5 mx1.example.test not used: delivery.tls_policy requires DANE", ""},
			false, []tlspolicy.ResultType{tlspolicy.DANERequired}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.receiver("127.0.0.2", tt.rxOpts...)
			e.mx("example.test", 10, mx1, "127.0.0.2")
			rec := &recorder{}
			m := e.deliverer(outbound.Options{TLSPolicies: e.policies(tt.override, r), TLSReports: rec})
			d := e.delivery("example.test", "b@example.test")
			d.TLSOptional = tt.optional
			got := m.Deliver(context.Background(), d)
			check(t, got, tt.want)
			checkReceived(t, r, tt.want.outcome == queue.Delivered, tt.wantTLS)
			if got := rec.failures(); !equalTypes(got, tt.reported) {
				t.Errorf("reported %q, want %q", got, tt.reported)
			}
		})
	}
}

func equalTypes(a, b []tlspolicy.ResultType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDeliverTLSPolicyNextMX: a host the policy refuses is passed over for
// the next MX, which the policy accepts.
func TestDeliverTLSPolicyNextMX(t *testing.T) {
	e := newEnv(t)
	bad := e.receiver("127.0.0.2")
	good := e.receiver("127.0.0.3", relaytest.WithSTARTTLS("mx2.example.test"))
	e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
	e.mx("example.test", 20, "mx2.example.test", "127.0.0.3")
	m := e.deliverer(outbound.Options{TLSPolicies: e.policies(tlspolicy.OverrideVerify, good)})
	got := m.Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Delivered, "250 ", "mx2.example.test"})
	if n := len(bad.Messages()); n != 0 {
		t.Errorf("the host without STARTTLS got %d messages in clear", n)
	}
}

// TestDeliverREQUIRETLS: a REQUIRETLS message goes only to a host
// authenticated by DANE or MTA-STS (here: a published MTA-STS policy is
// not at hand, so no host is), and fails for good with 550 5.7.30 without
// a connection; TLS disabled fails it the same way. The checks on a host
// that is authenticated but does not offer REQUIRETLS are the end-to-end
// tests' (cmd/postern).
func TestDeliverREQUIRETLS(t *testing.T) {
	const mx1 = "mx1.example.test"
	for _, tt := range []struct {
		name     string
		override tlspolicy.Override
		tls      outbound.TLSMode
	}{
		{"no policy", "", outbound.Opportunistic},
		{"configured verify on an unsigned MX", tlspolicy.OverrideVerify, outbound.Opportunistic},
		{"delivery.tls disabled", "", outbound.Disabled},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.receiver("127.0.0.2", relaytest.WithSTARTTLS(mx1), relaytest.WithServer(func(s *smtp.Server) { s.EnableREQUIRETLS = true }))
			e.mx("example.test", 10, mx1, "127.0.0.2")
			m := e.deliverer(outbound.Options{TLS: tt.tls, TLSPolicies: e.policies(tt.override, r)})
			d := e.delivery("example.test", "b@example.test")
			d.RequireTLS = true
			got := m.Deliver(context.Background(), d)
			check(t, got, want{queue.Permanent, "550 5.7.30 REQUIRETLS support required: mx1.example.test", ""})
			if n := r.Conns(); n != 0 {
				t.Errorf("receiver saw %d connections, want none", n)
			}
		})
	}
}

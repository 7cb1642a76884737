package relaytest_test

import (
	"testing"

	"github.com/miekg/dns"

	"postern/relay/relaytest"
)

// TestDNSTTL: answers carry TTL 0 until SetTTL, then the TTL set; negative
// answers carry an SOA whose TTL and MINIMUM follow it (RFC 2308 §3), and
// failures carry none.
func TestDNSTTL(t *testing.T) {
	d := relaytest.NewDNS(t, relaytest.Zone{
		"a.example.test":    {A: []string{"127.0.0.2"}},
		"fail.example.test": {Rcode: dns.RcodeServerFailure},
	})
	check := func(want uint32) {
		t.Helper()
		if r := ask(t, d.Addr(), "udp", "a.example.test", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != want {
			t.Errorf("A answer = %v, want TTL %d", r.Answer, want)
		}
		for _, q := range []struct {
			name  string
			qtype uint16
			rcode int
		}{
			{"a.example.test", dns.TypeMX, dns.RcodeSuccess}, // NODATA
			{"missing.example.test", dns.TypeA, dns.RcodeNameError},
		} {
			r := ask(t, d.Addr(), "udp", q.name, q.qtype)
			if r.Rcode != q.rcode || len(r.Answer) != 0 || len(r.Ns) != 1 {
				t.Fatalf("%s %s: %v", dns.TypeToString[q.qtype], q.name, r)
			}
			soa, ok := r.Ns[0].(*dns.SOA)
			if !ok || soa.Hdr.Name != "test." || soa.Hdr.Ttl != want || soa.Minttl != want {
				t.Errorf("%s %s: authority %v, want an SOA of test. with TTL and MINIMUM %d", dns.TypeToString[q.qtype], q.name, r.Ns, want)
			}
		}
		if r := ask(t, d.Addr(), "udp", "fail.example.test", dns.TypeA); r.Rcode != dns.RcodeServerFailure || len(r.Ns) != 0 {
			t.Errorf("SERVFAIL answer: %v", r)
		}
	}
	check(0)
	d.SetTTL(300)
	check(300)
}

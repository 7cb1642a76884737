package tlspolicy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"

	"github.com/miekg/dns"

	"postern/relay/relaytest"
)

// daneWorld is a signed zone with an MX host whose TLSA record matches a
// test certificate, another whose record does not, one with only unusable
// records, an unsigned zone, and a signed zone whose TLSA signature is
// broken: nsd serves them, unbound validates, and the lookups ask unbound.
type daneWorld struct {
	dns       *relaytest.DNSSEC
	cert      tls.Certificate // the MX hosts' certificate
	ps        *Policies
	secureDNS *dnsClient
}

func newDANEWorld(t *testing.T) *daneWorld {
	w := &daneWorld{cert: testCA.Issue(t, "mx.signed.test", "mx2.signed.test", "mx3.signed.test", "mx.unsigned.test", "mx.bogus.test")}
	match := tlsaFor(w.cert.Leaf, 3, 1, 1).String()
	other := tlsaFor(selfSigned(t, "x")[0], 3, 1, 1).String()
	unusable := tlsaFor(w.cert.Leaf, 1, 1, 1).String()
	w.dns = relaytest.NewDNSSEC(t, "127.0.15.1", "127.0.15.2",
		relaytest.SignedZone{Name: "signed.test", Signed: true, Records: []string{
			"@ MX 10 mx",
			"mx A 127.0.0.1",
			"_25._tcp.mx TLSA " + match,
			"nomatch MX 10 mx2",
			"mx2 A 127.0.0.1",
			"_25._tcp.mx2 TLSA " + other,
			"unusable MX 10 mx3",
			"mx3 A 127.0.0.1",
			"_25._tcp.mx3 TLSA " + unusable,
			"notlsa MX 10 mx4",
			"mx4 A 127.0.0.1",
		}},
		relaytest.SignedZone{Name: "unsigned.test", Records: []string{
			"@ MX 10 mx",
			"mx A 127.0.0.1",
			"_25._tcp.mx TLSA " + match,
		}},
		relaytest.SignedZone{Name: "bogus.test", Signed: true, Bogus: "_25._tcp.mx TLSA", Records: []string{
			"@ MX 10 mx",
			"mx A 127.0.0.1",
			"_25._tcp.mx TLSA " + match,
		}},
	)
	var err error
	w.ps, err = New(Options{Resolver: w.dns.Resolver, TrustAD: true})
	if err != nil {
		t.Fatal(err)
	}
	w.secureDNS = &dnsClient{server: w.dns.Resolver, trustAD: true}
	return w
}

// handshake runs a real TLS handshake with a server showing cert, as
// delivery would after STARTTLS, and returns what the client saw.
func handshake(t *testing.T, host string, cert tls.Certificate) tls.ConnectionState {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}}).Handshake()
	tc := tls.Client(c, ClientConfig(host))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc.ConnectionState()
}

// TestDNSSECLookups: unbound, asked with DO, sets AD for the signed zone
// only, and answers SERVFAIL for a broken signature.
func TestDNSSECLookups(t *testing.T) {
	w := newDANEWorld(t)
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		qtype  uint16
		secure bool
		bogus  bool
	}{
		{"signed.test", dns.TypeMX, true, false},
		{"mx.signed.test", dns.TypeA, true, false},
		{"_25._tcp.mx.signed.test", dns.TypeTLSA, true, false},
		{"nothere.signed.test", dns.TypeA, true, false}, // secure NXDOMAIN
		{"unsigned.test", dns.TypeMX, false, false},
		{"_25._tcp.mx.unsigned.test", dns.TypeTLSA, false, false},
		{"bogus.test", dns.TypeMX, true, false},
		{"_25._tcp.mx.bogus.test", dns.TypeTLSA, false, true},
	} {
		a, err := w.secureDNS.query(ctx, tt.name, tt.qtype)
		switch {
		case tt.bogus:
			if !errors.Is(err, ErrBogus) {
				t.Errorf("%s %s: %+v, %v; want ErrBogus (SERVFAIL)", tt.name, dns.TypeToString[tt.qtype], a, err)
			}
		case err != nil:
			t.Errorf("%s %s: %v", tt.name, dns.TypeToString[tt.qtype], err)
		case a.secure != tt.secure:
			t.Errorf("%s %s: secure (AD) = %v, want %v", tt.name, dns.TypeToString[tt.qtype], a.secure, tt.secure)
		}
	}
	// Without TrustAD the same answers count as insecure.
	plain := &dnsClient{server: w.dns.Resolver}
	if a, err := plain.query(ctx, "signed.test", dns.TypeMX); err != nil || a.secure {
		t.Errorf("AD trusted without TrustAD: %+v %v", a, err)
	}
}

// TestDANE: the policy each host gets from the validating resolver, and
// the check of a real handshake against it.
func TestDANE(t *testing.T) {
	w := newDANEWorld(t)
	ctx := context.Background()
	for _, tt := range []struct {
		domain, host string
		mode         Mode
		source       Source
		failure      ResultType // Host's HostError, or the policy's Failure
		refused      bool       // Host returns a HostError
		checkOK      bool       // Check of a handshake with w.cert
	}{
		{"signed.test", "mx.signed.test", DANE, SourceDANE, "", false, true},
		{"nomatch.signed.test", "mx2.signed.test", DANE, SourceDANE, "", false, false},
		{"unusable.signed.test", "mx3.signed.test", Encrypt, SourceDANE, TLSAInvalid, false, true},
		{"notlsa.signed.test", "mx4.signed.test", Opportunistic, SourceNone, "", false, true},
		{"unsigned.test", "mx.unsigned.test", Opportunistic, SourceNone, "", false, true},
		{"bogus.test", "mx.bogus.test", DANE, SourceDANE, DNSSECInvalid, true, false},
	} {
		t.Run(tt.domain, func(t *testing.T) {
			dp := w.ps.Domain(ctx, tt.domain)
			p, err := dp.Host(ctx, tt.host)
			if tt.refused {
				var he *HostError
				if !errors.As(err, &he) || he.Failure != tt.failure {
					t.Fatalf("Host = %+v, %v; want a HostError %q", p, err, tt.failure)
				}
				return
			}
			if err != nil || p.Mode != tt.mode || p.Source != tt.source || p.Failure != tt.failure {
				t.Fatalf("Host = %v (failure %q), %v; want %v from %v, failure %q", p, p.Failure, err, tt.mode, tt.source, tt.failure)
			}
			ok, rt := Check(p, handshake(t, tt.host, w.cert), tt.host)
			if ok != tt.checkOK {
				t.Errorf("Check = %v %q, want ok %v", ok, rt, tt.checkOK)
			}
			if tt.source == SourceDANE && p.Report.Type != PolicyTypeTLSA {
				t.Errorf("reported as %q, want tlsa", p.Report.Type)
			}
		})
	}

	// DANE takes precedence over MTA-STS and the configured policy.
	ps, err := New(Options{Resolver: w.dns.Resolver, TrustAD: true, Overrides: map[string]Override{"signed.test": OverrideVerify}})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := ps.Domain(ctx, "signed.test").Host(ctx, "mx.signed.test"); err != nil || p.Mode != DANE {
		t.Errorf("with a verify override: %v %v, want DANE", p, err)
	}
	// An override that requires DANE refuses a host without it.
	ps, _ = New(Options{Resolver: w.dns.Resolver, TrustAD: true, Overrides: map[string]Override{"unsigned.test": OverrideDANE}})
	_, err = ps.Domain(ctx, "unsigned.test").Host(ctx, "mx.unsigned.test")
	if he, ok := errors.AsType[*HostError](err); !ok || he.Failure != DANERequired {
		t.Errorf("dane override on an unsigned domain: %v, want dane-required", err)
	}
	// A host not named by the secure MX answer gets no DANE, even with
	// secure TLSA records of its own.
	if p, _ := w.ps.Domain(ctx, "unsigned.test").Host(ctx, "mx.signed.test"); p.Mode == DANE {
		t.Errorf("DANE for a host the domain's MX answer did not name securely: %v", p)
	}
}

package tlspolicy

import (
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"testing"
)

func sha512Sum(b []byte) []byte { h := sha512.Sum512(b); return h[:] }

func TestTLSAMatches(t *testing.T) {
	chain := selfSigned(t, "mx.example.test")
	other := selfSigned(t, "mx.example.test")[0]
	leaf := chain[0]
	for _, sel := range []uint8{SelectorCert, SelectorSPKI} {
		for _, mt := range []uint8{MatchFull, MatchSHA256, MatchSHA512} {
			r := tlsaFor(leaf, UsageDANEEE, sel, mt)
			if !r.Matches(leaf) {
				t.Errorf("3 %d %d does not match its own certificate", sel, mt)
			}
			if r.Matches(other) {
				t.Errorf("3 %d %d matches another certificate", sel, mt)
			}
			bad := r
			bad.Data = append([]byte(nil), r.Data...)
			bad.Data[len(bad.Data)-1] ^= 1
			if bad.Matches(leaf) {
				t.Errorf("3 %d %d with one bit changed still matches", sel, mt)
			}
		}
	}
	// Unusable records match nothing, even with the right data.
	for _, r := range []TLSA{
		tlsaFor(leaf, UsagePKIXTA, SelectorSPKI, MatchSHA256),
		tlsaFor(leaf, UsagePKIXEE, SelectorSPKI, MatchSHA256),
		{Usage: 4, Selector: 1, MatchingType: 1, Data: tlsaFor(leaf, 3, 1, 1).Data},
		{Usage: 3, Selector: 2, MatchingType: 1, Data: tlsaFor(leaf, 3, 1, 1).Data},
		{Usage: 3, Selector: 1, MatchingType: 3, Data: tlsaFor(leaf, 3, 1, 1).Data},
		{Usage: 3, Selector: 1, MatchingType: 1, Data: tlsaFor(leaf, 3, 1, 1).Data[:31]}, // short digest
		{Usage: 3, Selector: 0, MatchingType: 0},                                         // no data
	} {
		if r.Usable() || r.Matches(leaf) {
			t.Errorf("%v: usable %v, matches %v", r, r.Usable(), r.Matches(leaf))
		}
	}
	if got := (TLSA{3, 1, 1, []byte{0xab, 0x01}}).String(); got != "3 1 1 AB01" {
		t.Errorf("String() = %q", got)
	}
}

// checkCase is one call of Check and what it must return.
type checkCase struct {
	name  string
	p     HostPolicy
	chain []*x509.Certificate
	ok    bool
	rt    ResultType
}

func runChecks(t *testing.T, host string, cases []checkCase) {
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			ok, rt := Check(tt.p, state(tt.chain), host)
			if ok != tt.ok || rt != tt.rt {
				t.Errorf("Check = %v, %q; want %v, %q", ok, rt, tt.ok, tt.rt)
			}
		})
	}
}

func state(chain []*x509.Certificate) tls.ConnectionState {
	return tls.ConnectionState{PeerCertificates: chain, Version: tls.VersionTLS13}
}

// TestCheckDANE: a valid baseline per usage, then one change each.
func TestCheckDANE(t *testing.T) {
	pki := newPKI(t)
	const host = "mx.example.test"
	chain := pki.leaf(t, false, host)
	expired := pki.leaf(t, true, host)
	wrongName := pki.leaf(t, false, "other.example.test")
	stranger := selfSigned(t, host)

	dane := func(recs ...TLSA) HostPolicy {
		return HostPolicy{Mode: DANE, TLSA: recs, Names: []string{host}, Source: SourceDANE}
	}
	runChecks(t, host, []checkCase{
		{"EE 3 1 1", dane(tlsaFor(chain[0], 3, 1, 1)), chain, true, ""},
		{"EE 3 0 1", dane(tlsaFor(chain[0], 3, 0, 1)), chain, true, ""},
		{"EE 3 1 2", dane(tlsaFor(chain[0], 3, 1, 2)), chain, true, ""},
		{"EE 3 0 0", dane(tlsaFor(chain[0], 3, 0, 0)), chain, true, ""},
		{"EE ignores names and dates", dane(tlsaFor(expired[0], 3, 1, 1)), expired, true, ""},
		{"EE self-signed", dane(tlsaFor(stranger[0], 3, 1, 1)), stranger, true, ""},
		{"EE of another certificate", dane(tlsaFor(stranger[0], 3, 1, 1)), chain, false, ValidationFailure},
		{"EE among several, one matching", dane(tlsaFor(stranger[0], 3, 1, 1), tlsaFor(chain[0], 3, 1, 1)), chain, true, ""},
		{"TA 2 0 1 on the intermediate", dane(tlsaFor(pki.inter, 2, 0, 1)), chain, true, ""},
		{"TA 2 1 1 on the intermediate", dane(tlsaFor(pki.inter, 2, 1, 1)), chain, true, ""},
		{"TA with the wrong name", dane(tlsaFor(pki.inter, 2, 1, 1)), wrongName, false, CertificateHostMismatch},
		{"TA with an expired leaf", dane(tlsaFor(pki.inter, 2, 1, 1)), expired, false, CertificateExpired},
		{"TA not in the chain sent", dane(tlsaFor(pki.root, 2, 1, 1)), chain, false, ValidationFailure},
		{"TA of another chain", dane(tlsaFor(pki.inter, 2, 1, 1)), stranger, false, ValidationFailure},
		{"no records at all", dane(), chain, false, DANERequired},
		{"no certificate", dane(tlsaFor(chain[0], 3, 1, 1)), nil, false, ValidationFailure},
	})
}

func TestCheckWebPKI(t *testing.T) {
	pki := newPKI(t)
	const host = "mx.example.test"
	chain := pki.leaf(t, false, host)
	wild := pki.leaf(t, false, "*.example.test")
	web := HostPolicy{Mode: WebPKI, Source: SourceMTASTS, roots: pki.roots}
	testingP := HostPolicy{Mode: Opportunistic, Testing: true, roots: pki.roots}
	runChecks(t, host, []checkCase{
		{"valid", web, chain, true, ""},
		{"wildcard", web, wild, true, ""},
		{"wrong name", web, pki.leaf(t, false, "other.example.test"), false, CertificateHostMismatch},
		{"expired", web, pki.leaf(t, true, host), false, CertificateExpired},
		{"untrusted", web, selfSigned(t, host), false, CertificateNotTrusted},
		{"missing intermediate", web, chain[:1], false, CertificateNotTrusted},
		{"no certificate", web, nil, false, ValidationFailure},
		{"testing, valid", testingP, chain, true, ""},
		{"testing, untrusted: delivered, reported", testingP, selfSigned(t, host), true, CertificateNotTrusted},
		{"opportunistic ignores the certificate", HostPolicy{}, selfSigned(t, host), true, ""},
		{"encrypt ignores the certificate", HostPolicy{Mode: Encrypt}, selfSigned(t, host), true, ""},
		{"a policy failure is reported on success", HostPolicy{Failure: STSPolicyFetchError}, chain, true, STSPolicyFetchError},
	})
}

func TestNoSTARTTLSAndHandshake(t *testing.T) {
	for _, tt := range []struct {
		p        HostPolicy
		ok       bool
		rt       ResultType
		plainRT  ResultType
		certFail bool
	}{
		{HostPolicy{}, true, "", "", false},
		{HostPolicy{Testing: true}, true, StartTLSNotSupported, ValidationFailure, false},
		{HostPolicy{Mode: Encrypt}, false, StartTLSNotSupported, ValidationFailure, false},
		{HostPolicy{Mode: WebPKI}, false, StartTLSNotSupported, ValidationFailure, false},
		{HostPolicy{Mode: DANE}, false, StartTLSNotSupported, ValidationFailure, false},
	} {
		ok, rt := tt.p.NoSTARTTLS()
		if ok != tt.ok || rt != tt.rt {
			t.Errorf("%v NoSTARTTLS = %v %q, want %v %q", tt.p, ok, rt, tt.ok, tt.rt)
		}
		plain, rt := tt.p.HandshakeFailed(tls.AlertError(40))
		if plain != tt.ok || rt != tt.plainRT {
			t.Errorf("%v HandshakeFailed = %v %q, want %v %q", tt.p, plain, rt, tt.ok, tt.plainRT)
		}
	}
	_, rt := HostPolicy{Mode: WebPKI}.HandshakeFailed(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})
	if rt != CertificateNotTrusted {
		t.Errorf("a verification error is %q", rt)
	}
}

// FuzzTLSAMatch: any record against any certificate never panics; a
// record made from a certificate matches it; an unusable one matches
// nothing.
func FuzzTLSAMatch(f *testing.F) {
	leaf := selfSigned(f, "mx.example.test")[0]
	f.Add(uint8(3), uint8(1), uint8(1), tlsaFor(leaf, 3, 1, 1).Data, leaf.Raw)
	f.Add(uint8(2), uint8(0), uint8(0), leaf.Raw, leaf.Raw)
	f.Add(uint8(0), uint8(1), uint8(2), tlsaFor(leaf, 0, 1, 2).Data, leaf.Raw)
	f.Fuzz(func(t *testing.T, usage, selector, mtype uint8, data, der []byte) {
		r := TLSA{usage, selector, mtype, data}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			cert = leaf
		}
		m := r.Matches(cert)
		if m && !r.Usable() {
			t.Fatalf("unusable %v matches", r)
		}
		if r.Usable() {
			own := tlsaFor(cert, usage, selector, mtype)
			if !own.Matches(cert) {
				t.Fatalf("%v made from the certificate does not match it", own)
			}
		}
		// And through Check, with the record as the policy's only one.
		Check(HostPolicy{Mode: DANE, TLSA: []TLSA{r}}, state([]*x509.Certificate{cert, leaf}), "mx.example.test")
	})
}

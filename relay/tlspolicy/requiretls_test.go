package tlspolicy

import (
	"testing"
)

// TestForMessage: REQUIRETLS accepts only authenticated hosts and makes
// the policy enforced; TLS-Required: No reports without enforcing.
func TestForMessage(t *testing.T) {
	pki := newPKI(t)
	const host = "mx.example.test"
	good := pki.leaf(t, false, host)
	bad := selfSigned(t, host)
	dane := HostPolicy{Mode: DANE, Source: SourceDANE, TLSA: []TLSA{tlsaFor(good[0], 3, 1, 1)}}
	sts := HostPolicy{Mode: WebPKI, Source: SourceMTASTS, roots: pki.roots}
	stsTesting := HostPolicy{Mode: Opportunistic, Testing: true, roots: pki.roots}
	secureMX := HostPolicy{Mode: Opportunistic, mxSecure: true, roots: pki.roots}
	verify := HostPolicy{Mode: WebPKI, Source: SourceConfig, roots: pki.roots}

	for _, tt := range []struct {
		name string
		p    HostPolicy
		ok   bool
		mode Mode
	}{
		{"DANE", dane, true, DANE},
		{"MTA-STS enforce", sts, true, WebPKI},
		{"secure MX, no policy: WebPKI", secureMX, true, WebPKI},
		{"MTA-STS testing", stsTesting, false, 0},
		{"opportunistic", HostPolicy{}, false, 0},
		{"configured verify on an insecure MX", verify, false, 0},
	} {
		t.Run("REQUIRETLS "+tt.name, func(t *testing.T) {
			p, r, ok := tt.p.ForMessage(host, true, false)
			if ok != tt.ok {
				t.Fatalf("ok = %v (%v), want %v", ok, r, tt.ok)
			}
			if !ok {
				if r.Code != 550 || r.Enhanced.String() != "5.7.30" {
					t.Errorf("reply %v, want 550 5.7.30", r)
				}
				return
			}
			if p.Mode != tt.mode || p.Testing {
				t.Errorf("policy %v, want %v enforced", p, tt.mode)
			}
			if ok, _ := Check(p, state(bad), host); ok {
				t.Error("an unauthenticated certificate passes under REQUIRETLS")
			}
			if ok, _ := Check(p, state(good), host); !ok {
				t.Error("the right certificate fails under REQUIRETLS")
			}
			if ok, _ := p.NoSTARTTLS(); ok {
				t.Error("plain text allowed under REQUIRETLS")
			}
		})
	}
	if r, ok := OfferedREQUIRETLS(host, false); ok || r.Enhanced.String() != "5.7.30" {
		t.Errorf("a server without REQUIRETLS: %v %v", r, ok)
	}
	if _, ok := OfferedREQUIRETLS(host, true); !ok {
		t.Error("a server offering REQUIRETLS refused")
	}

	// TLS-Required: No relaxes every policy, and still reports.
	for _, p := range []HostPolicy{dane, sts, {Mode: Encrypt}} {
		q, _, ok := p.ForMessage(host, false, true)
		if !ok {
			t.Fatalf("%v refused", p)
		}
		if ok, rt := Check(q, state(bad), host); p.Mode != Encrypt && (!ok || rt == "") {
			t.Errorf("%v relaxed: Check = %v %q, want delivered and reported", p, ok, rt)
		}
		if ok, rt := q.NoSTARTTLS(); !ok || rt != StartTLSNotSupported {
			t.Errorf("%v relaxed: NoSTARTTLS = %v %q", p, ok, rt)
		}
		if plain, _ := q.HandshakeFailed(nil); !plain {
			t.Errorf("%v relaxed: no plain-text fallback", p)
		}
	}
	// Neither: unchanged.
	if q, _, ok := sts.ForMessage(host, false, false); !ok || q.relaxed || q.Mode != WebPKI {
		t.Errorf("ForMessage without requests changed the policy: %v", q)
	}
}

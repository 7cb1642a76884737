package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// zone is a fake DNS for CheckHost: records by name; a name absent is
// NXDOMAIN, "servfail" among a name's TXT makes every lookup of it fail.
type zone struct {
	txt  map[string][]string
	a    map[string][]string // A and AAAA together
	mx   map[string][]string
	ptr  map[string][]string // by address
	asks int
}

func notFoundErr(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (z *zone) LookupTXT(_ context.Context, name string) ([]string, error) {
	z.asks++
	t, ok := z.txt[name]
	if !ok {
		return nil, notFoundErr(name)
	}
	if len(t) == 1 && t[0] == "servfail" {
		return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	return t, nil
}

func (z *zone) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	z.asks++
	var out []netip.Addr
	for _, s := range z.a[host] {
		a := netip.MustParseAddr(s)
		if a.Is4() == (network == "ip4") {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, notFoundErr(host)
	}
	return out, nil
}

func (z *zone) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	z.asks++
	hosts, ok := z.mx[name]
	if !ok {
		return nil, notFoundErr(name)
	}
	var out []*net.MX
	for i, h := range hosts {
		out = append(out, &net.MX{Host: h + ".", Pref: uint16(10 * i)})
	}
	return out, nil
}

func (z *zone) LookupAddr(_ context.Context, addr string) ([]string, error) {
	z.asks++
	names, ok := z.ptr[addr]
	if !ok {
		return nil, notFoundErr(addr)
	}
	return names, nil
}

// TestCheckHost: one zone, many questions. Each case names the domain,
// the client address, and the result and deciding term expected.
func TestCheckHost(t *testing.T) {
	z := &zone{
		txt: map[string][]string{
			"ip.test":            {"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"},
			"a.test":             {"v=spf1 a -all"},
			"a-cidr.test":        {"v=spf1 a/24//64 ~all"},
			"a-other.test":       {"v=spf1 a:mail.a.test -all"},
			"mx.test":            {"v=spf1 mx ?all"},
			"include.test":       {"some other TXT", "v=spf1 include:ip.test -all"},
			"include-fail.test":  {"v=spf1 include:a.test ~all"},
			"include-none.test":  {"v=spf1 include:nothing.test -all"},
			"redirect.test":      {"v=spf1 redirect=ip.test"},
			"redirect-none.test": {"v=spf1 redirect=nothing.test"},
			"neutral.test":       {"v=spf1 ip4:198.51.100.1"},
			"two.test":           {"v=spf1 -all", "v=spf1 +all"},
			"broken.test":        {"v=spf1 ip4:300.1.1.1 -all"},
			"temp.test":          {"v=spf1 include:servfail.test -all"},
			"servfail.test":      {"servfail"},
			"exists.test":        {"v=spf1 exists:%{ir}.%{v}._spf.exists.test -all"},
			"ptr.test":           {"v=spf1 ptr -all"},
			"macro-l.test":       {"v=spf1 exists:%{l1r-}.users.macro-l.test -all"},
			"void.test":          {"v=spf1 a:n1.test a:n2.test a:n3.test +all"},
			"upper.test":         {"V=SPF1 IP4:192.0.2.1 -ALL"},
			"nospf.test":         {"google-site-verification=abc"},
		},
		a: map[string][]string{
			"a.test":                              {"192.0.2.10", "2001:db8::10"},
			"a-cidr.test":                         {"198.51.100.1", "2001:db8:1::1"},
			"mail.a.test":                         {"203.0.113.5"},
			"mx1.mx.test":                         {"203.0.113.7"},
			"mx2.mx.test":                         {"2001:db8::7"},
			"10.2.0.192.in-addr._spf.exists.test": {"127.0.0.2"},
			"host.ptr.test":                       {"192.0.2.20"},
			"liar.ptr.test":                       {"192.0.2.99"},
			"bob.users.macro-l.test":              {"127.0.0.2"},
		},
		mx: map[string][]string{"mx.test": {"mx1.mx.test", "mx2.mx.test"}},
		ptr: map[string][]string{
			"192.0.2.20": {"host.ptr.test."},
			"192.0.2.21": {"liar.ptr.test."},
		},
	}
	// A chain of 11 includes, for the lookup limit.
	for i := range 11 {
		z.txt[fmt.Sprintf("chain%d.test", i)] = []string{fmt.Sprintf("v=spf1 include:chain%d.test -all", i+1)}
	}
	z.txt["chain11.test"] = []string{"v=spf1 +all"}
	z.txt["chain9-ok.test"] = []string{"v=spf1 include:chain2.test -all"} // 10 lookups: the limit itself

	for _, tc := range []struct {
		domain, ip, sender string
		want               Result
		matched            string
	}{
		{"ip.test", "192.0.2.44", "", ResultPass, "ip4:192.0.2.0/24"},
		{"ip.test", "2001:db8:ffff::1", "", ResultPass, "ip6:2001:db8::/32"},
		{"ip.test", "198.51.100.1", "", ResultFail, "-all"},
		{"ip.test", "::ffff:192.0.2.1", "", ResultPass, "ip4:192.0.2.0/24"}, // a mapped IPv4 is IPv4
		{"upper.test", "192.0.2.1", "", ResultPass, "IP4:192.0.2.1"},
		{"a.test", "192.0.2.10", "", ResultPass, "a"},
		{"a.test", "2001:db8::10", "", ResultPass, "a"},
		{"a.test", "192.0.2.11", "", ResultFail, "-all"},
		{"a-cidr.test", "198.51.100.200", "", ResultPass, "a/24//64"},
		{"a-cidr.test", "2001:db8:1::ffff", "", ResultPass, "a/24//64"},
		{"a-cidr.test", "2001:db8:2::1", "", ResultSoftFail, "~all"},
		{"a-other.test", "203.0.113.5", "", ResultPass, "a:mail.a.test"},
		{"mx.test", "203.0.113.7", "", ResultPass, "mx"},
		{"mx.test", "2001:db8::7", "", ResultPass, "mx"},
		{"mx.test", "203.0.113.8", "", ResultNeutral, "?all"},
		{"include.test", "192.0.2.1", "", ResultPass, "include:ip.test"},
		{"include.test", "198.51.100.9", "", ResultFail, "-all"}, // the include's -all is no match
		{"include-fail.test", "198.51.100.9", "", ResultSoftFail, "~all"},
		{"include-none.test", "192.0.2.1", "", ResultPermError, "include:nothing.test"},
		{"redirect.test", "192.0.2.1", "", ResultPass, "ip4:192.0.2.0/24"},
		{"redirect.test", "198.51.100.1", "", ResultFail, "-all"},
		{"redirect-none.test", "192.0.2.1", "", ResultPermError, ""},
		{"neutral.test", "192.0.2.1", "", ResultNeutral, ""},
		{"two.test", "192.0.2.1", "", ResultPermError, ""},
		{"broken.test", "192.0.2.1", "", ResultPermError, ""},
		{"temp.test", "192.0.2.1", "", ResultTempError, "include:servfail.test"},
		{"servfail.test", "192.0.2.1", "", ResultTempError, ""},
		{"nothing.test", "192.0.2.1", "", ResultNone, ""},
		{"nospf.test", "192.0.2.1", "", ResultNone, ""},
		{"exists.test", "192.0.2.10", "", ResultPass, "exists:%{ir}.%{v}._spf.exists.test"},
		{"exists.test", "192.0.2.11", "", ResultFail, "-all"},
		{"ptr.test", "192.0.2.20", "", ResultPass, "ptr"},
		{"ptr.test", "192.0.2.21", "", ResultFail, "-all"}, // its PTR name does not resolve back
		{"macro-l.test", "192.0.2.1", "bob-smith@macro-l.test", ResultPass, "exists:%{l1r-}.users.macro-l.test"},
		{"void.test", "192.0.2.1", "", ResultPermError, "a:n3.test"},
		{"chain0.test", "192.0.2.1", "", ResultPermError, ""},
		{"chain9-ok.test", "192.0.2.1", "", ResultPass, "include:chain2.test"},
		{"not-a-domain", "192.0.2.1", "", ResultNone, ""},
	} {
		t.Run(tc.domain+"/"+tc.ip, func(t *testing.T) {
			sender := tc.sender
			if sender == "" {
				sender = "alice@" + tc.domain
			}
			out := CheckHost(context.Background(), z, netip.MustParseAddr(tc.ip), tc.domain, sender, "mail.example.test")
			if out.Result != tc.want {
				t.Fatalf("%s from %s: %s (%v), want %s", tc.domain, tc.ip, out.Result, out.Err, tc.want)
			}
			if tc.matched != "" && out.Matched != tc.matched {
				t.Errorf("matched %q, want %q", out.Matched, tc.matched)
			}
			if (out.Result == ResultPermError || out.Result == ResultTempError) && out.Err == nil {
				t.Error("an error result without Err")
			}
			if out.Lookups > MaxLookups+1 {
				t.Errorf("%d lookups counted: the evaluation did not stop at the limit", out.Lookups)
			}
		})
	}
}

// TestLookupLimit: exactly MaxLookups DNS terms pass, one more is a
// PermError that says so; the count is reported.
func TestLookupLimit(t *testing.T) {
	for _, n := range []int{MaxLookups, MaxLookups + 1} {
		z := &zone{txt: map[string][]string{}, a: map[string][]string{}}
		var terms []string
		for i := range n {
			host := fmt.Sprintf("h%d.test", i)
			z.a[host] = []string{"198.51.100.1"}
			terms = append(terms, "a:"+host)
		}
		z.txt["limit.test"] = []string{"v=spf1 " + strings.Join(terms, " ") + " +all"}
		out := CheckHost(context.Background(), z, netip.MustParseAddr("192.0.2.1"), "limit.test", "a@limit.test", "h")
		want := ResultPass
		if n > MaxLookups {
			want = ResultPermError
		}
		if out.Result != want {
			t.Errorf("%d lookups: %s (%v), want %s", n, out.Result, out.Err, want)
		}
		if want == ResultPermError && !strings.Contains(out.Err.Error(), "more than 10 DNS lookups") {
			t.Errorf("error %q does not name the limit", out.Err)
		}
		if out.Lookups != min(n, MaxLookups+1) {
			t.Errorf("Lookups = %d, want %d", out.Lookups, min(n, MaxLookups+1))
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		want string // kinds and domains, for the good ones
	}{
		{"v=spf1", true, ""},
		{"v=spf1 -all", true, "-all"},
		{"v=spf1  ip4:192.0.2.1   ~all ", true, "+ip4:192.0.2.1/32 ~all"},
		{"v=spf1 a mx/24 a:%{d}.x.test/24//64 ptr:p.test exists:%{i}.e.test include:i.test ?all", true,
			"+a +mx/24 +a:%{d}.x.test/24//64 +ptr:p.test +exists:%{i}.e.test +include:i.test ?all"},
		{"v=spf1 redirect=r.test exp=explain.%{d} foo=bar", true, ""},
		{"v=spf1 ip6:2001:db8::/32 ip6:::1", true, "+ip6:2001:db8::/32 +ip6:::1/128"},
		{"v=spf10 -all", false, ""},
		{"spf1 -all", false, ""},
		{"v=spf1 ip4:2001:db8::1", false, ""},
		{"v=spf1 ip6:192.0.2.1", false, ""},
		{"v=spf1 ip4:192.0.2.1/33", false, ""},
		{"v=spf1 ip4:192.0.2.1/024", false, ""},
		{"v=spf1 a/129", false, ""},
		{"v=spf1 a//129", false, ""},
		{"v=spf1 include", false, ""},
		{"v=spf1 include:nodot", false, ""},
		{"v=spf1 include:example.123", false, ""},
		{"v=spf1 all:x.test", false, ""},
		{"v=spf1 foo:x.test", false, ""},
		{"v=spf1 redirect=a.test redirect=b.test", false, ""},
		{"v=spf1 exists:%{z}.test", false, ""},
		{"v=spf1 exists:%{i", false, ""},
		{"v=spf1 exists:100%.test", false, ""},
		{"v=spf1 exists:%{c}.test", true, "+exists:%{c}.test"}, // parses; evaluation refuses c outside exp
		{"v=spf1 ip4:192.0.2.1\t-all", false, ""},
	} {
		r, err := Parse(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("Parse(%q): %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q): %v does not wrap ErrSyntax", tc.in, err)
			}
			continue
		}
		var got []string
		for _, m := range r.Mechanisms {
			s := string(m.Qualifier) + m.Kind
			switch {
			case m.Kind == "ip4" || m.Kind == "ip6":
				s += ":" + m.Net.String()
			case m.Domain != "":
				s += ":" + m.Domain
			}
			if m.Kind == "a" || m.Kind == "mx" {
				if m.Len4 != 32 {
					s += fmt.Sprintf("/%d", m.Len4)
				}
				if m.Len6 != 128 {
					s += fmt.Sprintf("//%d", m.Len6)
				}
			}
			got = append(got, s)
		}
		if tc.want != "" && strings.Join(got, " ") != tc.want {
			t.Errorf("Parse(%q) = %q, want %q", tc.in, strings.Join(got, " "), tc.want)
		}
	}
}

// TestMacros: RFC 7208 §7.4's own examples.
func TestMacros(t *testing.T) {
	e := &env{ip: netip.MustParseAddr("192.0.2.3"), sender: "strong-bad@email.example.com", domain: "email.example.com", helo: "h.test"}
	e6 := &env{ip: netip.MustParseAddr("2001:db8::cb01"), sender: "strong-bad@email.example.com", domain: "email.example.com"}
	for _, tc := range []struct {
		e        *env
		in, want string
	}{
		{e, "%{s}", "strong-bad@email.example.com"},
		{e, "%{o}", "email.example.com"},
		{e, "%{d}", "email.example.com"},
		{e, "%{d4}", "email.example.com"},
		{e, "%{d3}", "email.example.com"},
		{e, "%{d2}", "example.com"},
		{e, "%{d1}", "com"},
		{e, "%{dr}", "com.example.email"},
		{e, "%{d2r}", "example.email"},
		{e, "%{l}", "strong-bad"},
		{e, "%{l-}", "strong.bad"},
		{e, "%{lr}", "strong-bad"},
		{e, "%{lr-}", "bad.strong"},
		{e, "%{l1r-}", "strong"},
		{e, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"},
		{e, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"},
		{e, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
		{e, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"},
		{e, "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"},
		{e6, "%{ir}.%{v}._spf.%{d2}", "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"},
		{e, "%%%_%-", "% %20"},
		{e, "%{S}", "strong-bad%40email.example.com"},
		{e, "%{h}", "h.test"},
	} {
		got, err := tc.e.expand(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := e.expand("%{c}"); err == nil {
		t.Error("%{c} outside exp= expanded")
	}
}

// FuzzParse: Parse never panics, and a record it accepts evaluates
// without panicking against an empty zone.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"v=spf1 -all",
		"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ptr include:x.test exists:%{ir}.%{v}.x.test redirect=y.test ~all",
		"v=spf1 a:%{d2r-}.x.test/24//64 exp=%{S}.e.test",
		"v=spf1 exists:%{l1r+-}.%%.%_.x.test",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q): %v does not wrap ErrSyntax", s, err)
			}
			return
		}
		if r == nil {
			t.Fatalf("Parse(%q): nil record without an error", s)
		}
		z := &zone{txt: map[string][]string{"f.test": {s}}}
		CheckHost(context.Background(), z, netip.MustParseAddr("192.0.2.1"), "f.test", "a@f.test", "h.test")
		if z.asks > 2*(MaxLookups+1)*(maxNames+1) {
			t.Fatalf("%q: %d DNS questions", s, z.asks)
		}
	})
}

package submit

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	// A domain of exactly n bytes made of 63-byte labels.
	domain := func(n int) string {
		var labels []string
		for n > 0 {
			l := min(n, 63)
			if n-l == 1 { // avoid a lone trailing dot
				l--
			}
			labels = append(labels, strings.Repeat("d", l))
			n -= l + 1
		}
		return strings.Join(labels, ".")
	}
	d189 := domain(189)
	if len(d189) != 189 || len("@"+d189) != 190 {
		t.Fatalf("test helper: domain of %d bytes", len(d189))
	}

	valid := []struct {
		in   string
		want Address
	}{
		{"alice@example.test", Address{"alice", "example.test"}},
		{"Alice@EXAMPLE.Test", Address{"Alice", "example.test"}}, // local part keeps its case
		{"alice+tag@example.test", Address{"alice+tag", "example.test"}},
		{"first.last@mail.sub.example.test", Address{"first.last", "mail.sub.example.test"}},
		{"#$&'*+-/=?^_`{|}~@example.test", Address{"#$&'*+-/=?^_`{|}~", "example.test"}},
		{"a@xn--bcher-kva.example", Address{"a", "xn--bcher-kva.example"}}, // an A-label
		// Internationalised domains become their A-labels (RFC 5891 §5).
		{"a@bücher.example", Address{"a", "xn--bcher-kva.example"}},
		{"a@BÜCHER.Example", Address{"a", "xn--bcher-kva.example"}},
		{"a@exämple.test", Address{"a", "xn--exmple-cua.test"}},
		{"a@例え.テスト", Address{"a", "xn--r8jz45g.xn--zckzah"}},
		{"a@123.example", Address{"a", "123.example"}},
		{"a@x-y.example", Address{"a", "x-y.example"}},
		{"1@123.example", Address{"1", "123.example"}},
		{long(64) + "@example.test", Address{long(64), "example.test"}},
		{long(64) + "@" + d189, Address{long(64), d189}}, // exactly 254
	}
	for _, tt := range valid {
		got, err := ParseAddress(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseAddress(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}

	invalid := []struct {
		in   string
		want error
	}{
		{"", errAddrEmpty},
		{"alice", errAddrAt},
		{"a@b@example.test", errAddrAt},
		{"a@b@c", errAddrAt}, // how "a@b"@c arrives from go-smtp
		{"@example.test", errAddrLocal},
		{long(65) + "@example.test", errAddrLong},
		{long(65) + "@" + d189[1:], errAddrLong}, // 255 bytes in all
		{long(300), errAddrLong},
		{".a@example.test", errAddrLocal},
		{"a.@example.test", errAddrLocal},
		{"a..b@example.test", errAddrLocal},
		{"a b@example.test", errAddrLocal},
		{`a"b@example.test`, errAddrLocal},
		{"a(b)@example.test", errAddrLocal},
		{"ålice@example.test", errAddrLocal},
		{"a\x00@example.test", errAddrLocal},
		{"a@[192.0.2.1]", errAddrLiteral},
		{"a@[IPv6:2001:db8::1]", errAddrLiteral},
		{"a@", errAddrDomain},
		{"a@localhost", errAddrDomain},
		{"a@example.test.", errAddrDomain},
		{"a@.example.test", errAddrDomain},
		{"a@example..test", errAddrDomain},
		{"a@-example.test", errAddrDomain},
		{"a@example-.test", errAddrDomain},
		{"a@ex_ample.test", errAddrDomain},
		{"a@exa mple.test", errAddrDomain},
		{"a@exa\u00a0mple.test", errAddrDomain}, // a no-break space: no IDNA label
		{"a@ex\xffample.test", errAddrDomain},   // not UTF-8
		// Forms another profile would map onto a different domain.
		{"a@dest\uff0etest", errAddrDomain},  // full-width full stop
		{"a@dest\u3002test", errAddrDomain},  // ideographic full stop
		{"a@dest.test\u200b", errAddrDomain}, // zero-width space
		{"a@a\u0301b.test", errAddrDomain},   // not in NFC
		{"a@" + long(64) + ".test", errAddrDomain},
		{"a@192.0.2.1]", errAddrDomain},
		{"a@192.0.2.1", errAddrDomain}, // all-numeric top label
		{"a@example.123", errAddrDomain},
		{"a@ab--cd.example", errAddrDomain}, // reserved label
		{"a@xn--.example", errAddrDomain},
		{"user%other.example@example.test", errAddrRoute},
		{"other.example!user@example.test", errAddrRoute},
		{"a!b%c@example.test", errAddrRoute},
	}
	for _, tt := range invalid {
		got, err := ParseAddress(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("ParseAddress(%q) = %+v, %v; want error %v", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"alice@example.test", "Alice@EXAMPLE.Test", "a+b@x.y", "a@b@c", "a@[1.2.3.4]",
		"a..b@x.y", "a@x.y.", "", "@", "ålice@example.test", strings.Repeat("a", 64) + "@x.y",
		"a@bücher.example", "a@例え.テスト", "a@xn--bcher-kva.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if a != (Address{}) {
				t.Fatalf("ParseAddress(%q) = %+v with error %v", s, a, err)
			}
			return
		}
		out := a.String()
		// An internationalised domain comes back as its A-labels; anything
		// else as it came, but for case.
		if ascii := isASCII(s); ascii && !strings.EqualFold(out, s) || !ascii && !strings.HasPrefix(out, a.Local+"@") || len(out) > 254 || len(a.Local) > 64 || !isASCII(out) {
			t.Fatalf("ParseAddress(%q) = %q", s, out)
		}
		if a.Domain != strings.ToLower(a.Domain) {
			t.Fatalf("ParseAddress(%q): domain %q not lower-cased", s, a.Domain)
		}
		b, err := ParseAddress(out)
		if err != nil || b != a {
			t.Fatalf("ParseAddress(%q) = %+v, but its String %q parses to %+v, %v", s, a, out, b, err)
		}
	})
}

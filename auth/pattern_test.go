package auth

import (
	"errors"
	"strings"
	"testing"
)

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		addr    string
		want    bool
	}{
		// Exact address.
		{"alice@example.test", "alice@example.test", true},
		{"alice@example.test", "bob@example.test", false},
		{"alice@example.test", "alice@example.org", false},
		{"alice@example.test", "alice", false},
		{"alice@example.test", "", false},
		{"alice@example.test", "alicex@example.test", false},
		{"alice@example.test", "xalice@example.test", false},
		// Case folding, both halves, both sides.
		{"alice@example.test", "Alice@Example.TEST", true},
		{"Alice@EXAMPLE.test", "alice@example.test", true},
		// Only ASCII folds: KELVIN SIGN is not k.
		{"k@example.test", "\u212a@example.test", false},
		{"ü@example.test", "Ü@example.test", false},
		{"ü@example.test", "ü@example.test", true},
		// Domain.
		{"@example.test", "alice@example.test", true},
		{"@example.test", "bob@EXAMPLE.test", true},
		{"@example.test", "alice@sub.example.test", false},
		{"@example.test", "alice@notexample.test", false},
		{"@example.test", "alice@example.test.evil", false},
		{"@example.test", "@example.test", false},
		{"@example.test", "example.test", false},
		{"@example.test", "", false},
		{"@sub.example.test", "a@sub.example.test", true},
		{"@sub.example.test", "a@example.test", false},
		// The last @ is the separator.
		{"@example.test", `"a@b"@example.test`, true},
		{"@b", `"a@b"@example.test`, false},
		// Wildcard.
		{"*", "anyone@anywhere.test", true},
		{"*", "", true},
		{"*", "not an address", true},
	}
	for _, tc := range tests {
		p, err := ParsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tc.pattern, err)
		}
		if got := p.Match(tc.addr); got != tc.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tc.pattern, tc.addr, got, tc.want)
		}
	}
}

func TestZeroPatternMatchesNothing(t *testing.T) {
	var p Pattern
	for _, addr := range []string{"", "a@b", "*"} {
		if p.Match(addr) {
			t.Errorf("zero Pattern matches %q", addr)
		}
	}
}

func TestParsePatternErrors(t *testing.T) {
	tests := []struct {
		in   string
		want string // substring of the error
	}{
		{"", "empty"},
		{"alice", "no @"},
		{"example.test", "no @"},
		{"a@b@c", "more than one @"},
		{"@", "empty domain"},
		{"alice@", "empty domain"},
		{"*@example.test", "write @example.test"},
		{"**", "no @"},
		{"a b@example.test", "unsupported character"},
		{"a,b@example.test", "unsupported character"},
		{`"a"@example.test`, "unsupported character"},
		{".a@example.test", "misplaced dot"},
		{"a.@example.test", "misplaced dot"},
		{"a..b@example.test", "misplaced dot"},
		{"a@.example.test", "empty label"},
		{"a@example.test.", "empty label"},
		{"a@example..test", "empty label"},
		{"a@[192.0.2.1]", "unsupported character"},
		{"a@exa mple.test", "unsupported character"},
		{"a@example.test:25", "unsupported character"},
		{"a@" + strings.Repeat("x", 64) + ".test", "longer than 63"},
		{strings.Repeat("a", 250) + "@example.test", "longer than 255"},
		{"a\xff@example.test", "UTF-8"},
		{"a\x00@example.test", "unsupported character"},
		{" a@example.test", "unsupported character"},
	}
	for _, tc := range tests {
		_, err := ParsePattern(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePattern(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestPatternString(t *testing.T) {
	for in, want := range map[string]string{
		"*":                  "*",
		"@Example.Test":      "@example.test",
		"Alice@Example.Test": "alice@example.test",
		"ü@bücher.test":      "ü@bücher.test",
	} {
		p := MustParsePattern(in)
		if got := p.String(); got != want {
			t.Errorf("ParsePattern(%q).String() = %q, want %q", in, got, want)
		}
		if q := MustParsePattern(p.String()); q != p {
			t.Errorf("%q does not round-trip: %#v != %#v", in, q, p)
		}
	}
}

func TestDefaultAllow(t *testing.T) {
	got, err := DefaultAllow("Alice@Example.test")
	if err != nil || len(got) != 1 || got[0] != MustParsePattern("alice@example.test") {
		t.Errorf("DefaultAllow(address) = %v, %v", got, err)
	}
	for _, name := range []string{"webapp", "@example.test", "*", "a@b@c"} {
		got, err := DefaultAllow(name)
		if !errors.Is(err, ErrNoDefaultAllow) || got != nil {
			t.Errorf("DefaultAllow(%q) = %v, %v; want ErrNoDefaultAllow", name, got, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	good := []string{"alice@example.test", "webapp", "ü", strings.Repeat("a", MaxNameLen), "a#b"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v", n, err)
		}
	}
	bad := []string{"", "a:b", "a b", "a\tb", "a\nb", "a\x00b", "a\x7fb", "a\u0085b", "a\u00a0b", "#a",
		strings.Repeat("a", MaxNameLen+1), "a\xffb"}
	for _, n := range bad {
		if err := ValidateName(n); err == nil {
			t.Errorf("ValidateName(%q) = nil, want error", n)
		}
	}
}

func TestMaySendAs(t *testing.T) {
	u := NewUser("alice@example.test", []Pattern{
		MustParsePattern("alice@example.test"),
		MustParsePattern("@lists.example.test"),
	})
	for addr, want := range map[string]bool{
		"alice@example.test":     true,
		"ALICE@example.test":     true,
		"x@lists.example.test":   true,
		"bob@example.test":       false,
		"":                       true, // null sender: RFC 6409 §3.2
		"alice@sub.example.test": false,
	} {
		if got := u.MaySendAs(addr); got != want {
			t.Errorf("MaySendAs(%q) = %v, want %v", addr, got, want)
		}
	}
	nobody := NewUser("x", nil)
	if nobody.MaySendAs("x@example.test") || nobody.MaySendAs("") {
		t.Error("a user with no patterns may send")
	}
	if !NewUser("relay", []Pattern{MustParsePattern("*")}).MaySendAs("") {
		t.Error("* does not allow the null sender")
	}
}

package tlspolicy

import (
	"slices"
	"strings"
	"testing"
)

func TestParseSTSPolicy(t *testing.T) {
	good := "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n"
	p, err := ParseSTSPolicy([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != STSEnforce || p.MaxAge != 604800 || !slices.Equal(p.MX, []string{"mail.example.com", "*.example.net", "backupmx.example.com"}) {
		t.Errorf("parsed %+v", p)
	}
	want := []string{"version: STSv1", "mode: enforce", "mx: mail.example.com", "mx: *.example.net", "mx: backupmx.example.com", "max_age: 604800"}
	if !slices.Equal(p.Strings(), want) {
		t.Errorf("Strings() = %q", p.Strings())
	}

	// A valid baseline, then one change per case.
	for _, tt := range []struct {
		name, policy string
		ok           bool
	}{
		{"CRLF", strings.ReplaceAll(good, "\n", "\r\n"), true},
		{"no final newline", strings.TrimSuffix(good, "\n"), true},
		{"keys in another order", "mx: a.example\nmax_age: 1\nmode: testing\nversion: STSv1\n", true},
		{"spaces after the colon and at the end", "version:   STSv1  \nmode:\tenforce\nmx: a.example\nmax_age: 86400\n", true},
		{"an extension", good + "x-ext: some value here\n", true},
		{"mode none without mx", "version: STSv1\nmode: none\nmax_age: 86400\n", true},
		{"upper-case mx is lowered", "version: STSv1\nmode: enforce\nmx: MX.Example.COM\nmax_age: 1\n", true},
		{"max_age 31557600", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557600\n", true},

		{"empty", "", false},
		{"no version", "mode: enforce\nmx: a.example\nmax_age: 1\n", false},
		{"version STSv2", "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", false},
		{"no mode", "version: STSv1\nmx: a.example\nmax_age: 1\n", false},
		{"bad mode", "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", false},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.example\n", false},
		{"max_age too large", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", false},
		{"max_age negative", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", false},
		{"max_age 11 digits", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 00000000001\n", false},
		{"no mx in enforce", "version: STSv1\nmode: enforce\nmax_age: 1\n", false},
		{"no mx in testing", "version: STSv1\nmode: testing\nmax_age: 1\n", false},
		{"mode twice", good + "mode: testing\n", false},
		{"version twice", good + "version: STSv1\n", false},
		{"max_age twice", good + "max_age: 1\n", false},
		{"mx with a port", "version: STSv1\nmode: enforce\nmx: a.example:25\nmax_age: 1\n", false},
		{"mx wildcard in the middle", "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", false},
		{"mx bare star", "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", false},
		{"a line without colon", good + "junk\n", false},
		{"a blank line", "version: STSv1\n\nmode: enforce\nmx: a.example\nmax_age: 1\n", false},
		{"space before the colon", "version : STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", false},
		{"empty value", "version: STSv1\nmode: \nmx: a.example\nmax_age: 1\n", false},
		{"control character", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nx: a\x01b\n", false},
		{"HTML", "<html><body>hello</body></html>\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseSTSPolicy([]byte(tt.policy))
			if tt.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Errorf("accepted as %+v", p)
			}
		})
	}
}

func TestMatchMX(t *testing.T) {
	for _, tt := range []struct {
		pattern, host string
		want          bool
	}{
		{"mail.example.com", "mail.example.com", true},
		{"mail.example.com", "MAIL.Example.com.", true},
		{"mail.example.com", "mail2.example.com", false},
		{"*.example.com", "mx.example.com", true},
		{"*.example.com", "MX.EXAMPLE.COM", true},
		{"*.example.com", "a.mx.example.com", false}, // one label only (§4.1)
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "mx.example.com.evil", false},
		{"*.example.com", "mxexample.com", false},
		{"", "example.com", false},
		{"example.com", "", false},
	} {
		if got := MatchMX(tt.pattern, tt.host); got != tt.want {
			t.Errorf("MatchMX(%q, %q) = %v, want %v", tt.pattern, tt.host, got, tt.want)
		}
	}
	p := &STSPolicy{Mode: STSEnforce, MX: []string{"mx1.example.org", "*.backup.example.org"}}
	if !p.Allows("mx1.example.org") || !p.Allows("b1.backup.example.org") || p.Allows("evil.example.org") {
		t.Error("Allows does not follow the patterns")
	}
}

func FuzzParseSTSPolicy(f *testing.F) {
	f.Add([]byte("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"))
	f.Add([]byte("version: STSv1\r\nmode: none\r\nmax_age: 0\r\n"))
	f.Add([]byte("mode: testing\nversion: STSv1\nmx: a\nmax_age: 1\nx: y z\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseSTSPolicy(data)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > maxSTSMaxAge {
			t.Fatalf("max_age %d accepted", p.MaxAge)
		}
		if p.Mode != STSEnforce && p.Mode != STSTesting && p.Mode != STSNone {
			t.Fatalf("mode %q accepted", p.Mode)
		}
		if p.Mode != STSNone && len(p.MX) == 0 {
			t.Fatal("a policy without mx accepted")
		}
		// What the parser accepts, re-serialized, reads back the same.
		again, err := ParseSTSPolicy([]byte(strings.Join(p.Strings(), "\n")))
		if err != nil || again.Mode != p.Mode || again.MaxAge != p.MaxAge || !slices.Equal(again.MX, p.MX) {
			t.Fatalf("round trip of %+v: %+v, %v", p, again, err)
		}
	})
}

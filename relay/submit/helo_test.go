package submit

import (
	"strings"
	"testing"
)

func TestSanitizeHelo(t *testing.T) {
	tests := []struct{ in, want string }{
		{"client.example.test", "client.example.test"},
		{"[192.0.2.1]", "[192.0.2.1]"},
		{"[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"},
		{"", "unknown"},
		{"a b", "a_b"},
		{"a\r\nX-Injected: yes", "a__X-Injected:_yes"},
		{"a\rb\nc\td\x00e\x7ff", "a_b_c_d_e_f"},
		{"evil(comment)", "evil_comment_"},
		{"a;b", "a_b"},     // ";" would end the field's clauses early
		{"ø", "__"},        // each non-ASCII byte
		{"\xff\xfe", "__"}, // invalid UTF-8
		{strings.Repeat("a", 300), strings.Repeat("a", 255)},
		{strings.Repeat("a", 254) + "ø", strings.Repeat("a", 254) + "_"}, // cut inside a rune
	}
	for _, tt := range tests {
		if got := sanitizeHelo(tt.in); got != tt.want {
			t.Errorf("sanitizeHelo(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzSanitizeHelo(f *testing.F) {
	f.Add("client.test")
	f.Add("a\r\n(b);")
	f.Fuzz(func(t *testing.T, in string) {
		got := sanitizeHelo(in)
		if got == "" || len(got) > 255 {
			t.Fatalf("sanitizeHelo(%q) = %q: bad length", in, got)
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c <= ' ' || c >= 0x7f || c == '(' || c == ')' || c == ';' {
				t.Fatalf("sanitizeHelo(%q) = %q: byte %q kept", in, got, c)
			}
		}
	})
}

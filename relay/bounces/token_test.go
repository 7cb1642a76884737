package bounces

import (
	"errors"
	"strings"
	"testing"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testTokens(t *testing.T) *Tokens {
	t.Helper()
	tk, err := NewTokens(testSecret, "Bounces.Example.TEST")
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestTokenRoundTrip: what ReturnPath makes, Parse reads back, whatever
// the case of the address; it fits in a local part (RFC 5321 §4.5.3.1.1).
func TestTokenRoundTrip(t *testing.T) {
	tk := testTokens(t)
	for _, tc := range []struct {
		id    string
		rcpts []int
		want  Token
	}{
		{"00000000000000A1", []int{0}, Token{"00000000000000A1", 0}},
		{"00000000000000A1", []int{7}, Token{"00000000000000A1", 7}},
		{"FFFFFFFFFFFFFFFF", []int{65534}, Token{"FFFFFFFFFFFFFFFF", 65534}},
		{"0000000000000001", []int{0, 2}, Token{"0000000000000001", -1}}, // several: the report names the recipient
		{"0000000000000001", nil, Token{"0000000000000001", -1}},
	} {
		rp := tk.ReturnPath(tc.id, tc.rcpts)
		local, domain, _ := strings.Cut(rp, "@")
		if domain != "bounces.example.test" || !strings.HasPrefix(local, "b+") || len(local) > 64 || strings.ToLower(local) != local {
			t.Errorf("ReturnPath(%s, %v) = %q", tc.id, tc.rcpts, rp)
		}
		for _, addr := range []string{rp, strings.ToUpper(rp), rp + "."} {
			got, err := tk.Parse(addr)
			if err != nil || got != tc.want {
				t.Errorf("Parse(%q) = %+v, %v; want %+v", addr, got, err, tc.want)
			}
		}
	}
	if rp := tk.ReturnPath("not-an-id", []int{0}); rp != "" {
		t.Errorf("ReturnPath of a malformed id = %q, want \"\"", rp)
	}
}

// TestTokenForgery (STYLE habit 9): a valid return path, changed in one
// way each time, is refused with the right error.
func TestTokenForgery(t *testing.T) {
	tk := testTokens(t)
	valid := tk.ReturnPath("00000000000000A1", []int{3})
	local, _, _ := strings.Cut(valid, "@")
	tok := local[2:]
	other, _ := NewTokens([]byte("another secret, sixteen bytes or more"), "bounces.example.test")
	// flip changes the character at i of the token to another base32 one.
	flip := func(i int) string {
		c := byte('a')
		if tok[i] == 'a' {
			c = 'b'
		}
		return "b+" + tok[:i] + string(c) + tok[i+1:] + "@bounces.example.test"
	}
	for _, tc := range []struct {
		name, addr string
		want       error
	}{
		{"changed id", flip(3), ErrBadToken},
		{"changed recipient", flip(15), ErrBadToken},
		{"changed MAC", flip(len(tok) - 1), ErrBadToken},
		// The payload (10 bytes) is the first 16 characters.
		{"another message's payload with this MAC", "b+" + strings.Split(tk.ReturnPath("00000000000000A2", []int{3}), "@")[0][2:18] + tok[16:] + "@bounces.example.test", ErrBadToken},
		{"truncated", "b+" + tok[:len(tok)-2] + "@bounces.example.test", ErrBadToken},
		{"lengthened", "b+" + tok + "aa@bounces.example.test", ErrBadToken},
		{"not base32", "b+" + tok[:len(tok)-1] + "1@bounces.example.test", ErrBadToken},
		{"no prefix", tok + "@bounces.example.test", ErrBadToken},
		{"postmaster", "postmaster@bounces.example.test", ErrBadToken},
		{"another server's secret", other.ReturnPath("00000000000000A1", []int{3}), ErrBadToken},
		{"another domain", "b+" + tok + "@example.test", ErrNotBounceDomain},
		{"a subdomain", "b+" + tok + "@x.bounces.example.test", ErrNotBounceDomain},
		{"no domain", "b+" + tok, ErrNotBounceDomain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.addr == valid {
				t.Fatal("the mutation changed nothing")
			}
			if got, err := tk.Parse(tc.addr); !errors.Is(err, tc.want) {
				t.Errorf("Parse(%q) = %+v, %v; want %v", tc.addr, got, err, tc.want)
			}
		})
	}
	if _, err := tk.Parse(valid); err != nil {
		t.Fatalf("the baseline does not parse: %v", err)
	}
}

func TestNewTokensRefusesShortSecret(t *testing.T) {
	if _, err := NewTokens([]byte("short"), "b.test"); err == nil {
		t.Error("a 5-byte secret was accepted")
	}
	if _, err := NewTokens(testSecret, ""); err == nil {
		t.Error("an empty domain was accepted")
	}
}

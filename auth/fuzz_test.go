package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseUsers: the parser never panics, and whatever it accepts
// survives being written out and read back.
func FuzzParseUsers(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/parse/*/users")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a:b:c:d\n::\n:\n\r\n#\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		uf, err := parseUsers("users", data)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error text")
			}
			return
		}
		// Round trip through render.
		var b strings.Builder
		for _, r := range uf.users {
			b.WriteString(render(r.name, r.hash, r.allow) + "\n")
		}
		again, err := parseUsers("users", []byte(b.String()))
		if err != nil {
			t.Fatalf("rendered file does not parse: %v\n%s", err, b.String())
		}
		if len(again.users) != len(uf.users) {
			t.Fatalf("%d users, then %d", len(uf.users), len(again.users))
		}
		for i, r := range uf.users {
			q := again.users[i]
			if q.name != r.name || q.hash != r.hash || len(q.allow) != len(r.allow) {
				t.Fatalf("user %d changed: %+v -> %+v", i, r, q)
			}
			for j := range r.allow {
				if q.allow[j] != r.allow[j] {
					t.Fatalf("pattern changed: %v -> %v", r.allow[j], q.allow[j])
				}
			}
		}
	})
}

// FuzzParsePattern: no panics; an accepted pattern round-trips through
// String, and an address pattern matches itself in any ASCII case.
func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"*", "@example.test", "Alice@Example.Test", "a@b@c", "*@x", "ü@bücher.test",
		"a..b@x", "a@x.", "", "@", "a\x00@b", `"a"@b`, "a@[1.2.3.4]"} {
		f.Add(s, "alice@example.test")
	}
	f.Fuzz(func(t *testing.T, s, addr string) {
		_ = ValidateName(s)
		_, _ = DefaultAllow(s)
		p, err := ParsePattern(s)
		if err != nil {
			if p != (Pattern{}) {
				t.Errorf("error with a non-zero Pattern %#v", p)
			}
			return
		}
		p.Match(addr)
		q, err := ParsePattern(p.String())
		if err != nil || q != p {
			t.Fatalf("%q -> %q does not round-trip: %v", s, p.String(), err)
		}
		if p.IsAddress() {
			if !p.Match(s) || !p.Match(upperASCII(s)) {
				t.Errorf("%q does not match itself", s)
			}
			if p.Match("x" + s) {
				t.Errorf("%q matches x%s", s, s)
			}
		}
		if !p.IsAddress() && s != "*" && !p.Match("someone"+s) {
			t.Errorf("domain pattern %q does not match someone%s", s, s)
		}
	})
}

// FuzzLoginServer drives a LOGIN exchange with arbitrary responses: no
// panics, at most one call to authenticate, with exactly the bytes the
// client sent, and the exchange ends within three steps.
func FuzzLoginServer(f *testing.F) {
	f.Add(false, []byte(nil), []byte("alice"), []byte("pw"))
	f.Add(true, []byte("alice"), []byte("pw"), []byte("extra"))
	f.Add(true, []byte{}, []byte{}, []byte{})
	f.Add(false, []byte(nil), []byte(strings.Repeat("u", 300)), []byte("pw"))
	f.Fuzz(func(t *testing.T, withIR bool, ir, r1, r2 []byte) {
		var calls []string
		srv := NewLoginServer(func(u, p string) error {
			calls = append(calls, u+"\x00"+p)
			return nil
		})
		responses := [][]byte{r1, r2, r1}
		var first []byte
		if withIR {
			first = ir
			if first == nil {
				first = []byte{}
			}
		}
		var sent [][]byte
		_, done, err := srv.Next(first)
		if first != nil {
			sent = append(sent, first)
		}
		steps := 1
		for !done && err == nil {
			if steps > 3 {
				t.Fatal("exchange does not end")
			}
			resp := responses[0]
			responses = responses[1:]
			sent = append(sent, resp)
			_, done, err = srv.Next(resp)
			steps++
		}
		if len(calls) > 1 {
			t.Fatalf("authenticate called %d times", len(calls))
		}
		if len(calls) == 1 {
			if len(sent) != 2 || calls[0] != string(sent[0])+"\x00"+string(sent[1]) {
				t.Fatalf("authenticate(%q), client sent %q", calls[0], sent)
			}
		}
		if _, _, err := srv.Next([]byte("late")); err == nil {
			t.Error("response after the end accepted")
		}
	})
}

// FuzzPlainServer: no panics, and authenticate only ever sees a user whose
// authorization identity was empty or the same.
func FuzzPlainServer(f *testing.F) {
	f.Add([]byte("\x00alice\x00pw"))
	f.Add([]byte("bob\x00alice\x00pw"))
	f.Add([]byte("\x00\x00"))
	f.Fuzz(func(t *testing.T, resp []byte) {
		srv := NewPlainServer(func(u, p string) error {
			parts := strings.SplitN(string(resp), "\x00", 3)
			if parts[0] != "" && !strings.EqualFold(parts[0], u) {
				t.Errorf("authzid %q accepted for %q", parts[0], u)
			}
			return nil
		})
		srv.Next(resp)
	})
}

func upperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

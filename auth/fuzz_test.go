package auth

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// addSeedFiles adds the content of every file matching pattern to f's
// seed corpus.
func addSeedFiles(f *testing.F, pattern string) {
	seeds, _ := filepath.Glob(pattern)
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// FuzzParseUsers: the parser never panics, and whatever it accepts
// survives being written out and read back.
func FuzzParseUsers(f *testing.F) {
	addSeedFiles(f, "testdata/parse/*/users")
	f.Add([]byte("a:b:c:d\n::\n:\n\r\n#\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		uf, err := parseUsers("users", data)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error text")
			}
			return
		}
		roundTrip(t, uf.users, func(r *record) string { return render(r.name, r.hash, r.allow) },
			func(data []byte) ([]*record, error) {
				f, err := parseUsers("users", data)
				if err != nil {
					return nil, err
				}
				return f.users, nil
			},
			func(a, b *record) bool { return a.name == b.name && a.hash == b.hash && slices.Equal(a.allow, b.allow) })
	})
}

// FuzzParseKeys: the keys-file parser never panics, never quotes what
// stands where a hash belongs, and whatever it accepts survives being
// written out and read back.
func FuzzParseKeys(f *testing.F) {
	addSeedFiles(f, "testdata/keys/*/keys")
	f.Add([]byte("a:b:c:d:e:f\n::::\n:\n\r\n#\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := parseKeys("keys", data)
		if err != nil {
			msg := err.Error()
			if msg == "" {
				t.Fatal("empty error text")
			}
			// User names and labels are quoted, and may hold anything.
			var lines [][]string
			quotable := ""
			for line := range strings.Lines(string(data)) {
				fields := strings.SplitN(strings.TrimSpace(line), ":", 5)
				lines = append(lines, fields)
				for i, f := range fields {
					if i == 1 || i == 4 {
						quotable += f + "\x00" + fmt.Sprintf("%q", f) + "\x00"
					}
				}
			}
			for _, fields := range lines {
				if len(fields) >= 3 && len(fields[2]) >= 20 && strings.Contains(msg, fields[2]) && !strings.Contains(quotable, fields[2]) {
					t.Fatalf("error quotes the hash field %q:\n%s", fields[2], msg)
				}
			}
			return
		}
		roundTrip(t, kf.keys, renderKey,
			func(data []byte) ([]*keyRecord, error) {
				f, err := parseKeys("keys", data)
				if err != nil {
					return nil, err
				}
				return f.keys, nil
			},
			func(a, b *keyRecord) bool { return a.KeyInfo == b.KeyInfo && a.hash == b.hash })
	})
}

// roundTrip checks that the records a parser accepted, rendered one a
// line and parsed again, come back the same.
func roundTrip[R any](t *testing.T, recs []R, render func(R) string, parse func([]byte) ([]R, error), same func(a, b R) bool) {
	t.Helper()
	var b strings.Builder
	for _, r := range recs {
		b.WriteString(render(r) + "\n")
	}
	again, err := parse([]byte(b.String()))
	if err != nil {
		t.Fatalf("rendered file does not parse: %v\n%s", err, b.String())
	}
	if len(again) != len(recs) {
		t.Fatalf("%d records, then %d", len(recs), len(again))
	}
	for i := range recs {
		if !same(recs[i], again[i]) {
			t.Fatalf("record %d changed: %+v -> %+v", i, recs[i], again[i])
		}
	}
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

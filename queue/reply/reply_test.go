package reply

import (
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestParseEnhanced(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Enhanced
		ok   bool
	}{
		{"5.1.1", Enhanced{5, 1, 1}, true},
		{"4.7.28", Enhanced{4, 7, 28}, true},
		{"2.0.0", Enhanced{2, 0, 0}, true},
		{"5.123.456", Enhanced{5, 123, 456}, true},
		{"4.7.00", Enhanced{4, 7, 0}, true}, // leading zeros read leniently
		{"5.1.1234", Enhanced{}, false},     // 1 to 3 digits (RFC 3463 §2)
		{"3.0.0", Enhanced{}, false},        // no class 3
		{"55.1.1", Enhanced{}, false},
		{"5.1", Enhanced{}, false},
		{"5.1.1.1", Enhanced{}, false},
		{"5..1", Enhanced{}, false},
		{"5.+1.1", Enhanced{}, false},
		{"5.-1.1", Enhanced{}, false},
		{" 5.1.1", Enhanced{}, false},
		{"", Enhanced{}, false},
	} {
		got, err := ParseEnhanced(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseEnhanced(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadEnhanced) {
			t.Errorf("ParseEnhanced(%q): error %v is not ErrBadEnhanced", tt.in, err)
		}
	}
}

func TestString(t *testing.T) {
	for _, tt := range []struct {
		r         Reply
		str, wire string
	}{
		{Reply{550, Enhanced{5, 1, 1}, "no such user"}, "550 5.1.1 no such user", "550 5.1.1 no such user\r\n"},
		{Reply{451, Enhanced{}, "try later"}, "451 try later", "451 try later\r\n"},
		{Reply{250, Enhanced{}, ""}, "250", "250\r\n"},
		{Reply{250, Enhanced{2, 0, 0}, ""}, "250 2.0.0", "250 2.0.0\r\n"},
		// Multi-line: the codes on every line, joined by spaces on one
		// line, as Postfix quotes a reply (RFC 2034 §4 repeats the
		// enhanced code on each line).
		{Reply{550, Enhanced{5, 7, 1}, "first\nsecond"}, "550-5.7.1 first 550 5.7.1 second", "550-5.7.1 first\r\n550 5.7.1 second\r\n"},
		// postern's own words: no reply code.
		{Reply{0, Enhanced{5, 4, 7}, "retry lifetime expired"}, "5.4.7 retry lifetime expired", ""},
		{Reply{0, Enhanced{}, "dial tcp: connection refused"}, "dial tcp: connection refused", ""},
	} {
		if got := tt.r.String(); got != tt.str {
			t.Errorf("%+v.String() = %q, want %q", tt.r, got, tt.str)
		}
		if tt.wire != "" {
			if got := tt.r.Wire(); got != tt.wire {
				t.Errorf("%+v.Wire() = %q, want %q", tt.r, got, tt.wire)
			}
		}
	}
}

// TestJSON: the shape the admin API and the queue records use; absent
// parts are left out, and a malformed enhanced code is refused both ways.
func TestJSON(t *testing.T) {
	for _, tt := range []struct {
		r    Reply
		json string
	}{
		{Reply{550, Enhanced{5, 1, 1}, "no such user"}, `{"code":550,"enhanced_code":"5.1.1","text":"no such user"}`},
		{Reply{0, Enhanced{}, "dial tcp: refused"}, `{"text":"dial tcp: refused"}`},
		{Reply{}, `{}`},
	} {
		b, err := json.Marshal(tt.r)
		if err != nil || string(b) != tt.json {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tt.r, b, err, tt.json)
		}
		var back Reply
		if err := json.Unmarshal(b, &back); err != nil || back != tt.r {
			t.Errorf("Unmarshal(%s) = %+v, %v", b, back, err)
		}
	}
	var r Reply
	if err := json.Unmarshal([]byte(`{"code":550,"enhanced_code":"5.1"}`), &r); !errors.Is(err, ErrBadEnhanced) {
		t.Errorf("a malformed enhanced_code decoded: %+v, %v", r, err)
	}
	if _, err := json.Marshal(Reply{Code: 550, Enhanced: Enhanced{9, 9, 9}}); err == nil {
		t.Error("a malformed enhanced code encoded")
	}
}

// TestLogValue: logs get the typed fields, the code left out when there
// is none.
func TestLogValue(t *testing.T) {
	var b strings.Builder
	log := slog.New(slog.NewJSONHandler(&b, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	log.Info("failed", "reply", Reply{550, Enhanced{5, 1, 1}, "no such user"})
	log.Info("deferred", "reply", Reply{Text: "refused"})
	want := `{"level":"INFO","msg":"failed","reply":{"code":550,"enhanced_code":"5.1.1","text":"no such user"}}` + "\n" +
		`{"level":"INFO","msg":"deferred","reply":{"text":"refused"}}` + "\n"
	if b.String() != want {
		t.Errorf("log:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestClass(t *testing.T) {
	for _, tt := range []struct {
		r    Reply
		want int
	}{
		{Reply{Code: 550}, 5},
		{Reply{Code: 250, Enhanced: Enhanced{2, 0, 0}}, 2},
		{Reply{Enhanced: Enhanced{4, 4, 1}}, 4},
		{Reply{Text: "refused"}, 0},
	} {
		if got := tt.r.Class(); got != tt.want {
			t.Errorf("%+v.Class() = %d, want %d", tt.r, got, tt.want)
		}
	}
}

// FuzzParseEnhanced: what parses is valid, prints back as it was read
// unless it was written with leading zeros (a remote's "4.7.00" is read
// leniently as 4.7.0, RFC 3463's numbers being numbers), reparses from
// its printed form to itself, and survives JSON.
func FuzzParseEnhanced(f *testing.F) {
	for _, s := range []string{"5.1.1", "4.7.28", "2.0.0", "5.999.999", "5.1.1234", "3.0.0", "", "5..1", "٥.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEnhanced(s)
		if err != nil {
			return
		}
		if !e.Valid() || (e.String() != s && !leadingZeros(s)) {
			t.Fatalf("ParseEnhanced(%q) = %+v, String %q", s, e, e.String())
		}
		if again, err := ParseEnhanced(e.String()); err != nil || again != e {
			t.Fatalf("ParseEnhanced(%q) = %+v, reparsed from %q: %+v, %v", s, e, e.String(), again, err)
		}
		b, err := json.Marshal(Reply{Code: e.Class * 100, Enhanced: e, Text: s})
		if err != nil {
			t.Fatal(err)
		}
		var back Reply
		if err := json.Unmarshal(b, &back); err != nil || back.Enhanced != e {
			t.Fatalf("JSON round trip of %q: %s → %+v, %v", s, b, back, err)
		}
	})
}

// leadingZeros reports whether a dotted number has a part like "00" or "07".
func leadingZeros(s string) bool {
	for _, p := range strings.Split(s, ".") {
		if len(p) > 1 && p[0] == '0' {
			return true
		}
	}
	return false
}

func TestMustEnhanced(t *testing.T) {
	if got := MustEnhanced("4.7.28"); got != (Enhanced{4, 7, 28}) {
		t.Errorf("MustEnhanced(4.7.28) = %v", got)
	}
	if got := MustEnhanced(""); !got.IsZero() {
		t.Errorf(`MustEnhanced("") = %v`, got)
	}
	defer func() {
		if recover() == nil {
			t.Error("MustEnhanced(5.1) did not panic")
		}
	}()
	MustEnhanced("5.1")
}

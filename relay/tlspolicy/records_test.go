package tlspolicy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSTSRecord(t *testing.T) {
	for _, tt := range []struct {
		rec, id string // id "" means an error is expected
	}{
		{"v=STSv1; id=20160831085700Z;", "20160831085700Z"},
		{"v=STSv1;id=abc", "abc"},
		{"v=STSv1; id=abc ;", "abc"},
		{"v=STSv1;\tid=abc; ext=whatever", "abc"},
		{"v=STSv1; ext.x-y_z=1; id=A1", "A1"},
		{"v=STSv1; id=" + strings.Repeat("a", 32), strings.Repeat("a", 32)},
		{"v=STSv1; id=" + strings.Repeat("a", 33), ""},
		{"v=STSv1", ""},
		{"v=STSv1;", ""},
		{"v=STSv1; ", ""},
		{"v=STSv2; id=1", ""},
		{"V=STSv1; id=1", ""}, // %s"v=STSv1": case-sensitive
		{" v=STSv1; id=1", ""},
		{"v=STSv1 id=1", ""},
		{"v=STSv1; id=1;; ", ""},
		{"v=STSv1; id=a-b", ""},
		{"v=STSv1; id=", ""},
		{"v=STSv1; id=1; id=2", ""},
		{"v=STSv1; ext=1", ""},
		{"v=STSv1; -x=1; id=1", ""},
		{"v=STSv1; id=1; x=a=b", ""},
		{"v=STSv1; id=1 2", ""},
		{"v=STSv1; id=1; x=é", ""},
	} {
		r, err := ParseSTSRecord(tt.rec)
		if tt.id == "" {
			if err == nil {
				t.Errorf("ParseSTSRecord(%q) = %+v, want an error", tt.rec, r)
			}
			continue
		}
		if err != nil || r.ID != tt.id {
			t.Errorf("ParseSTSRecord(%q) = %+v, %v; want id %q", tt.rec, r, err, tt.id)
		}
	}
}

func TestPickRecord(t *testing.T) {
	if _, err := pickRecord([]string{"v=spf1 -all", "hello"}, "STSv1"); !errors.Is(err, ErrNoRecord) {
		t.Errorf("no record: %v", err)
	}
	if r, err := pickRecord([]string{"other", "v=STSv1; id=1"}, "STSv1"); err != nil || r != "v=STSv1; id=1" {
		t.Errorf("one record among others: %q %v", r, err)
	}
	if _, err := pickRecord([]string{"v=STSv1; id=1", "v=STSv1; id=2"}, "STSv1"); err == nil || errors.Is(err, ErrNoRecord) {
		t.Errorf("two records: %v, want an error other than ErrNoRecord", err)
	}
}

func TestParseRPTRecord(t *testing.T) {
	for _, tt := range []struct {
		rec  string
		want []string // nil: error expected
	}{
		{"v=TLSRPTv1; rua=mailto:reports@example.com", []string{"mailto:reports@example.com"}},
		{"v=TLSRPTv1;rua=https://reporting.example.com/v1/tlsrpt;", []string{"https://reporting.example.com/v1/tlsrpt"}},
		{"v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/x", []string{"mailto:a@example.com", "https://r.example.com/x"}},
		{"v=TLSRPTv1; ext=1; rua=mailto:a@example.com", []string{"mailto:a@example.com"}},
		{"v=TLSRPTv1; rua=mailto:tls%2Brpt@example.com", []string{"mailto:tls%2Brpt@example.com"}},
		{"v=TLSRPTv1", nil},
		{"v=TLSRPTv1; ext=1", nil},
		{"v=TLSRPTv1; rua=", nil},
		{"v=TLSRPTv1; rua=http://r.example.com/", nil},
		{"v=TLSRPTv1; rua=ftp://r.example.com/", nil},
		{"v=TLSRPTv1; rua=mailto:", nil},
		{"v=TLSRPTv1; rua=mailto:nobody", nil},
		{"v=TLSRPTv1; rua=mailto:a@b.example?subject=x", nil},
		{"v=TLSRPTv1; rua=mailto:a@example.com,", nil},
		{"v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", nil},
		{"v=TLSRPTv1; rua=https://user@r.example.com/", nil},
		{"v=TLSRPTv1; rua=https:///path", nil},
		{"v=TLSRPTv1; rua=mailto:a@example.com, mailto:b@example.com", nil}, // no space inside the list
		{"v=TLSRPTv2; rua=mailto:a@example.com", nil},
	} {
		r, err := ParseRPTRecord(tt.rec)
		if tt.want == nil {
			if err == nil {
				t.Errorf("ParseRPTRecord(%q) = %v, want an error", tt.rec, r.RUA)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseRPTRecord(%q): %v", tt.rec, err)
			continue
		}
		var got []string
		for _, u := range r.RUA {
			got = append(got, u.String())
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("ParseRPTRecord(%q) = %q, want %q", tt.rec, got, tt.want)
		}
	}
}

// The record parsers never panic, and what they accept has the shape
// they promise.
func FuzzParseSTSRecord(f *testing.F) {
	for _, s := range []string{"v=STSv1; id=20160831085700Z;", "v=STSv1;id=a;x=y", "v=STSv1; id=1; id=2", "v=STSv1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseSTSRecord(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(s, "v=STSv1") || len(r.ID) == 0 || len(r.ID) > 32 || !allAlnum(r.ID) {
			t.Fatalf("accepted %q as %+v", s, r)
		}
	})
}

func FuzzParseRPTRecord(f *testing.F) {
	for _, s := range []string{"v=TLSRPTv1; rua=mailto:reports@example.com", "v=TLSRPTv1;rua=https://r.example.com/x,mailto:a@b.c;", "v=TLSRPTv1; rua=mailto:%40@x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRPTRecord(s)
		if err != nil {
			return
		}
		if len(r.RUA) == 0 {
			t.Fatalf("accepted %q without a destination", s)
		}
		for _, u := range r.RUA {
			if u.Scheme != "mailto" && u.Scheme != "https" {
				t.Fatalf("accepted %q with scheme %q", s, u.Scheme)
			}
		}
	})
}

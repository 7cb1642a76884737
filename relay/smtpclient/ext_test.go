package smtpclient

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEHLO(t *testing.T) {
	tests := []struct {
		name string
		text string
		want Extensions
	}{
		{"greeting only", "mx.example", Extensions{ESMTP: true}},
		{"postfix", "mx.example\nPIPELINING\nSIZE 10240000\nVRFY\nETRN\nSTARTTLS\nENHANCEDSTATUSCODES\n8BITMIME\nDSN\nSMTPUTF8\nCHUNKING",
			Extensions{ESMTP: true, Pipelining: true, SizeOffered: true, Size: 10240000, StartTLS: true,
				EightBitMIME: true, DSN: true, SMTPUTF8: true, Chunking: true}},
		{"case and spacing", "x\npipelining\n  size  \nchunking  extra",
			Extensions{ESMTP: true, Pipelining: true, SizeOffered: true, Chunking: true}},
		{"auth", "x\nAUTH PLAIN login CRAM-MD5\nAUTH=LOGIN XOAUTH2",
			Extensions{ESMTP: true, Auth: []string{"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"}}},
		{"limits", "x\nLIMITS RCPTMAX=50 MAILMAX=10 RCPTDOMAINMAX=1",
			Extensions{ESMTP: true, RcptMax: 50, MailMax: 10}},
		{"limits lower case, bad values ignored", "x\nLIMITS rcptmax=0 mailmax=-3 RCPTMAX=+5 MAILMAX=1234567890",
			Extensions{ESMTP: true}},
		{"limits mixed", "x\nLIMITS MAILMAX=x RCPTMAX=7", Extensions{ESMTP: true, RcptMax: 7}},
		{"size not a number", "x\nSIZE lots", Extensions{ESMTP: true, SizeOffered: true}},
		{"size zero", "x\nSIZE 0", Extensions{ESMTP: true, SizeOffered: true}},
		{"requiretls", "x\nREQUIRETLS", Extensions{ESMTP: true, RequireTLS: true}},
		{"empty lines", "x\n\n \nDSN", Extensions{ESMTP: true, DSN: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseEHLO(tt.text); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseEHLO(%q)\n got %+v\nwant %+v", tt.text, got, tt.want)
			}
		})
	}
	if !ParseEHLO("x\nAUTH plain").SupportsAuth("PLAIN") || ParseEHLO("x\nAUTH LOGIN").SupportsAuth("PLAIN") {
		t.Error("SupportsAuth")
	}
}

// FuzzParseEHLO: any EHLO text parses without panicking into limits that
// make sense, and the first line (the greeting) never counts as an
// extension.
func FuzzParseEHLO(f *testing.F) {
	for _, s := range []string{
		"mx\nPIPELINING\nCHUNKING", "mx\nLIMITS RCPTMAX=1 MAILMAX=2", "mx\nSIZE 99999999999999999999",
		"mx\nAUTH=PLAIN", "PIPELINING", "mx\nAUTH\nAUTH PLAIN PLAIN", "mx\nLIMITS =", "\n\n\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		e := ParseEHLO(text)
		if !e.ESMTP || e.RcptMax < 0 || e.MailMax < 0 || e.Size < 0 || e.RcptMax > 999999999 || e.MailMax > 999999999 {
			t.Fatalf("ParseEHLO(%q) = %+v", text, e)
		}
		if e.Size > 0 && !e.SizeOffered {
			t.Fatalf("ParseEHLO(%q): a size without SIZE", text)
		}
		first, _, _ := strings.Cut(text, "\n")
		if !strings.Contains(text, "\n") && !reflect.DeepEqual(e, Extensions{ESMTP: true}) {
			t.Fatalf("ParseEHLO(%q): the greeting %q offered %+v", text, first, e)
		}
		seen := map[string]bool{}
		for _, m := range e.Auth {
			if m == "" || m != strings.ToUpper(m) || seen[m] {
				t.Fatalf("ParseEHLO(%q): AUTH list %q", text, e.Auth)
			}
			seen[m] = true
		}
	})
}

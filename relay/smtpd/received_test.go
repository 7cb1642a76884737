package smtpd_test

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"postern/relay/smtpd"
)

// TestReceivedHeader drives receivedHeader through real sessions, since it
// reads the connection's TLS state and HELO name: one case per thing the
// field reports.
func TestReceivedHeader(t *testing.T) {
	tests := []struct {
		name  string
		kind  smtpd.Kind
		helo  string
		tls   bool // STARTTLS on Submission/TrustedRelay
		auth  bool
		rcpts []string
		// want is the field up to the date, with {TLS} standing for the
		// "\r\n\t(TLS 1.3 TLS_...)" comment of the connection.
		want string
	}{
		{
			name: "plain relay", kind: smtpd.TrustedRelay, helo: "client.test", rcpts: []string{"bob@example.org"},
			want: "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTP\r\n\tfor <bob@example.org>;\r\n\t",
		},
		{
			name: "relay over STARTTLS", kind: smtpd.TrustedRelay, helo: "client.test", tls: true, rcpts: []string{"bob@example.org"},
			want: "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTPS{TLS}\r\n\tfor <bob@example.org>;\r\n\t",
		},
		{
			name: "two recipients are not named", kind: smtpd.TrustedRelay, helo: "client.test", rcpts: []string{"bob@example.org", "carol@example.org"},
			want: "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTP;\r\n\t",
		},
		{
			name: "submission", kind: smtpd.Submission, helo: "laptop.example.test", tls: true, auth: true, rcpts: []string{"bob@example.org"},
			want: "Received: from laptop.example.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTPSA{TLS}\r\n\tfor <bob@example.org>;\r\n\t",
		},
		{
			name: "submissions", kind: smtpd.Submissions, helo: "laptop.example.test", auth: true, rcpts: []string{"bob@example.org", "carol@example.org"},
			want: "Received: from laptop.example.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTPSA{TLS};\r\n\t",
		},
		{
			// go-smtp takes the HELO argument up to the first space,
			// whatever it holds: everything that could break the field
			// or its comment syntax must be replaced.
			name: "hostile HELO", kind: smtpd.TrustedRelay, helo: "evil(x);y\x01\x7f\tzø", rcpts: []string{"bob@example.org"},
			want: "Received: from evil_x__y___z__ ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTP\r\n\tfor <bob@example.org>;\r\n\t",
		},
		{
			name: "HELO address literal", kind: smtpd.TrustedRelay, helo: "[192.0.2.1]", rcpts: []string{"bob@example.org"},
			want: "Received: from [192.0.2.1] ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTP\r\n\tfor <bob@example.org>;\r\n\t",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := &fakeQueue{}
			opts := smtpd.Options{Kind: tt.kind, Hostname: "mx.test", Queue: q, Auth: fakeAuth{}, TLS: testTLS(t)}
			if tt.kind == smtpd.TrustedRelay {
				opts.Trusted = loopback
				if !tt.tls {
					opts.TLS = nil
				}
			}
			addr := startServer(t, opts)
			c := dialRaw(t, addr, tt.kind == smtpd.Submissions)
			if tt.tls {
				c.run([]step{{send: "EHLO " + tt.helo, code: 250}, {send: "STARTTLS", code: 220, enh: "2.0.0"}})
			}
			c.run([]step{{send: "EHLO " + tt.helo, code: 250}})
			if tt.auth {
				c.run([]step{authAlice})
			}
			from := "app@example.test"
			if tt.auth {
				from = "alice@example.test"
			}
			c.run([]step{{send: "MAIL FROM:<" + from + ">", code: 250, enh: "2.0.0"}})
			for _, r := range tt.rcpts {
				c.run([]step{{send: "RCPT TO:<" + r + ">", code: 250, enh: "2.0.0"}})
			}
			before := time.Now().Truncate(time.Second)
			if r := c.data("Subject: s\r\n\r\nx\r\n"); r.code != 250 {
				t.Fatalf("DATA: %v", r)
			}
			after := time.Now()

			want := tt.want
			if st, ok := c.tlsState(); ok {
				want = strings.Replace(want, "{TLS}", "\r\n\t("+tls.VersionName(st.Version)+" "+tls.CipherSuiteName(st.CipherSuite)+")", 1)
			}
			_, bodies := q.messages()
			got, rest := splitReceived(t, bodies[0])
			if string(rest) != "Subject: s\r\n\r\nx\r\n" {
				t.Errorf("message after Received %q", rest)
			}
			head, date, ok := strings.Cut(got, ";\r\n\t")
			if !ok || head+";\r\n\t" != want {
				t.Fatalf("Received field\n%q\nwant prefix\n%q", got, want)
			}
			ts, err := time.Parse(time.RFC1123Z+"\r\n", date)
			if err != nil {
				t.Fatalf("Received date %q: %v", date, err)
			}
			if ts.Before(before) || ts.After(after) {
				t.Errorf("Received date %v not between %v and %v", ts, before, after)
			}
		})
	}
}

// TestReceivedHeaderIPv6: the client's address is written as an address
// literal, which for IPv6 carries the "IPv6:" tag (RFC 5321 §4.1.3).
func TestReceivedHeaderIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	l.Close()
	q := &fakeQueue{}
	addr := startServerOn(t, "[::1]:0", smtpd.Options{
		Kind: smtpd.TrustedRelay, Trusted: []netip.Prefix{netip.MustParsePrefix("::1/128")}, Queue: q,
	})
	c := dialRaw(t, addr, false)
	c.run([]step{
		{send: "EHLO client.test", code: 250},
		{send: "MAIL FROM:<app@example.test>", code: 250, enh: "2.0.0"},
		{send: "RCPT TO:<bob@example.org>", code: 250, enh: "2.0.0"},
	})
	if r := c.data("x\r\n"); r.code != 250 {
		t.Fatalf("DATA: %v", r)
	}
	envs, bodies := q.messages()
	if envs[0].ClientIP != "::1" {
		t.Errorf("envelope client IP %q, want ::1", envs[0].ClientIP)
	}
	if got, _ := splitReceived(t, bodies[0]); !strings.HasPrefix(got, "Received: from client.test ([IPv6:::1])\r\n") {
		t.Errorf("Received field %q", got)
	}
}

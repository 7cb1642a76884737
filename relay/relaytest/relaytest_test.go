package relaytest_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"postern/relay/relaytest"
)

// waitLimit is a safety net against hangs, not a performance bound.
const waitLimit = 30 * time.Second

func ask(t *testing.T, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: waitLimit}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", dns.TypeToString[qtype], name, network, err)
	}
	return resp
}

func TestDNS(t *testing.T) {
	long := strings.Repeat("k", 600)
	d := relaytest.NewDNS(t, relaytest.Zone{
		"Example.Test.": {
			MX:  []relaytest.MX{{Pref: 10, Host: "mx1.example.test"}, {Pref: 0, Host: "."}},
			TXT: []string{"v=spf1 -all", long},
		},
		"mx1.example.test": {A: []string{"127.0.0.2"}, AAAA: []string{"::1"}},
		"broken.test":      {Rcode: dns.RcodeServerFailure},
	})
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			r := ask(t, d.Addr(), network, "example.test", dns.TypeMX)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
				t.Fatalf("MX: %v", r)
			}
			if mx := r.Answer[0].(*dns.MX); mx.Preference != 10 || mx.Mx != "mx1.example.test." {
				t.Errorf("MX[0] = %v", mx)
			}
			if mx := r.Answer[1].(*dns.MX); mx.Mx != "." {
				t.Errorf("null MX = %v", mx)
			}
			r = ask(t, d.Addr(), network, "MX1.example.test", dns.TypeA)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.2" {
				t.Errorf("A: %v", r.Answer)
			}
			r = ask(t, d.Addr(), network, "mx1.example.test", dns.TypeAAAA)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "::1" {
				t.Errorf("AAAA: %v", r.Answer)
			}
			r = ask(t, d.Addr(), network, "example.test", dns.TypeTXT)
			if network == "udp" {
				// Over 512 bytes without EDNS0: truncated, ask over TCP.
				if !r.Truncated {
					t.Errorf("long TXT over UDP not truncated: %v", r)
				}
			} else if len(r.Answer) != 2 || strings.Join(r.Answer[1].(*dns.TXT).Txt, "") != long {
				t.Errorf("TXT: %v", r.Answer)
			}
			// NODATA: the name exists, the type does not.
			r = ask(t, d.Addr(), network, "example.test", dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
				t.Errorf("NODATA: %v", r)
			}
			if r = ask(t, d.Addr(), network, "nowhere.test", dns.TypeMX); r.Rcode != dns.RcodeNameError {
				t.Errorf("NXDOMAIN: %v", r)
			}
			if r = ask(t, d.Addr(), network, "broken.test", dns.TypeMX); r.Rcode != dns.RcodeServerFailure {
				t.Errorf("SERVFAIL: %v", r)
			}
		})
	}
	if d.Queries() != 14 {
		t.Errorf("Queries() = %d, want 14", d.Queries())
	}
}

// TestDNSMutable changes records while queries run (the race detector
// watches) and checks that answers follow the changes.
func TestDNSMutable(t *testing.T) {
	d := relaytest.NewDNS(t, nil)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				m := new(dns.Msg)
				m.SetQuestion("x.test.", dns.TypeA)
				if _, err := dns.Exchange(m, d.Addr()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 20 {
		d.SetA("x.test", "127.0.0."+strconv.Itoa(i+1))
	}
	wg.Wait()

	d.SetA("x.test", "127.0.0.9")
	if r := ask(t, d.Addr(), "udp", "x.test", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.9" {
		t.Errorf("after SetA: %v", r.Answer)
	}
	d.SetServFail("x.test")
	if r := ask(t, d.Addr(), "udp", "x.test", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("after SetServFail: %v", r)
	}
	d.SetRcode("x.test", dns.RcodeSuccess)
	if r := ask(t, d.Addr(), "udp", "x.test", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("after SetRcode(success): %v", r)
	}
	d.AddMX("x.test", relaytest.MX{Pref: 5, Host: "a.test"})
	d.AddMX("x.test", relaytest.MX{Pref: 7, Host: "b.test"})
	if rr, ok := d.Records("x.test"); !ok || len(rr.MX) != 2 || len(rr.A) != 1 {
		t.Errorf("Records = %+v, %v", rr, ok)
	}
	d.Delete("x.test")
	if r := ask(t, d.Addr(), "udp", "x.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after Delete: %v", r)
	}
}

// send runs one transaction with go-smtp's client and returns the error of
// the first failing step.
func send(addr, from string, to []string, tlsConf *tls.Config) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	var c *smtp.Client
	if tlsConf != nil {
		c, err = smtp.NewClientStartTLS(conn, tlsConf)
		if err != nil {
			return err
		}
	} else {
		c = smtp.NewClient(conn)
	}
	defer c.Close()
	if err := c.SendMail(from, to, strings.NewReader("Subject: t\r\n\r\nbody\r\n")); err != nil {
		return err
	}
	return c.Quit()
}

func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func TestReceiver(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0")
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	if err := send(r.Addr(), "a@x.test", []string{"b@y.test", "c@y.test"}, nil); err != nil {
		t.Fatal(err)
	}
	msgs, err := r.WaitMessages(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.From != "a@x.test" || !slices.Equal(m.To, []string{"b@y.test", "c@y.test"}) || m.TLS {
		t.Errorf("message = %+v", m)
	}
	if string(m.Data) != "Subject: t\r\n\r\nbody\r\n" {
		t.Errorf("data = %q", m.Data)
	}

	// Per-recipient failures stay until Reset; FailNext counts down.
	r.FailRcpt("B@y.test", 550, "5.1.1 no such user")
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); code(err) != 550 || !strings.Contains(err.Error(), "no such user") {
		t.Errorf("FailRcpt: %v", err)
	}
	r.FailNext(relaytest.CmdMAIL, 451, "4.3.0 later", 2)
	r.FailNext(relaytest.CmdMAIL, 452, "4.3.1 full", 1)
	for _, want := range []int{451, 451, 452, 550} {
		if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); code(err) != want {
			t.Errorf("MAIL: got %v, want %d", err, want)
		}
	}
	r.Reset()
	r.FailNext(relaytest.CmdDATA, 554, "5.7.1 spam", 1)
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); code(err) != 554 {
		t.Errorf("DATA: %v", err)
	}
	r.FailNext(relaytest.CmdEHLO, 421, "4.7.0 not now", 1)
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); code(err) != 421 {
		t.Errorf("EHLO: %v", err)
	}
	r.FailNext(relaytest.CmdConnect, 554, "5.3.2 no service", 1)
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); code(err) != 554 {
		t.Errorf("CONNECT: %v", err)
	}
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); err != nil {
		t.Errorf("after the failures: %v", err)
	}
	if n := len(r.Messages()); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
	if err := r.WaitIdle(ctx); err != nil {
		t.Errorf("WaitIdle: %v", err)
	}
	if r.Conns() != 10 || r.OpenConns() != 0 {
		t.Errorf("Conns %d, OpenConns %d", r.Conns(), r.OpenConns())
	}
}

func TestReceiverWaits(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.1:0")
	conn, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	// The greeting comes after the receiver has counted the connection:
	// Dial alone may return before the server side has accepted it.
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	// An open connection keeps WaitIdle waiting until its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.WaitIdle(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitIdle with an open connection: %v", err)
	}
	if _, err := r.WaitMessages(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitMessages without a message: %v", err)
	}
	conn.Close()
	ctx, cancel = context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := r.WaitIdle(ctx); err != nil {
		t.Errorf("WaitIdle after close: %v", err)
	}
	// A message arriving later wakes WaitMessages.
	done := make(chan error, 1)
	go func() { done <- send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil) }()
	if msgs, err := r.WaitMessages(ctx, 1); err != nil || len(msgs) != 1 {
		t.Errorf("WaitMessages = %d, %v", len(msgs), err)
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestReceiverSTARTTLS(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithSTARTTLS("mx.example.test"))
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, &tls.Config{ServerName: "mx.example.test", RootCAs: r.CertPool()}); err != nil {
		t.Fatalf("verified STARTTLS: %v", err)
	}
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, &tls.Config{ServerName: "mx.example.test"}); err == nil {
		t.Error("STARTTLS verified a self-signed certificate against the system roots")
	}
	if m := r.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("messages = %+v", m)
	}

	broken := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithBrokenTLS())
	if err := send(broken.Addr(), "a@x.test", []string{"b@y.test"}, &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Error("handshake with WithBrokenTLS succeeded")
	}
}

func TestFreePort(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := relaytest.FreePort(t, ips...)
	for _, ip := range ips {
		relaytest.NewReceiver(t, net.JoinHostPort(ip, strconv.Itoa(port)))
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "localhost:0"} {
		if r, err := relaytest.StartReceiver(addr); err == nil {
			r.Close()
			t.Errorf("StartReceiver(%q) succeeded", addr)
		}
	}
}

func TestReply(t *testing.T) {
	tests := []struct {
		code int
		msg  string
		want smtp.SMTPError
	}{
		{550, "5.1.1 no such user", smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}},
		{451, "try later", smtp.SMTPError{Code: 451, EnhancedCode: smtp.NoEnhancedCode, Message: "try later"}},
		{451, "4.x.0 odd", smtp.SMTPError{Code: 451, EnhancedCode: smtp.NoEnhancedCode, Message: "4.x.0 odd"}},
	}
	for _, tt := range tests {
		if got := relaytest.Reply(tt.code, tt.msg); *got != tt.want {
			t.Errorf("Reply(%d, %q) = %+v, want %+v", tt.code, tt.msg, *got, tt.want)
		}
	}
}

func TestReceiverAuth(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithSTARTTLS("smtp.example.test"), relaytest.WithAuth("u", "right"))
	dial := func(t *testing.T) *smtp.Client {
		t.Helper()
		c, err := smtp.DialStartTLS(r.Addr(), &tls.Config{ServerName: "smtp.example.test", RootCAs: r.CertPool()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("AUTH only after TLS", func(t *testing.T) {
		c, err := smtp.Dial(r.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Hello("client.test")
		if ok, _ := c.Extension("AUTH"); ok {
			t.Error("AUTH offered before STARTTLS")
		}
	})
	t.Run("MAIL before AUTH gets 530", func(t *testing.T) {
		if err := dial(t).Mail("a@x.test", nil); code(err) != 530 {
			t.Errorf("MAIL without AUTH: %v", err)
		}
	})
	for _, mech := range []struct {
		name string
		c    func(user, pass string) sasl.Client
	}{
		{"PLAIN", func(u, p string) sasl.Client { return sasl.NewPlainClient("", u, p) }},
		{"LOGIN", sasl.NewLoginClient},
	} {
		t.Run(mech.name, func(t *testing.T) {
			if err := dial(t).Auth(mech.c("u", "wrong")); code(err) != 535 {
				t.Errorf("wrong password: %v", err)
			}
			c := dial(t)
			if err := c.Auth(mech.c("u", "right")); err != nil {
				t.Fatalf("right password: %v", err)
			}
			if err := c.SendMail("a@x.test", []string{"b@y.test"}, strings.NewReader("Subject: t\r\n\r\nbody\r\n")); err != nil {
				t.Fatal(err)
			}
		})
	}
	want := []relaytest.AuthAttempt{
		{"PLAIN", "u", "wrong", true, false}, {"PLAIN", "u", "right", true, true},
		{"LOGIN", "u", "wrong", true, false}, {"LOGIN", "u", "right", true, true},
	}
	if got := r.Auths(); !slices.Equal(got, want) {
		t.Errorf("Auths() = %+v\nwant %+v", got, want)
	}
	msgs := r.Messages()
	if len(msgs) != 2 || msgs[0].AuthUser != "u" {
		t.Errorf("messages = %+v", msgs)
	}
	r.SetAuth("u", "new")
	if err := dial(t).Auth(sasl.NewPlainClient("", "u", "right")); code(err) != 535 {
		t.Errorf("old password after SetAuth: %v", err)
	}
}

func TestReceiverImplicitTLS(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithImplicitTLS("smtp.example.test"))
	c, err := smtp.DialTLS(r.Addr(), &tls.Config{ServerName: "smtp.example.test", RootCAs: r.CertPool()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered inside implicit TLS")
	}
	if err := c.SendMail("a@x.test", []string{"b@y.test"}, strings.NewReader("Subject: t\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if m := r.Messages(); len(m) != 1 || !m[0].TLS {
		t.Errorf("messages = %+v", m)
	}
}

// TestReceiverHoldNextReply: the next message is recorded, then its reply
// waits for release; the one after it is answered at once.
func TestReceiverHoldNextReply(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.1:0")
	held, release := r.HoldNextReply()
	done := make(chan error, 1)
	go func() { done <- send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil) }()
	<-held
	if n := len(r.Messages()); n != 1 {
		t.Errorf("%d messages recorded while the reply is held, want 1", n)
	}
	select {
	case err := <-done:
		t.Fatalf("the sender got its reply before release: %v", err)
	default:
	}
	release()
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := send(r.Addr(), "a@x.test", []string{"b@y.test"}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestDNSPTR: SetPTR answers reverse lookups of IPv4 and IPv6 addresses,
// as Go's resolver asks them.
func TestDNSPTR(t *testing.T) {
	d := relaytest.NewDNS(t, nil)
	d.SetPTR("192.0.2.10", "mail.example.test")
	d.SetPTR("2001:db8::10", "mail6.example.test", "other.example.test")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dd net.Dialer
		return dd.DialContext(ctx, network, d.Addr())
	}}
	for ip, want := range map[string]string{
		"192.0.2.10":   "mail.example.test.",
		"2001:db8::10": "mail6.example.test. other.example.test.",
	} {
		names, err := r.LookupAddr(context.Background(), ip)
		if err != nil || strings.Join(names, " ") != want {
			t.Errorf("PTR %s: %v, %v; want %s", ip, names, err, want)
		}
	}
	if _, err := r.LookupAddr(context.Background(), "192.0.2.11"); err == nil {
		t.Error("an address without PTR has a name")
	}
}

// TestParseZone: every served type is read, TXT strings joined; another
// type is an error.
func TestParseZone(t *testing.T) {
	z, err := relaytest.ParseZone(strings.NewReader(`; a comment
a.test. IN A 192.0.2.1
a.test. IN AAAA 2001:db8::1
a.test. IN MX 10 mx.a.test.
a.test. IN TXT ( "v=spf1 " "-all" )
1.2.0.192.in-addr.arpa. IN PTR a.test.
`))
	if err != nil {
		t.Fatal(err)
	}
	a := z["a.test"]
	if len(a.A) != 1 || len(a.AAAA) != 1 || len(a.MX) != 1 || a.MX[0].Host != "mx.a.test." || len(a.TXT) != 1 || a.TXT[0] != "v=spf1 -all" ||
		len(z["1.2.0.192.in-addr.arpa"].PTR) != 1 {
		t.Errorf("parsed %+v", z)
	}
	if _, err := relaytest.ParseZone(strings.NewReader("a.test. IN CNAME b.test.\n")); err == nil {
		t.Error("a CNAME was accepted")
	}
}

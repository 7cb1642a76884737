package smtpd

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1/32",
		"::ffff:192.0.2.1":     "192.0.2.1/32",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":      "2001:db8:1:3::/64",
		"fe80::1%eth0":         "fe80::/64",
		"::1":                  "::/64",
	} {
		if got := clientKey(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("clientKey(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestLimitTablesBounded: clients and users that go quiet are forgotten, so
// memory follows the active set, not everyone ever seen.
func TestLimitTablesBounded(t *testing.T) {
	p := &Policy{
		IPConnections:    5,
		IPConnectionRate: Rate{N: 10, Per: time.Minute},
		UserMessages:     Rate{N: 10, Per: time.Hour},
	}
	p.init()
	now := time.Unix(1e9, 0)
	var dones []func()
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		done, refusal := p.conns.admit(context.Background(), ip, now)
		if refusal != nil {
			t.Fatal(refusal)
		}
		if i < 10 {
			dones = append(dones, done) // ten stay open
		} else {
			done()
		}
		p.users.take(context.Background(), ip.String(), false, now)
	}
	if c, u := p.tables(); c != 1000 || u != 1000 {
		t.Fatalf("tables %d, %d before any sweep", c, u)
	}
	// A minute and a bit later the buckets are full again: one new client
	// and one new user trigger the sweep.
	now = now.Add(time.Hour + time.Minute)
	p.conns.admit(context.Background(), netip.MustParseAddr("192.0.2.1"), now)
	p.users.take(context.Background(), "new", false, now)
	if c, u := p.tables(); c != 11 || u != 1 {
		t.Errorf("tables %d, %d after the sweep; want 11 (10 open + 1 new), 1", c, u)
	}
	for _, d := range dones {
		d()
		d() // idempotent
	}
	p.conns.mu.Lock()
	for k, st := range p.conns.clients {
		if st.open != 0 && k != clientKey(netip.MustParseAddr("192.0.2.1")) {
			t.Errorf("%s: %d open after release", k, st.open)
		}
	}
	p.conns.mu.Unlock()
}

// FuzzProxyHeader feeds arbitrary bytes as the start of a connection from a
// proxy peer, as admitProxied reads it: the library must either refuse or
// yield a client address postern can use, and never hang or panic.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::1 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("EHLO x\r\n"))
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("2001:db8::9"), Port: 1}, &net.TCPAddr{IP: net.ParseIP("::1"), Port: 25})
	if b, err := h.Format(); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		server, client := net.Pipe()
		defer server.Close()
		go func() {
			client.Write(in)
			client.Close()
		}()
		pc := proxyproto.NewConn(server, proxyproto.WithPolicy(proxyproto.REQUIRE),
			proxyproto.SetReadHeaderTimeout(time.Second))
		if pc.ProxyHeader() == nil {
			return // refused: admitProxied closes the connection
		}
		// Whatever the header said, what postern derives from it is
		// usable: an address (or none, for LOCAL and UNKNOWN over a pipe),
		// its limit key and the trusted-network check.
		ip := remoteIP(pc.RemoteAddr())
		if ip.IsValid() && ip.Zone() == "" && clientKey(ip).Addr() == (netip.Addr{}) {
			t.Fatalf("%q: no limit key for %s", in, ip)
		}
		inPrefixes(ip, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")})
	})
}

// TestTakeMessage: the API's message and recipients are taken together from
// the SMTP buckets, or neither is; more recipients than the bucket holds
// can never pass.
func TestTakeMessage(t *testing.T) {
	p := &Policy{UserMessages: Rate{N: 2, Per: time.Hour}, UserRecipients: Rate{N: 5, Per: time.Hour}}
	now := time.Unix(1e9, 0)
	if w, what, _ := p.TakeMessage("Alice", 3, now); w != 0 || what != "" {
		t.Fatalf("first: %v %q", w, what)
	}
	// 3 of 5 recipients left 2: 3 more wait, and the message is not spent.
	w, what, r := p.TakeMessage("alice", 3, now)
	if w <= 0 || what != "Recipient" || r != "5 per 1h0m0s" {
		t.Fatalf("second: %v %q %v", w, what, r)
	}
	if w, _, _ := p.TakeMessage("alice", 2, now); w != 0 {
		t.Fatalf("third, within both: %v", w)
	}
	if w, what, _ := p.TakeMessage("alice", 0, now); w <= 0 || what != "Message" {
		t.Fatalf("fourth: %v %q, want the message limit", w, what)
	}
	// SMTP's RCPT draws from the same bucket.
	if d := p.users.take(context.Background(), "ALICE", true, now); d <= 0 {
		t.Errorf("the SMTP recipient bucket was not the API's")
	}
	if w, what, _ := p.TakeMessage("bob", 6, now); w != -1 || what != "Recipient" {
		t.Errorf("more than the bucket: %v %q, want -1", w, what)
	}
	if w, _, _ := (&Policy{}).TakeMessage("bob", 1000, now); w != 0 {
		t.Errorf("no limits: %v", w)
	}
}

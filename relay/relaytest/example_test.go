package relaytest_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"postern/relay/relaytest"
)

// A DNS server publishing an MX, and the receiver it points to, which
// refuses one recipient.
func Example() {
	rx, err := relaytest.StartReceiver("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer rx.Close()
	rx.FailRcpt("gone@example.test", 550, "5.1.1 no such user")

	zone, err := relaytest.StartDNS(relaytest.Zone{
		"example.test":    {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
		"mx.example.test": {A: []string{"127.0.0.1"}},
	})
	if err != nil {
		panic(err)
	}
	defer zone.Close()

	// Find the MX as a mail server would.
	q := new(dns.Msg)
	q.SetQuestion("example.test.", dns.TypeMX)
	resp, err := dns.Exchange(q, zone.Addr())
	if err != nil {
		panic(err)
	}
	mx := resp.Answer[0].(*dns.MX).Mx
	q.SetQuestion(mx, dns.TypeA)
	if resp, err = dns.Exchange(q, zone.Addr()); err != nil {
		panic(err)
	}
	ip := resp.Answer[0].(*dns.A).A.String()
	fmt.Println("MX", mx, ip)

	c, err := smtp.Dial(net.JoinHostPort(ip, strconv.Itoa(rx.Port())))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.Mail("me@example.org", nil)
	c.Rcpt("you@example.test", nil)
	fmt.Println(c.Rcpt("gone@example.test", nil))
	w, _ := c.Data()
	w.Write([]byte("Subject: hi\r\n\r\nHello.\r\n"))
	w.Close()
	c.Quit()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msgs, err := rx.WaitMessages(ctx, 1)
	if err != nil {
		panic(err)
	}
	fmt.Println(msgs[0].From, msgs[0].To, strings.SplitN(string(msgs[0].Data), "\r\n", 2)[0])
	// Output:
	// MX mx.example.test. 127.0.0.1
	// SMTP error 550: no such user
	// me@example.org [you@example.test] Subject: hi
}

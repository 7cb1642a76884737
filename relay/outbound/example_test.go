package outbound_test

import (
	"context"
	"fmt"
	"io"
	"strings"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

type stringBody string

func (b stringBody) Size() int64 { return int64(len(b)) }
func (b stringBody) Open() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(string(b))), nil
}

// Deliver a message to the MX of example.test, here an in-process receiver
// found through an in-process DNS server.
func ExampleMX_Deliver() {
	rx, err := relaytest.StartReceiver("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer rx.Close()
	rx.FailRcpt("nobody@example.test", 550, "5.1.1 no such user")
	dns, err := relaytest.StartDNS(relaytest.Zone{
		"example.test":     {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
		"mx.example.test":  {A: []string{"127.0.0.1"}},
		"null.example.net": {MX: []relaytest.MX{{Pref: 0, Host: "."}}},
	})
	if err != nil {
		panic(err)
	}
	defer dns.Close()

	mx := outbound.New(outbound.Options{
		Hostname: "postern.example.org",
		Resolver: dns.Addr(),
		Port:     rx.Port(),
	})
	// Connections are kept for the next delivery to the same host; Close
	// closes them.
	defer mx.Close()
	body := stringBody("Subject: hello\r\n\r\nHi.\r\n")
	results := mx.Deliver(context.Background(), &queue.Delivery{
		ID:     "1",
		From:   "me@example.org",
		Rcpts:  []string{"you@example.test", "nobody@example.test"},
		Domain: "example.test",
		Body:   body,
	})
	for _, r := range results {
		fmt.Println(r.Outcome, r.RemoteMTA, r.Reply.Code)
	}
	fmt.Println(rx.Messages()[0].To)

	results = mx.Deliver(context.Background(), &queue.Delivery{
		ID: "2", Rcpts: []string{"x@null.example.net"}, Domain: "null.example.net", Body: body,
	})
	fmt.Println(results[0].Outcome, results[0].Reply)
	// Output:
	// delivered mx.example.test 250
	// failed mx.example.test 550
	// [you@example.test]
	// failed 556 5.1.10 Recipient address has null MX
}

// Send everything through two smarthosts in failover order: the first is
// down, so the second takes the message within the same attempt.
func ExampleFailover() {
	down, err := relaytest.StartReceiver("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	downAddr := down.Addr()
	down.Close() // nothing listens there any more
	backup, err := relaytest.StartReceiver("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer backup.Close()

	var hosts outbound.Failover
	for _, c := range []outbound.SmarthostConfig{
		{Name: "provider", Address: downAddr, TLS: outbound.NoTLS},
		{Name: "backup", Address: backup.Addr(), TLS: outbound.NoTLS},
	} {
		h, err := outbound.NewSmarthost(c, outbound.Options{Hostname: "postern.example.org"})
		if err != nil {
			panic(err)
		}
		hosts = append(hosts, h)
	}
	defer hosts.Close()
	results := hosts.Deliver(context.Background(), &queue.Delivery{
		ID: "1", From: "me@example.org", Rcpts: []string{"you@example.test"},
		Domain: "example.test", Body: stringBody("Subject: hello\r\n\r\nHi.\r\n"),
	})
	fmt.Println(results[0].Outcome, results[0].RemoteMTA)
	// Output:
	// delivered 127.0.0.1 (smarthost backup)
}

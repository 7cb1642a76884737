package smtpclient_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"postern/relay/relaytest"
	"postern/relay/smtpclient"
)

// One connection, one message to two recipients, one of them refused: the
// server offers PIPELINING and CHUNKING, so MAIL and both RCPTs went out
// together and the message as one BDAT LAST.
func Example() {
	rx, err := relaytest.StartReceiver("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer rx.Close()
	rx.FailRcpt("gone@example.test", 550, "5.1.1 no such user")

	raw, err := net.Dial("tcp", rx.Addr())
	if err != nil {
		panic(err)
	}
	c := smtpclient.New(raw, smtpclient.Options{Hostname: "client.example", CommandTimeout: time.Minute, DataTimeout: time.Minute})
	ctx := context.Background()
	if err := c.Greet(ctx); err != nil {
		panic(err)
	}
	if err := c.Hello(ctx); err != nil {
		panic(err)
	}
	msg := "Subject: hello\r\n\r\nHi.\r\n"
	res, err := c.Send(ctx, &smtpclient.Tx{
		From:  "app@client.example",
		Rcpts: []smtpclient.Rcpt{{Addr: "bob@example.test"}, {Addr: "gone@example.test"}},
		Body:  body(msg),
		Size:  int64(len(msg)),
	})
	if err != nil {
		panic(err)
	}
	for _, r := range res.Rcpts {
		fmt.Printf("%s: delivered %v\n", r.Reply.Command, r.Delivered())
		fmt.Println(" ", r.Reply.Code, r.Reply.Enhanced, r.Reply.Lines()[0] != "")
	}
	c.Quit(time.Second)

	for _, cmd := range rx.Commands() {
		fmt.Println(cmd.Flight, strings.Fields(cmd.Line)[0])
	}
	// Output:
	// end of DATA: delivered true
	//   250 2.0.0 true
	// RCPT TO: delivered false
	//   550 5.1.1 true
	// 1 EHLO
	// 2 MAIL
	// 2 RCPT
	// 2 RCPT
	// 3 BDAT
	// 4 QUIT
}

package reply_test

import (
	"encoding/json"
	"fmt"

	"postern/queue/reply"
)

// A remote's refusal as delivery records it, and the forms it is shown
// in: one line for bounces and people, the wire for a server, JSON for
// the admin API.
func Example() {
	r := reply.Reply{Code: 550, Enhanced: reply.Enhanced{Class: 5, Subject: 1, Detail: 1}, Text: "<bob@example.org>: no such user"}
	fmt.Println(r)
	fmt.Printf("%q\n", r.Wire())
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	// Output:
	// 550 5.1.1 <bob@example.org>: no such user
	// "550 5.1.1 <bob@example.org>: no such user\r\n"
	// {"code":550,"enhanced_code":"5.1.1","text":"\u003cbob@example.org\u003e: no such user"}
}

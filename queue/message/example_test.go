package message_test

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"postern/queue/message"
)

// Read the header section of a message that arrives with bare LF line
// ends, as the inbound server does for a legacy program on the relay
// port: line ends fixed first, then the fields found, the body left in
// the stream.
func Example() {
	in := "From: Alice <alice@example.org>\nSubject: hello,\n  world\n\nHi.\n"
	cr := message.NewCRLFReader(strings.NewReader(in))
	defer cr.Release()
	br := bufio.NewReader(cr)
	h, err := message.ReadHeader(br, 1<<20)
	if err != nil {
		panic(err)
	}
	for _, f := range h.Fields {
		fmt.Printf("%s: %q\n", f.Name, h.Value(f))
	}
	body, _ := io.ReadAll(br)
	fmt.Printf("ended at the empty line: %v, body %q\n", h.Ending == message.AtEmptyLine, body)
	// Output:
	// From: "Alice <alice@example.org>"
	// Subject: "hello,  world"
	// ended at the empty line: true, body "Hi.\r\n"
}

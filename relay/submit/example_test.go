package submit_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"

	"postern/queue"
	"postern/relay/submit"
)

// printQueue prints what it is asked to store instead of storing it.
type printQueue struct{}

func (printQueue) EnqueuePrefixed(_ context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	b, _ := io.ReadAll(body)
	p, _ := prefix()
	head, _, _ := strings.Cut(string(p)+string(b), "\r\n\r\n")
	fmt.Println("to", env.Rcpts)
	for _, line := range strings.Split(head, "\r\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "\t") {
			fmt.Println(name) // values vary: dates, a random Message-ID
		}
	}
	return "0000000000000001", nil
}

// A local user's message, as the maildrop pickup hands it on: the header
// rules add what is missing and take out Bcc, and the Received field names
// the user.
func Example() {
	p := submit.New(submit.Options{Hostname: "mail.example.org", Queue: printQueue{}, FixHeaders: true})
	msg := "To: bob@example.org\r\nBcc: audit@example.org\r\nSubject: backup done\r\n\r\nok\r\n"
	env := &queue.Envelope{From: "cron@example.org", Rcpts: []string{"bob@example.org", "audit@example.org"}}
	id, _, err := p.Submit(context.Background(), env, &submit.Origin{UID: 0, UserName: "root"}, bufio.NewReader(strings.NewReader(msg)))
	fmt.Println(id, err)
	// Output:
	// to [bob@example.org audit@example.org]
	// Received
	// Date
	// Message-ID
	// To
	// Subject
	// 0000000000000001 <nil>
}

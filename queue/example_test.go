package queue_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"postern/queue"
	"postern/queue/reply"
)

// printer is a tiny Deliverer: it prints each delivery and accepts every
// recipient.
type printer struct{}

func (p printer) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	rc, err := d.Body.Open()
	if err != nil {
		panic(err)
	}
	defer rc.Close()
	body, _ := io.ReadAll(rc)
	fmt.Printf("to %v at %s, attempt %d: %q\n", d.Rcpts, d.Domain, d.Attempt, body)
	res := make([]queue.Result, len(d.Rcpts))
	for i := range res {
		res[i] = queue.Result{Outcome: queue.Delivered, Reply: reply.Reply{Code: 250, Enhanced: reply.Enhanced{Class: 2}, Text: "OK"}, RemoteMTA: "mx." + d.Domain}
	}
	return res
}

func Example() {
	dir, err := os.MkdirTemp("", "queue-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	done := make(chan *queue.Message)
	q, err := queue.Open(queue.Options{
		Path:      filepath.Join(dir, "queue.db"),
		SpoolDir:  filepath.Join(dir, "spool"),
		Deliverer: printer{},
		Hostname:  "mail.example.org", // names the MAILER-DAEMON of bounces
		// Called once the last recipient is final. Bounces need no hook:
		// the queue queues them itself, in the same commit.
		OnFinal: func(m *queue.Message) { done <- m },
	})
	if err != nil {
		panic(err)
	}
	defer q.Close(context.Background())
	q.Start()

	// The session answers 250 only once Enqueue has returned: the message
	// is then on disk.
	_, err = q.Enqueue(context.Background(),
		&queue.Envelope{From: "alice@example.org", Rcpts: []string{"bob@Example.NET", "carol@example.net"}},
		strings.NewReader("Subject: hi\r\n\r\nHello.\r\n"))
	if err != nil {
		panic(err)
	}

	m := <-done
	for _, r := range m.Rcpts {
		fmt.Println(r.Address, r.State, r.RemoteMTA)
	}
	// Output:
	// to [bob@Example.NET carol@example.net] at example.net, attempt 1: "Subject: hi\r\n\r\nHello.\r\n"
	// bob@Example.NET delivered mx.example.net
	// carol@example.net delivered mx.example.net
}

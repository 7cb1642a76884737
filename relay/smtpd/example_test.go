package smtpd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/smtpd"
)

// memQueue is the smallest Enqueuer: it keeps messages in memory. A real
// one returns only once the message is on disk.
type memQueue struct {
	mu   sync.Mutex
	msgs []string
}

func (q *memQueue) EnqueuePrefixed(_ context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	p, err := prefix()
	if err != nil {
		return "", err
	}
	b = append(p, b...)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, string(b))
	return fmt.Sprintf("m%d", len(q.msgs)), nil
}

// A trusted-relay listener accepts mail without AUTH from the networks in
// Trusted, here loopback, and answers 250 with the queue ID once the
// message is queued.
func Example() {
	q := &memQueue{}
	srv := smtpd.NewServer(smtpd.Options{
		Kind:     smtpd.TrustedRelay,
		Hostname: "mx.example.test",
		Trusted:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Queue:    q,
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	c, err := smtp.Dial(l.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if err := c.Mail("app@example.test", nil); err != nil {
		panic(err)
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		panic(err)
	}
	w, err := c.Data()
	if err != nil {
		panic(err)
	}
	io.WriteString(w, "Subject: hello\r\n\r\nHi Bob.\r\n")
	resp, err := w.CloseWithResponse()
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.StatusText)
	c.Quit()

	// The queued message starts with the trace field postern added.
	q.mu.Lock()
	first, _, _ := strings.Cut(q.msgs[0], "\r\n")
	q.mu.Unlock()
	fmt.Println(first)
	// Output:
	// 2.0.0 OK: queued as m1
	// Received: from localhost ([127.0.0.1])
}

package smtpd_test

// Benchmarks of the inbound path: an SMTP client on loopback submits to
// the trusted relay listener; the message is read, its header checked and
// fixed, and it is queued. Delivery is stubbed: the queue is never started.
//
//	go test -run '^$' -bench Session -benchmem ./relay/

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"postern/queue"
	"postern/relay/smtpd"
)

// benchServer starts a relay listener in front of q; it stops with b.
func benchServer(b *testing.B, q smtpd.Enqueuer) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := smtpd.NewServer(smtpd.Options{
		Kind:            smtpd.TrustedRelay,
		Hostname:        "bench.test",
		Trusted:         []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		MaxMessageBytes: 32 << 20,
		MaxRecipients:   100,
		Queue:           q,
	})
	go srv.Serve(l)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		l.Close()
	})
	return l.Addr().String()
}

func benchMessage(size int) []byte {
	var m bytes.Buffer
	m.WriteString("From: app@example.test\r\nTo: bob@dest.test\r\nSubject: bench\r\n" +
		"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.test>\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for m.Len() < size {
		m.WriteString(line)
	}
	return m.Bytes()
}

// sendMessages sends n messages over one connection (RSET between them,
// as a client reusing its session does).
func sendMessages(b *testing.B, addr string, msg []byte, n int) {
	c, err := smtp.Dial(addr)
	if err != nil {
		b.Error(err)
		return
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		b.Error(err)
		return
	}
	for range n {
		if err := c.SendMail("app@example.test", []string{"bob@dest.test"}, bytes.NewReader(msg)); err != nil {
			b.Error(err)
			return
		}
	}
	c.Quit()
}

func runSessions(b *testing.B, addr string, size, sessions int) {
	msg := benchMessage(size)
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N / sessions
	for i := range sessions {
		n := per
		if i == 0 {
			n += b.N % sessions
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sendMessages(b, addr, msg, n)
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// discardQueue reads each message and forgets it: the session alone.
type discardQueue struct{}

func (discardQueue) EnqueuePrefixed(_ context.Context, _ *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return "", err
	}
	if _, err := prefix(); err != nil {
		return "", err
	}
	return "X", nil
}

func BenchmarkSession(b *testing.B) {
	for _, size := range []int{4 << 10, 100 << 10} {
		for _, sessions := range []int{1, 20} {
			b.Run(fmt.Sprintf("size=%dKiB/sessions=%d/queue=none", size>>10, sessions), func(b *testing.B) {
				runSessions(b, benchServer(b, discardQueue{}), size, sessions)
			})
			// The real queue, synced to disk before every 250, with
			// delivery stubbed out (never started).
			b.Run(fmt.Sprintf("size=%dKiB/sessions=%d/queue=bbolt", size>>10, sessions), func(b *testing.B) {
				dir := b.TempDir()
				q, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db")})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { q.Close(context.Background()) })
				runSessions(b, benchServer(b, q), size, sessions)
			})
		}
	}
}

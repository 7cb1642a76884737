package outbound_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

// BenchmarkDeliver delivers 4 KiB messages to an in-process Receiver
// through MX delivery, one recipient each, with and without connection
// reuse, from one goroutine and from 8 (the queue's default workers).
// Loopback hides network latency, so the difference is the cost of
// opening a session (TCP, greeting, EHLO) on both ends.
func BenchmarkDeliver(b *testing.B) {
	text := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64)
	for _, reuse := range []bool{false, true} {
		for _, workers := range []int{1, 8} {
			b.Run(fmt.Sprintf("reuse=%t/workers=%d", reuse, workers), func(b *testing.B) {
				dns := relaytest.NewDNS(b, relaytest.Zone{})
				port := relaytest.FreePort(b, "127.0.0.2")
				rx := relaytest.NewReceiver(b, net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
				dns.AddMX("example.test", relaytest.MX{Pref: 10, Host: "mx.example.test"})
				dns.SetA("mx.example.test", "127.0.0.2")
				idle := outbound.DefaultIdleTimeout
				if !reuse {
					idle = -1
				}
				m := outbound.New(outbound.Options{Resolver: dns.Addr(), Port: port, Hostname: "postern.test", IdleTimeout: idle})
				defer m.Close()
				body := &body{data: text}
				b.SetBytes(int64(len(text)))
				b.ResetTimer()
				var wg sync.WaitGroup
				jobs := make(chan int)
				for range workers {
					wg.Go(func() {
						for i := range jobs {
							res := m.Deliver(context.Background(), &queue.Delivery{
								ID: strconv.Itoa(i), From: "a@sender.test", Rcpts: []string{"b@example.test"},
								Domain: "example.test", Attempt: 1, Body: body,
							})
							if res[0].Outcome != queue.Delivered {
								b.Errorf("delivery %d: %+v", i, res[0])
							}
						}
					})
				}
				for i := range b.N {
					jobs <- i
				}
				close(jobs)
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(rx.Conns())/float64(b.N), "conns/op")
			})
		}
	}
}

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

// BenchmarkDeliverDNSCache is BenchmarkDeliver with connection reuse and 8
// workers, with the test zone's TTL 0 (every delivery asks MX, A and AAAA)
// and 300 (a real zone's: the answers come from the resolver's cache).
func BenchmarkDeliverDNSCache(b *testing.B) {
	text := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64)
	for _, ttl := range []uint32{0, 300} {
		b.Run(fmt.Sprintf("ttl=%d", ttl), func(b *testing.B) {
			dns := relaytest.NewDNS(b, relaytest.Zone{})
			dns.SetTTL(ttl)
			port := relaytest.FreePort(b, "127.0.0.2")
			relaytest.NewReceiver(b, net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
			dns.AddMX("example.test", relaytest.MX{Pref: 10, Host: "mx.example.test"})
			dns.SetA("mx.example.test", "127.0.0.2")
			m := outbound.New(outbound.Options{Resolver: dns.Addr(), Port: port, Hostname: "postern.test"})
			defer m.Close()
			body := &body{data: text}
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			var wg sync.WaitGroup
			jobs := make(chan int)
			for range 8 {
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
			b.ReportMetric(float64(dns.Queries())/float64(b.N), "queries/op")
		})
	}
}

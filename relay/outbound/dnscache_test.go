package outbound

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"postern/relay/relaytest"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Builders of DNS responses for the tests below.
func aRR(name string, ttl uint32) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(192, 0, 2, 1)}
}

func cnameRR(name, target string, ttl uint32) dns.RR {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
}

func soaRR(ttl, minimum uint32) dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns.test.", Mbox: "hostmaster.test.", Minttl: minimum}
}

func response(rcode int, answer, ns []dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("a.example.test.", dns.TypeA)
	m.Response, m.Rcode, m.Answer, m.Ns = true, rcode, answer, ns
	return m
}

// TestDNSCache asks one question twice, after some time, and counts the
// queries made. Each case is one kind of answer (a response as the
// resolver gets it, or a failure), checked just before and just when its
// cache lifetime ends.
func TestDNSCache(t *testing.T) {
	const name = "a.example.test."
	errServFail := errors.New("SERVFAIL from 127.0.0.1:53")
	tests := []struct {
		name  string
		resp  *dns.Msg // the server's answer, or
		err   error    // the failure ask returns
		after time.Duration
		want  int // queries made by both lookups
	}{
		{"positive: hit within TTL", response(dns.RcodeSuccess, []dns.RR{aRR(name, 60)}, nil), nil, 59 * time.Second, 1},
		{"positive: miss at expiry", response(dns.RcodeSuccess, []dns.RR{aRR(name, 60)}, nil), nil, 60 * time.Second, 2},
		{"positive: TTL 0 not cached", response(dns.RcodeSuccess, []dns.RR{aRR(name, 0)}, nil), nil, 0, 2},
		{"positive: least TTL of the chain", response(dns.RcodeSuccess, []dns.RR{cnameRR(name, "b.example.test.", 10), aRR("b.example.test.", 60)}, nil), nil, 10 * time.Second, 2},
		{"positive: cap, hit", response(dns.RcodeSuccess, []dns.RR{aRR(name, 86400)}, nil), nil, dnsCacheMaxTTL - time.Second, 1},
		{"positive: cap, miss", response(dns.RcodeSuccess, []dns.RR{aRR(name, 86400)}, nil), nil, dnsCacheMaxTTL, 2},
		{"NXDOMAIN: hit within SOA minimum", response(dns.RcodeNameError, nil, []dns.RR{soaRR(3600, 30)}), nil, 29 * time.Second, 1},
		{"NXDOMAIN: miss after SOA minimum", response(dns.RcodeNameError, nil, []dns.RR{soaRR(3600, 30)}), nil, 30 * time.Second, 2},
		{"NXDOMAIN: SOA TTL below minimum", response(dns.RcodeNameError, nil, []dns.RR{soaRR(10, 30)}), nil, 10 * time.Second, 2},
		{"NXDOMAIN: cap, hit", response(dns.RcodeNameError, nil, []dns.RR{soaRR(3600, 3600)}), nil, dnsCacheMaxNegTTL - time.Second, 1},
		{"NXDOMAIN: cap, miss", response(dns.RcodeNameError, nil, []dns.RR{soaRR(3600, 3600)}), nil, dnsCacheMaxNegTTL, 2},
		{"NXDOMAIN: no SOA, not cached", response(dns.RcodeNameError, nil, nil), nil, 0, 2},
		{"NXDOMAIN: SOA TTL 0, not cached", response(dns.RcodeNameError, nil, []dns.RR{soaRR(0, 0)}), nil, 0, 2},
		{"NODATA: hit within SOA minimum", response(dns.RcodeSuccess, nil, []dns.RR{soaRR(300, 20)}), nil, 19 * time.Second, 1},
		{"NODATA: miss after SOA minimum", response(dns.RcodeSuccess, nil, []dns.RR{soaRR(300, 20)}), nil, 20 * time.Second, 2},
		{"NODATA: no SOA, not cached", response(dns.RcodeSuccess, nil, nil), nil, 0, 2},
		// A CNAME to a name without the type asked is NODATA: the SOA counts.
		{"NODATA behind a CNAME", response(dns.RcodeSuccess, []dns.RR{cnameRR(name, "b.example.test.", 300)}, []dns.RR{soaRR(300, 20)}), nil, 20 * time.Second, 2},
		{"SERVFAIL not cached", nil, errServFail, 0, 2},
		{"timeout not cached", nil, context.DeadlineExceeded, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			c := &dnsCache{now: clock.now}
			queries := 0
			fetch := func(context.Context) ([]dns.RR, time.Duration, error) {
				queries++
				if tt.err != nil {
					return nil, 60 * time.Second, tt.err // a TTL must not make a failure cached
				}
				return fromResponse(tt.resp, dns.TypeA)
			}
			k := dnsKey{name, dns.TypeA}
			first, err1 := c.get(context.Background(), k, fetch)
			clock.advance(tt.after)
			second, err2 := c.get(context.Background(), k, fetch)
			if queries != tt.want {
				t.Errorf("%d queries, want %d", queries, tt.want)
			}
			if !slices.Equal(first, second) || !errors.Is(err2, err1) {
				t.Errorf("second lookup = %v, %v; first = %v, %v", second, err2, first, err1)
			}
			if tt.resp != nil && tt.resp.Rcode == dns.RcodeNameError && !errors.Is(err2, errNXDomain) {
				t.Errorf("err = %v, want errNXDomain", err2)
			}
		})
	}
}

// TestDNSCacheEvict fills a cache of 3 entries: the oldest goes first,
// unless expired entries can go instead.
func TestDNSCacheEvict(t *testing.T) {
	clock := newFakeClock()
	c := &dnsCache{now: clock.now, size: 3}
	queries := map[string]int{}
	ask := func(name string, ttl time.Duration) {
		t.Helper()
		_, err := c.get(context.Background(), dnsKey{name, dns.TypeA}, func(context.Context) ([]dns.RR, time.Duration, error) {
			queries[name]++
			return []dns.RR{aRR(name, 0)}, ttl, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ask("a.", time.Minute)
	ask("b.", time.Minute)
	ask("c.", time.Minute)
	ask("d.", time.Minute) // evicts a.
	if c.len() != 3 {
		t.Errorf("len = %d, want 3", c.len())
	}
	ask("b.", time.Minute) // still cached
	ask("a.", time.Minute) // asked again, evicts c.
	if want := map[string]int{"a.": 2, "b.": 1, "c.": 1, "d.": 1}; !mapsEqual(queries, want) {
		t.Errorf("queries = %v, want %v", queries, want)
	}

	clock.advance(time.Minute) // all of them expire
	ask("e.", time.Minute)
	if c.len() != 1 {
		t.Errorf("after expiry: len = %d, want 1", c.len())
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// waitWaiters waits until n callers wait for the query of k.
func waitWaiters(t *testing.T, c *dnsCache, k dnsKey, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		got := 0
		if f := c.flights[k]; f != nil {
			got = f.waiters
		}
		c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDNSCacheCoalesce: 64 concurrent lookups of one question make one
// query, even with TTL 0; the next lookup asks again.
func TestDNSCacheCoalesce(t *testing.T) {
	const n = 64
	var c dnsCache
	k := dnsKey{"a.example.test.", dns.TypeA}
	var queries atomic.Int32
	release := make(chan struct{})
	fetch := func(context.Context) ([]dns.RR, time.Duration, error) {
		queries.Add(1)
		<-release
		return []dns.RR{aRR(k.name, 0)}, 0, nil
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if rr, err := c.get(context.Background(), k, fetch); err != nil || len(rr) != 1 {
				t.Errorf("get = %v, %v", rr, err)
			}
		})
	}
	waitWaiters(t, &c, k, n)
	close(release)
	wg.Wait()
	if q := queries.Load(); q != 1 {
		t.Errorf("%d queries, want 1", q)
	}
	if _, err := c.get(context.Background(), k, fetch); err != nil || queries.Load() != 2 {
		t.Errorf("after the flight: %v, %d queries, want 2", err, queries.Load())
	}
}

// TestDNSCacheCancel: a caller giving up does not fail the others waiting
// for the same query; when all have given up, the query is canceled and
// its outcome not kept.
func TestDNSCacheCancel(t *testing.T) {
	var c dnsCache
	k := dnsKey{"a.example.test.", dns.TypeA}
	// fetch answers when release is closed, and closes canceled when its
	// context is.
	fetcher := func(release, canceled chan struct{}) dnsFetch {
		return func(ctx context.Context) ([]dns.RR, time.Duration, error) {
			select {
			case <-release:
				return []dns.RR{aRR(k.name, 60)}, time.Minute, nil
			case <-ctx.Done():
				close(canceled)
				return nil, time.Minute, ctx.Err()
			}
		}
	}
	release := make(chan struct{})
	fetch := fetcher(release, make(chan struct{}))

	// The first caller, who started the query, gives up; the second gets
	// the answer.
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error)
	go func() { _, err := c.get(ctx1, k, fetch); done1 <- err }()
	waitWaiters(t, &c, k, 1)
	done2 := make(chan error)
	go func() { _, err := c.get(context.Background(), k, fetch); done2 <- err }()
	waitWaiters(t, &c, k, 2)
	cancel1()
	if err := <-done1; !errors.Is(err, context.Canceled) {
		t.Errorf("canceled caller: %v", err)
	}
	close(release)
	if err := <-done2; err != nil {
		t.Errorf("other caller: %v", err)
	}

	// Everyone gives up: the query is canceled, and a new lookup asks
	// afresh rather than joining it.
	k.name = "b.example.test."
	canceled := make(chan struct{})
	fetch = fetcher(make(chan struct{}), canceled)
	ctx3, cancel3 := context.WithCancel(context.Background())
	done3 := make(chan error)
	go func() { _, err := c.get(ctx3, k, fetch); done3 <- err }()
	waitWaiters(t, &c, k, 1)
	cancel3()
	<-done3
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("query not canceled")
	}
	if c.len() != 1 {
		t.Errorf("len = %d, want 1 (a.example.test only)", c.len())
	}
}

// TestResolverCache runs the cache against the test DNS server: with TTL 0
// (relaytest's default) every lookup asks; with a TTL, answers and
// NXDOMAIN are kept for it, capped, and SERVFAIL never is.
func TestResolverCache(t *testing.T) {
	ctx := context.Background()
	d := relaytest.NewDNS(t, relaytest.Zone{
		"example.test": {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
		// AAAA too: a NODATA would be kept only dnsCacheMaxNegTTL.
		"mx.example.test": {A: []string{"127.0.0.2"}, AAAA: []string{"::1"}},
	})
	clock := newFakeClock()
	r := &resolver{server: d.Addr(), shuffle: rand.Shuffle, cache: dnsCache{now: clock.now}}
	lookup := func() ([]string, error) {
		t.Helper()
		hosts, err := r.mxHosts(ctx, "Example.Test")
		if err != nil {
			return nil, err
		}
		if _, err := r.addrs(ctx, hosts[0]); err != nil {
			return nil, err
		}
		return hosts, nil
	}
	queries := func(want int) {
		t.Helper()
		if got := d.Queries(); got != want {
			t.Errorf("%d queries, want %d", got, want)
		}
	}

	lookup()
	lookup()
	queries(6) // MX, A, AAAA twice: TTL 0

	d.SetTTL(3600)
	lookup()
	queries(9)
	d.SetMX("example.test", relaytest.MX{Pref: 10, Host: "new.example.test"})
	clock.advance(dnsCacheMaxTTL - time.Second)
	if hosts, err := lookup(); err != nil || hosts[0] != "mx.example.test" {
		t.Errorf("within the TTL: %v, %v", hosts, err)
	}
	queries(9)
	clock.advance(time.Second)
	if hosts, _ := r.mxHosts(ctx, "example.test"); hosts[0] != "new.example.test" {
		t.Errorf("after the TTL: %v", hosts)
	}
	queries(10)

	// NXDOMAIN, with an SOA of TTL 3600: kept dnsCacheMaxNegTTL.
	if _, err := r.mxHosts(ctx, "gone.example.test"); !errors.Is(err, errDomainNotFound) {
		t.Fatalf("NXDOMAIN: %v", err)
	}
	d.SetMX("gone.example.test", relaytest.MX{Pref: 10, Host: "mx.example.test"})
	clock.advance(dnsCacheMaxNegTTL - time.Second)
	if _, err := r.mxHosts(ctx, "gone.example.test"); !errors.Is(err, errDomainNotFound) {
		t.Errorf("NXDOMAIN within its TTL: %v", err)
	}
	clock.advance(time.Second)
	if _, err := r.mxHosts(ctx, "gone.example.test"); err != nil {
		t.Errorf("after the negative TTL: %v", err)
	}
	queries(12)

	// SERVFAIL: asked again at once, and the answer after it is kept.
	d.SetServFail("fail.example.test")
	r.mxHosts(ctx, "fail.example.test")
	r.mxHosts(ctx, "fail.example.test")
	queries(14)
	d.SetMX("fail.example.test", relaytest.MX{Pref: 10, Host: "mx.example.test"})
	d.SetRcode("fail.example.test", dns.RcodeSuccess)
	for range 2 {
		if _, err := r.mxHosts(ctx, "fail.example.test"); err != nil {
			t.Errorf("after SERVFAIL: %v", err)
		}
	}
	queries(15)
}

// TestResolverCoalesce: 64 workers delivering to one domain at once make
// one query per question.
func TestResolverCoalesce(t *testing.T) {
	d := relaytest.NewDNS(t, relaytest.Zone{
		"example.test":    {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
		"mx.example.test": {A: []string{"127.0.0.2"}, AAAA: []string{"::1"}},
	})
	d.SetTTL(300)
	r := &resolver{server: d.Addr(), shuffle: rand.Shuffle}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			<-start
			hosts, err := r.mxHosts(context.Background(), "example.test")
			if err != nil {
				t.Error(err)
				return
			}
			if addrs, err := r.addrs(context.Background(), hosts[0]); err != nil || len(addrs) != 2 {
				t.Errorf("addrs = %v, %v", addrs, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if q := d.Queries(); q != 3 {
		t.Errorf("%d queries, want 3 (MX, A, AAAA)", q)
	}
}

// BenchmarkResolve resolves one domain as a delivery does (MX, then A and
// AAAA of the MX host) against the in-process DNS server, with TTL 0
// (nothing cached: every lookup makes three queries) and with TTL 300 (a
// real zone's). Loopback makes a query far cheaper than on a network, so
// the saving is a floor.
func BenchmarkResolve(b *testing.B) {
	for _, ttl := range []uint32{0, 300} {
		for _, par := range []bool{false, true} {
			name := map[uint32]string{0: "ttl=0", 300: "ttl=300"}[ttl] + map[bool]string{false: "/serial", true: "/parallel"}[par]
			b.Run(name, func(b *testing.B) {
				d := relaytest.NewDNS(b, relaytest.Zone{
					"example.test":    {MX: []relaytest.MX{{Pref: 10, Host: "mx.example.test"}}},
					"mx.example.test": {A: []string{"127.0.0.2"}},
				})
				d.SetTTL(ttl)
				r := &resolver{server: d.Addr(), shuffle: rand.Shuffle}
				resolve := func() {
					hosts, err := r.mxHosts(context.Background(), "example.test")
					if err == nil {
						_, err = r.addrs(context.Background(), hosts[0])
					}
					if err != nil {
						b.Error(err)
					}
				}
				b.ResetTimer()
				if par {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							resolve()
						}
					})
				} else {
					for range b.N {
						resolve()
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(d.Queries())/float64(b.N), "queries/op")
			})
		}
	}
}

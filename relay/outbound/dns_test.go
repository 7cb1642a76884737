package outbound

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"postern/relay/relaytest"
)

// TestMXOrder checks preference order and the shuffle among equal
// preferences. The shuffle is seeded so the test is repeatable, and it
// asserts only that both orders of the tied pair appear within 200
// lookups: with any fair shuffle the chance of missing one is 2^-199.
func TestMXOrder(t *testing.T) {
	d := relaytest.NewDNS(t, relaytest.Zone{
		"example.test": {MX: []relaytest.MX{
			{Pref: 20, Host: "c.example.test"},
			{Pref: 10, Host: "a.example.test"},
			{Pref: 10, Host: "b.example.test."},
			{Pref: 5, Host: "first.example.test"},
		}},
	})
	rng := rand.New(rand.NewPCG(1, 2))
	r := &resolver{server: d.Addr(), shuffle: rng.Shuffle}
	seen := map[string]bool{}
	for range 200 {
		hosts, err := r.mxHosts(context.Background(), "example.test")
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != 4 || hosts[0] != "first.example.test" || hosts[3] != "c.example.test" {
			t.Fatalf("hosts = %q", hosts)
		}
		mid := strings.Join(hosts[1:3], ",")
		if mid != "a.example.test,b.example.test" && mid != "b.example.test,a.example.test" {
			t.Fatalf("hosts = %q", hosts)
		}
		seen[mid] = true
		if len(seen) == 2 {
			return
		}
	}
	t.Errorf("equal preferences always in the same order: %v", seen)
}

// TestMXOrderInjected uses a shuffle that reverses: the tied hosts must
// come out reversed, proving the sort keeps the shuffled order.
func TestMXOrderInjected(t *testing.T) {
	d := relaytest.NewDNS(t, relaytest.Zone{
		"example.test": {MX: []relaytest.MX{
			{Pref: 10, Host: "a.example.test"},
			{Pref: 10, Host: "b.example.test"},
			{Pref: 10, Host: "c.example.test"},
			{Pref: 10, Host: "c.example.test"}, // duplicates are tried once
		}},
	})
	reverse := func(n int, swap func(i, j int)) {
		for i := range n / 2 {
			swap(i, n-1-i)
		}
	}
	r := &resolver{server: d.Addr(), shuffle: reverse}
	hosts, err := r.mxHosts(context.Background(), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"c.example.test", "b.example.test", "a.example.test"}; !slices.Equal(hosts, want) {
		t.Errorf("hosts = %q, want %q", hosts, want)
	}
}

// TestResolverTCP: an answer too big for UDP comes back truncated and is
// asked again over TCP.
func TestResolverTCP(t *testing.T) {
	var ips []string
	for i := range 200 {
		ips = append(ips, "127.1."+strconv.Itoa(i/250)+"."+strconv.Itoa(i%250+1))
	}
	d := relaytest.NewDNS(t, relaytest.Zone{"big.example.test": {A: ips}})
	r := &resolver{server: d.Addr(), shuffle: rand.Shuffle}
	addrs, err := r.addrs(context.Background(), "big.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != len(ips) {
		t.Errorf("got %d addresses, want %d", len(addrs), len(ips))
	}
}

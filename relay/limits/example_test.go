package limits_test

import (
	"context"
	"fmt"
	"time"

	"postern/relay/limits"
	"postern/relay/relaytest"
)

// Two nodes share one allowance of 2 messages an hour for a user: the
// third message is refused whichever node it reaches.
func Example() {
	srv, err := relaytest.StartRedis(relaytest.RedisOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Kill()
	nodeA := limits.Open(limits.Options{Addr: srv.Addr})
	defer nodeA.Close()
	nodeB := limits.Open(limits.Options{Addr: srv.Addr})
	defer nodeB.Close()

	ctx := context.Background()
	for _, n := range []*limits.Redis{nodeA, nodeB, nodeA} {
		ok, wait, err := n.Allow(ctx, "user-messages:alice", 2, time.Hour, 1)
		if err != nil {
			// Redis is unreachable: use the node's own limiter.
			fmt.Println("fall back:", err)
			continue
		}
		fmt.Println(ok, wait.Round(time.Minute))
	}
	// Output:
	// true 0s
	// true 0s
	// false 30m0s
}

// Two nodes share one destination's 1 connection: the second node gets a
// slot only once the first gives its slot back.
func ExampleRedis_AcquireSlot() {
	srv, err := relaytest.StartRedis(relaytest.RedisOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Kill()
	nodeA := limits.Open(limits.Options{Addr: srv.Addr})
	defer nodeA.Close()
	nodeB := limits.Open(limits.Options{Addr: srv.Addr})
	defer nodeB.Close()

	ctx := context.Background()
	const dest = "shaping-destination:mx.example.com"
	a, _ := nodeA.AcquireSlot(ctx, dest, "a-1", 1, 2*time.Minute)
	b, _ := nodeB.AcquireSlot(ctx, dest, "b-1", 1, 2*time.Minute)
	fmt.Println("A:", a, "B:", b)
	nodeA.ReleaseSlot(ctx, dest, "a-1")
	b, _ = nodeB.AcquireSlot(ctx, dest, "b-1", 1, 2*time.Minute)
	fmt.Println("B after A's release:", b)
	// Output:
	// A: true B: false
	// B after A's release: true
}

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

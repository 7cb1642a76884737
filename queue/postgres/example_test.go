package postgres_test

import (
	"context"
	"fmt"
	"strings"

	"postern/queue"
	"postern/queue/postgres"
	"postern/queue/postgres/pgtest"
)

// A queue in PostgreSQL: Open migrates the schema, Enqueue returns once
// the message is committed, and every node opened on the same database
// sees it.
func Example() {
	cluster, err := pgtest.Start() // a throwaway server, as in the tests
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Stop()
	ctx := context.Background()
	a, err := postgres.Open(ctx, postgres.Options{DSN: cluster.DSN("postgres"), Node: "a"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close(ctx)
	id, err := a.Enqueue(ctx, &queue.Envelope{From: "app@example.org", Rcpts: []string{"bob@example.net"}},
		strings.NewReader("Subject: hello\r\n\r\nHi Bob.\r\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	b, _ := postgres.Open(ctx, postgres.Options{DSN: cluster.DSN("postgres"), Node: "b"})
	defer b.Close(ctx)
	m, _ := b.Get(id)
	fmt.Println(m.State, m.Rcpts[0].Address, m.Size)
	// Output: queued bob@example.net 27
}

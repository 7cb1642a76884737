package pgtest_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"postern/queue/postgres/pgtest"
)

// Start runs a server of its own on a free loopback port; Stop removes
// it, files and all.
func ExampleStart() {
	c, err := pgtest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Stop()
	conn, err := pgx.Connect(context.Background(), c.DSN("postgres"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close(context.Background())
	var sync string
	conn.QueryRow(context.Background(), "SHOW synchronous_commit").Scan(&sync)
	fmt.Println(sync)
	// Output: on
}

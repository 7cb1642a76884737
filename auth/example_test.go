package auth_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"golang.org/x/crypto/bcrypt"

	"postern/auth"
)

func Example() {
	dir, err := os.MkdirTemp("", "postern-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	users := filepath.Join(dir, "users")

	// Only to keep the example fast; real hashes use the default cost.
	auth.BcryptCost = bcrypt.MinCost

	// What `postern user add` does. A name that is an address may send as
	// itself by default; any other name needs an explicit allow list.
	if err := auth.Add(users, "alice@example.test", "correct horse", nil); err != nil {
		log.Fatal(err)
	}
	err = auth.Add(users, "webapp", "battery staple", nil)
	fmt.Println("add webapp:", errors.Is(err, auth.ErrNoDefaultAllow))
	if err := auth.Add(users, "webapp", "battery staple", []string{"noreply@example.test", "@notify.example.test"}); err != nil {
		log.Fatal(err)
	}

	// What the server does.
	store, err := auth.NewStore(users, nil)
	if err != nil {
		log.Fatal(err)
	}
	store.FailureDelay = 1 // keep the example fast: failures still wait, briefly
	ctx := context.Background()

	u, err := store.Authenticate(ctx, "webapp", "battery staple")
	if err != nil {
		log.Fatal(err)
	}
	for _, from := range []string{"noreply@example.test", "x@notify.example.test", "x@example.test", ""} {
		fmt.Printf("%s may send as %q: %v\n", u.Name, from, u.MaySendAs(from))
	}

	_, err = store.Authenticate(ctx, "alice@example.test", "wrong")
	fmt.Println(err)

	// Output:
	// add webapp: true
	// webapp may send as "noreply@example.test": true
	// webapp may send as "x@notify.example.test": true
	// webapp may send as "x@example.test": false
	// webapp may send as "": true
	// invalid credentials
}

func ExampleParsePattern() {
	p, _ := auth.ParsePattern("@Example.Test")
	fmt.Println(p, p.Match("Alice@example.test"), p.Match("alice@sub.example.test"))

	_, err := auth.ParsePattern("*@example.test")
	fmt.Println(err)
	// Output:
	// @example.test true false
	// sender pattern "*@example.test": write @example.test for any address at a domain
}

package auth_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

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
	store, err := auth.NewStore(users, "", nil)
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

// Application passwords: one per application, revoked one by one, and
// usable with the user name (AUTH) or alone (a bearer key).
func ExampleAddKey() {
	dir, err := os.MkdirTemp("", "postern-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	users := filepath.Join(dir, "users")
	keys := auth.DefaultKeysFile(users) // users.keys

	auth.BcryptCost = bcrypt.MinCost // only to keep the example fast
	if err := auth.Add(users, "alice@example.test", "correct horse", nil); err != nil {
		log.Fatal(err)
	}

	// What `postern user key add alice@example.test --label backup` does.
	secret, info, err := auth.AddKey(keys, users, "alice@example.test", "backup")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("key:", len(secret), "characters, naming its id:", strings.HasPrefix(secret, "pk_"+info.ID+"_"))

	store, err := auth.NewStore(users, keys, nil)
	if err != nil {
		log.Fatal(err)
	}
	store.FailureDelay = 1
	ctx := context.Background()
	u, err := store.Authenticate(ctx, "alice@example.test", secret)
	fmt.Println("AUTH with the key:", u.Name, err)
	u, id, err := store.AuthenticateKey(ctx, secret)
	fmt.Println("the key alone:", u.Name, id == info.ID, err)

	// What `postern user key del alice@example.test ID` does: the running
	// store refuses the key at once.
	if err := auth.DeleteKey(keys, "alice@example.test", info.ID); err != nil {
		log.Fatal(err)
	}
	_, err = store.Authenticate(ctx, "alice@example.test", secret)
	fmt.Println("after del:", err)
	// Output:
	// key: 49 characters, naming its id: true
	// AUTH with the key: alice@example.test <nil>
	// the key alone: alice@example.test true <nil>
	// after del: invalid credentials
}

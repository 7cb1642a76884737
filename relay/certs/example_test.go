package certs_test

import (
	"fmt"
	"log"
	"os"

	"postern/relay/certs"
)

// Example loads the listeners' certificate the way postern serve does
// without tls.cert_file: a self-signed one, made once in the data
// directory.
func Example() {
	dir, err := os.MkdirTemp("", "postern-certs-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := certs.Load("", "", dir, "mail.example.test")
	if err != nil {
		log.Fatal(err)
	}
	cfg := store.Config() // for tls.NewListener or smtpd.Options.TLS
	fmt.Println(store.Generated, cfg.GetCertificate != nil)
	// Output: true true
}

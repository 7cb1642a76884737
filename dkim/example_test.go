package dkim_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log"
	"strings"

	"postern/dkim"
)

// A key is made and published, then a message is signed and the signature
// prepended before the message is queued.
func Example() {
	// `postern dkim keygen` would use GenerateKey; a fixed seed keeps the
	// output stable here.
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	key := &dkim.Key{Domain: "example.org", Selector: "s2026", Signer: priv, Algorithm: dkim.AlgEd25519, Bits: 256}

	// `postern dkim dns`: what to publish, and where.
	record, err := dkim.DNSRecord(priv)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s TXT %q\n", dkim.RecordName(key.Selector, key.Domain), dkim.SplitTXT(record))

	signer := dkim.NewSigner([]*dkim.Key{key})
	msg := "From: Alice <alice@example.org>\r\n" +
		"To: bob@example.com\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"Hi Bob.\r\n"
	sigs, err := signer.Sign(strings.NewReader(msg))
	if err != nil {
		log.Fatal(err) // the session answers 451 and queues nothing
	}
	signed := append(sigs, msg...) // this is what gets queued

	// The signature's tags, without the ones that change with every run.
	for _, tag := range strings.Split(strings.NewReplacer("\r\n", "", " ", "").Replace(string(sigs)), ";") {
		if strings.HasPrefix(tag, "d=") || strings.HasPrefix(tag, "s=") || strings.HasPrefix(tag, "h=") {
			fmt.Println(tag)
		}
	}
	fmt.Println(bytes.HasSuffix(signed, []byte(msg)))
	// Output:
	// s2026._domainkey.example.org TXT ["v=DKIM1; k=ed25519; p=6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]
	// d=example.org
	// h=From:From:Subject:Subject:To:To
	// s=s2026
	// true
}

package configs_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"postern/configs"
)

// A file says only what differs from the defaults; everything else keeps
// its built-in value, and relative paths follow the file.
func ExampleLoad() {
	dir, err := os.MkdirTemp("", "postern-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "postern.yaml")
	os.WriteFile(path, []byte(`
hostname: mail.example.com
data_dir: state
limits:
  max_message_size: 50MiB
`), 0o644)

	c, err := configs.Load(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("hostname:", c.Hostname)
	fmt.Println("max message size:", c.Limits.MaxMessageSize)
	fmt.Println("max recipients:", c.Limits.MaxRecipients) // the default
	fmt.Println("queue next to the file:", c.QueuePath() == filepath.Join(dir, "state", "queue.db"))
	// Output:
	// hostname: mail.example.com
	// max message size: 50MiB
	// max recipients: 100
	// queue next to the file: true
}

// Every problem in the file comes back at once, in line order, each with
// its line, its key and what is wrong.
func ExampleErrors() {
	dir, err := os.MkdirTemp("", "postern-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "postern.yaml")
	os.WriteFile(path, []byte(`hostname: mail.example.com
listen:
  submision: 0.0.0.0:587
limits:
  max_message_size: 25MB
delivery:
  tls: always
`), 0o644)

	_, err = configs.Load(path)
	var errs configs.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			// e.Error() is "FILE:LINE: KEY: MSG"; the file is left out
			// here because it is a temporary directory.
			fmt.Printf("line %d: %s: %s\n", e.Line, e.Key, e.Msg)
		}
	}
	// Output:
	// line 3: listen.submision: unknown key (did you mean listen.submission?)
	// line 5: limits.max_message_size: "25MB" is not a size (use a byte count or KiB, MiB, GiB, for example 25MiB)
	// line 7: delivery.tls: "always" is not one of opportunistic, required, disabled
}

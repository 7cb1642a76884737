package durable_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"postern/queue/durable"
)

// Make a new file durable: the file's data with its own fsync, then its
// name with the directory's.
func Example() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f, err := os.OpenFile(filepath.Join(dir, "message"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	f.WriteString("Subject: hi\r\n\r\n")
	if err := f.Sync(); err != nil {
		log.Fatal(err)
	}
	f.Close()
	fmt.Println(durable.SyncDir(dir))
	// Output: <nil>
}

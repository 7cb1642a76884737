package durable

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS syncs the whole file system that holds f (syncfs(2)).
func syncFS(f *os.File) error {
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: err}
	}
	return nil
}

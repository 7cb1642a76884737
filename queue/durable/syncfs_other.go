//go:build !linux

package durable

import (
	"errors"
	"os"
)

// syncFS has no portable equivalent of Linux's syncfs(2).
func syncFS(f *os.File) error {
	return &os.PathError{Op: "syncfs", Path: f.Name(), Err: errors.ErrUnsupported}
}

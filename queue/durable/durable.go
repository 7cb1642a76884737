// Package durable holds the file-system steps that make a write survive a
// crash, for every part of postern that promises it: the queue's spool
// files, capture mode's Maildir, and the maildrop of the sendmail command.
//
// It is a leaf: it imports nothing of postern.
package durable

import (
	"errors"
	"os"
)

// SyncDir fsyncs a directory, so that the names created, linked or
// renamed in it are on disk: fsync(2) says "Calling fsync() does not
// necessarily ensure that the entry in the directory containing the file
// has also reached disk. For that an explicit fsync() on a file descriptor
// for the directory is also needed." A file system that cannot sync a
// directory (EINVAL) is taken as one that needs no such step.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, os.ErrInvalid) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

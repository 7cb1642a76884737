//go:build linux

package auth

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// fingerprint identifies one version of the users file. Inode and device
// catch an atomic replace (rename), size and mtime an in-place edit, and
// ctime a chmod or chown, such as the fix for a file the server could not
// read.
type fingerprint struct {
	exists   bool
	dev, ino uint64
	size     int64
	mtime    int64 // ns
	ctime    int64 // ns
}

func fingerprintOf(fi fs.FileInfo) fingerprint {
	fp := fingerprint{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.dev = uint64(st.Dev)
		fp.ino = uint64(st.Ino)
		fp.ctime = st.Ctim.Nano()
	}
	return fp
}

// copyOwner gives tmp the owner and group of the file at path, if it exists
// and they differ.
func copyOwner(tmp *os.File, path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	want, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	tfi, err := tmp.Stat()
	if err != nil {
		return err
	}
	if have, ok := tfi.Sys().(*syscall.Stat_t); ok && have.Uid == want.Uid && have.Gid == want.Gid {
		return nil
	}
	return tmp.Chown(int(want.Uid), int(want.Gid))
}

//go:build unix

package pickup

import (
	"io/fs"
	"os"
	"syscall"
)

// owner is the file's user and group IDs.
func owner(fi fs.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// links is the file's number of hard links.
func links(fi fs.FileInfo) uint64 { return uint64(fi.Sys().(*syscall.Stat_t).Nlink) }

// openDrop opens a drop for reading without following a symbolic link in
// its last component (O_NOFOLLOW: ELOOP instead) and without blocking on
// a FIFO a user put there (O_NONBLOCK).
func openDrop(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}

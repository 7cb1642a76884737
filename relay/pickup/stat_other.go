//go:build !unix

package pickup

import (
	"errors"
	"io/fs"
	"os"
)

// Without Unix file ownership the pickup cannot tell who made a drop: it
// takes none. (The maildrop is a Unix mechanism; postern's other doors
// work everywhere.)

func owner(fs.FileInfo) (uid, gid int) { return -1, -1 }

func links(fs.FileInfo) uint64 { return 0 }

func openDrop(path string) (*os.File, error) {
	return nil, &os.PathError{Op: "open", Path: path, Err: errors.ErrUnsupported}
}

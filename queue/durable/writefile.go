package durable

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile creates the file name holding data, with mode perm (exactly:
// the umask does not apply), in the order that survives a crash: data
// goes to a temporary file in the same directory, which is fsynced and
// only then renamed to name, and then the directory is synced. A crash at
// any point leaves either no file called name or the whole of data under
// it, never a part. Like os.WriteFile, it replaces an existing name (a
// rename cannot be told not to).
//
// The temporary name is "." + the base of name + ".tmp-" and random
// digits: a reader of the directory skips names that start with a dot
// (the maildrop's pickup does), and one left by a crash is recognisable.
//
// The directory is synced with SyncDir when it can be opened. A user who
// may create files in a directory but not list it (the maildrop, mode
// 3733) cannot open it for that, and then the file system holding it is
// synced instead (syncfs(2) on Linux, through the new file's descriptor),
// which covers the rename as well.
func WriteFile(name string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp makes 0600; the mode asked for is set on the descriptor,
	// where the umask does not apply.
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = os.Rename(tmp, name); err != nil {
		return err
	}
	tmp = name // from here on, a failure removes the file under its new name
	err = SyncDir(dir)
	if errors.Is(err, fs.ErrPermission) {
		err = syncFS(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

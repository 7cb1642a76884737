package pickup

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"postern/queue/durable"
)

// The permission model (README, "The sendmail command", says why):
//
//   - The maildrop directory is mode 3733, owned by the daemon's user and
//     group (data_dir's): every local user may create a file in it (-wx
//     for others) but not list it (no r), so nobody learns the names of
//     other users' drops; the sticky bit stops users deleting or renaming
//     files they do not own; the setgid bit gives every drop the
//     directory's group, the daemon's.
//   - A drop is mode 0640: its owner and the daemon's group may read it,
//     no other user.
//   - bad/ inside it, where refused drops are moved, is 0700: the daemon's
//     alone.
//   - data_dir needs search permission for others (o+x, no r), so that
//     local users can reach the maildrop by name.
const (
	DirMode  = fs.ModeDir | fs.ModeSetgid | fs.ModeSticky | 0o733
	DropMode = fs.FileMode(0o640)
	BadMode  = fs.ModeDir | 0o700
	// BadDir is the directory, inside the maildrop, of refused drops.
	BadDir = "bad"
)

// unixMode is the mode as chmod(1) writes it: 3733, not dgtrwx-wx-wx.
func unixMode(m fs.FileMode) string {
	n := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		n |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		n |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		n |= 0o1000
	}
	return fmt.Sprintf("%04o", n)
}

// ownerName is "user:group" by name where the system knows them, by
// number otherwise: what chown(1) takes.
func ownerName(uid, gid int) string {
	u, g := strconv.Itoa(uid), strconv.Itoa(gid)
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

// Problem is one thing wrong with the maildrop directory, data_dir or
// bad/.
type Problem struct {
	Path string
	What string // what is wrong, and what it allows or prevents
	Fix  string // the command that sets it right
	// Unsafe: it lets one local user read, delete or forge another's
	// mail, or lets the daemon be misled. Otherwise it only keeps local
	// users from leaving mail in the maildrop.
	Unsafe bool
	// Fixable: a mode the daemon sets right itself at start. Anything
	// else (a symbolic link, another owner) it refuses to start with.
	Fixable bool
	fix     func() error
}

func (p Problem) String() string { return p.Path + ": " + p.What + "; fix: " + p.Fix }

// Inspect returns what is wrong with the maildrop dir and the way to it:
// nothing when dir does not exist yet (serve creates it), else each of
// data_dir without search permission for others, dir or dir/bad being a
// symbolic link or no directory, owned by other than data_dir's owner, or
// with another mode than DirMode or BadMode.
func Inspect(dir string) ([]Problem, error) {
	parent := filepath.Dir(dir)
	pfi, err := os.Stat(parent)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Problem
	if pfi.Mode().Perm()&0o001 == 0 {
		mode := pfi.Mode()
		out = append(out, Problem{
			Path: parent,
			What: fmt.Sprintf("mode %s: other users cannot reach the maildrop in it (search permission, o+x, is missing), so sendmail run by them fails when postern is down", unixMode(mode)),
			Fix:  "chmod o+x " + parent, Fixable: true,
			fix: func() error { return os.Chmod(parent, mode|0o001) },
		})
	}
	uid, gid := owner(pfi)
	ps, err := inspectDir(dir, DirMode, uid, gid, modeReasons)
	if err != nil || len(ps) > 0 && !ps[0].Fixable {
		return append(out, ps...), err // a dir that is not ours: bad/ in it is not ours either
	}
	out = append(out, ps...)
	bad, err := inspectDir(filepath.Join(dir, BadDir), BadMode, uid, gid, func(fs.FileMode) ([]string, bool) {
		return []string{"local users can reach the refused drops"}, true
	})
	return append(out, bad...), err
}

// inspectDir checks that path is a directory (not a link to one) owned
// by uid:gid with mode want; a missing one is no problem.
func inspectDir(path string, want fs.FileMode, uid, gid int, reasons func(fs.FileMode) ([]string, bool)) ([]Problem, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	recreate := "rm -r " + path + " (serve creates it again)"
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		return []Problem{{Path: path, Unsafe: true, Fix: "rm " + path + " (serve creates the directory)",
			What: fmt.Sprintf("is a symbolic link (to %s): whoever controls its target controls the mail dropped in it", target)}}, nil
	case !fi.IsDir():
		return []Problem{{Path: path, Unsafe: true, Fix: recreate, What: "is not a directory"}}, nil
	}
	if u, g := owner(fi); u != uid || g != gid {
		return []Problem{{Path: path, Unsafe: true, Fix: fmt.Sprintf("chown %s %s, or %s", ownerName(uid, gid), path, recreate),
			What: fmt.Sprintf("is owned by %s, not by data_dir's owner %s: another user controls it", ownerName(u, g), ownerName(uid, gid))}}, nil
	}
	if fi.Mode() == want {
		return nil, nil
	}
	why, unsafe := reasons(fi.Mode())
	return []Problem{{Path: path, Unsafe: unsafe, Fixable: true, Fix: fmt.Sprintf("chmod %s %s", unixMode(want), path),
		What: fmt.Sprintf("mode %s, not %s: %s", unixMode(fi.Mode()), unixMode(want), strings.Join(why, "; ")),
		fix:  func() error { return os.Chmod(path, want) }}}, nil
}

// modeReasons says what a maildrop directory's mode other than DirMode
// does, and whether that is unsafe.
func modeReasons(m fs.FileMode) (why []string, unsafe bool) {
	p := m.Perm()
	add := func(bad bool, s string) {
		why = append(why, s)
		unsafe = unsafe || bad
	}
	if p&0o044 != 0 {
		add(true, "other users can list the drops")
	}
	if m&fs.ModeSticky == 0 {
		add(true, "without the sticky bit any user can delete or rename another user's drops")
	}
	if m&fs.ModeSetgid == 0 {
		add(true, "without the setgid bit drops get their writer's group, and a daemon that is not root cannot read them")
	}
	if p&0o003 != 0o003 {
		add(false, "other users cannot leave mail in it (-wx for others is missing)")
	}
	if p&0o700 != 0o700 {
		add(false, "the daemon cannot list or remove drops")
	}
	if len(why) == 0 {
		add(false, "it differs from what every other postern has")
	}
	return why, unsafe
}

// Change is one thing Prepare did, or could not do, for the log.
type Change struct {
	Text string
	// Warn: a mode was wrong, whether or not Prepare could set it right
	// (someone changed it). Otherwise Prepare made something missing.
	Warn bool
}

// Prepare makes the maildrop ready for the daemon at start: it creates
// dir (and dir/bad) when missing, sets a wrong mode right (the directory
// is the daemon's own: only bits can have drifted, through a restore or a
// chmod -R), gives data_dir search permission for others, and says what
// it changed. It refuses, with an error naming the fix, a dir or bad/
// that is a symbolic link, not a directory, or owned by other than
// data_dir's owner: someone else controls that path, and taking it over
// would mean trusting them.
func Prepare(dir string) (changed []Change, err error) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := MakeDir(dir); err != nil {
			return nil, err
		}
		changed = append(changed, Change{Text: "created " + dir + " (mode " + unixMode(DirMode) + ")"})
	}
	problems, err := Inspect(dir)
	if err != nil {
		return changed, err
	}
	var refused []string
	for _, p := range problems {
		if !p.Fixable {
			refused = append(refused, p.String())
		}
	}
	if len(refused) > 0 {
		return changed, errors.New(strings.Join(refused, "\n"))
	}
	for _, p := range problems {
		if err := p.fix(); err != nil {
			if p.Unsafe {
				return changed, fmt.Errorf("%s: %w", p, err)
			}
			changed = append(changed, Change{Text: fmt.Sprintf("could not fix %s: %v", p, err), Warn: true})
			continue
		}
		changed = append(changed, Change{Text: "fixed " + p.String(), Warn: true})
	}
	bad := filepath.Join(dir, BadDir)
	if _, err := os.Lstat(bad); errors.Is(err, fs.ErrNotExist) {
		if err := mkdirOwned(bad, BadMode); err != nil {
			return changed, err
		}
		changed = append(changed, Change{Text: "created " + bad})
	}
	return changed, nil
}

// MakeDir creates the maildrop directory dir, with bad/ inside it,
// owned by data_dir's owner (when run as root, as sendmail may be) and
// with mode DirMode. bad/ is made before the directory opens to everyone,
// so that no user can take its name first. A dir that already exists is
// left as it is.
func MakeDir(dir string) error {
	err := mkdirOwned(dir, fs.ModeDir|0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := mkdirOwned(filepath.Join(dir, BadDir), BadMode); err != nil {
		return err
	}
	return os.Chmod(dir, DirMode)
}

// mkdirOwned makes path with mode (exactly: umask aside), owned by its
// parent's owner when run as root.
func mkdirOwned(path string, mode fs.FileMode) error {
	pfi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		// Before the chmod: chown may clear the setgid bit.
		if uid, gid := owner(pfi); uid >= 0 {
			if err := os.Lchown(path, uid, gid); err != nil {
				return err
			}
		}
	}
	return os.Chmod(path, mode)
}

// Write leaves the message msg with envelope d in the maildrop dir, as
// the sendmail command does when the daemon cannot take it: the drop is
// written under a temporary name, synced, renamed into place and the
// directory synced (durable.WriteFile) before Write returns its path.
// It creates dir when it is missing and the caller may (MakeDir). Its
// errors are d's (ErrMalformed) or the file system's.
func Write(dir string, d *Drop, msg []byte, now time.Time) (string, error) {
	data, err := d.Encode(msg)
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := MakeDir(dir); err != nil {
			return "", err
		}
	}
	path := filepath.Join(dir, dropName(now))
	if err := durable.WriteFile(path, data, DropMode); err != nil {
		return "", err
	}
	return path, nil
}

// dropName is the time in nanoseconds, zero-padded so that names sort in
// the order drops were made (the pickup takes them in that order), and
// 64 random bits, so that two drops never share a name.
func dropName(now time.Time) string {
	var r [8]byte
	rand.Read(r[:]) // never fails (Go 1.24+)
	return fmt.Sprintf("%019d.%016x", now.UnixNano(), binary.BigEndian.Uint64(r[:]))
}

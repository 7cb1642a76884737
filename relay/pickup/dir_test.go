package pickup

import (
	"bufio"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// dataDir is a data_dir as serve makes it: 0711.
func dataDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files other owners (tests run as root in CI)")
	}
}

func TestMakeDirAndWrite(t *testing.T) {
	dir := filepath.Join(dataDir(t), "maildrop")
	d := &Drop{From: "app@example.org", Rcpts: []string{"bob@example.org"}}
	// Write makes the directory when it is missing.
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	later, err := Write(dir, d, []byte(testMsg), t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	earlier, err := Write(dir, d, []byte("x\r\n"), t0)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]fs.FileMode{dir: DirMode, filepath.Join(dir, BadDir): BadMode, later: DropMode} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	// Names sort in the order the drops were made, whatever order they
	// were written in.
	names := []string{filepath.Base(later), filepath.Base(earlier)}
	sort.Strings(names)
	if names[0] != filepath.Base(earlier) {
		t.Errorf("names %q do not sort by time", names)
	}
	f, err := os.Open(later)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	got, err := Parse(br)
	rest, _ := io.ReadAll(br)
	if err != nil || got.From != d.From || string(rest) != testMsg {
		t.Errorf("the drop reads back as %+v, %q, %v", got, rest, err)
	}
	if ps, err := Inspect(dir); err != nil || len(ps) != 0 {
		t.Errorf("Inspect of a new maildrop: %v, %v", ps, err)
	}
}

// TestMakeDirOwner: sendmail run by root makes the maildrop for the
// daemon, which owns data_dir.
func TestMakeDirOwner(t *testing.T) {
	needRoot(t)
	data := dataDir(t)
	if err := os.Chown(data, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(data, "maildrop")
	if err := MakeDir(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, BadDir)} {
		fi, _ := os.Lstat(p)
		if uid, gid := owner(fi); uid != 65534 || gid != 65534 {
			t.Errorf("%s owned by %d:%d, want 65534:65534", p, uid, gid)
		}
	}
	if fi, _ := os.Lstat(dir); fi.Mode() != DirMode {
		t.Errorf("mode %v after chown, want %v (chown may clear setgid)", fi.Mode(), DirMode)
	}
}

func TestInspect(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(t *testing.T, data, dir string)
		path    string // relative to data's parent: "data", "data/maildrop"...
		what    string
		fix     string
		unsafe  bool
		fixable bool
	}{
		{"data_dir without o+x", func(t *testing.T, data, dir string) { os.Chmod(data, 0o700) },
			"data", "search permission, o+x, is missing", "chmod o+x", false, true},
		{"world-readable and writable", func(t *testing.T, data, dir string) { os.Chmod(dir, 0o777) },
			"data/maildrop", "mode 0777, not 3733: other users can list the drops", "chmod 3733", true, true},
		{"no sticky bit", func(t *testing.T, data, dir string) { os.Chmod(dir, fs.ModeSetgid|0o733) },
			"data/maildrop", "any user can delete or rename another user's drops", "chmod 3733", true, true},
		{"no setgid bit", func(t *testing.T, data, dir string) { os.Chmod(dir, fs.ModeSticky|0o733) },
			"data/maildrop", "drops get their writer's group", "chmod 3733", true, true},
		{"closed to others", func(t *testing.T, data, dir string) { os.Chmod(dir, fs.ModeSetgid|fs.ModeSticky|0o700) },
			"data/maildrop", "other users cannot leave mail in it", "chmod 3733", false, true},
		{"symbolic link", func(t *testing.T, data, dir string) {
			os.RemoveAll(dir)
			os.Symlink(t.TempDir(), dir)
		}, "data/maildrop", "is a symbolic link", "rm ", true, false},
		{"a file", func(t *testing.T, data, dir string) {
			os.RemoveAll(dir)
			os.WriteFile(dir, nil, 0o600)
		}, "data/maildrop", "is not a directory", "rm -r ", true, false},
		{"bad/ open to others", func(t *testing.T, data, dir string) { os.Chmod(filepath.Join(dir, BadDir), 0o755) },
			"data/maildrop/bad", "mode 0755, not 0700", "chmod 0700", true, true},
		{"bad/ a symbolic link", func(t *testing.T, data, dir string) {
			os.RemoveAll(filepath.Join(dir, BadDir))
			os.Symlink("/tmp", filepath.Join(dir, BadDir))
		}, "data/maildrop/bad", "is a symbolic link (to /tmp)", "rm ", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := dataDir(t)
			dir := filepath.Join(data, "maildrop")
			if err := MakeDir(dir); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, data, dir)
			ps, err := Inspect(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != 1 {
				t.Fatalf("Inspect = %v, want one problem", ps)
			}
			p := ps[0]
			want := filepath.Join(filepath.Dir(data), tt.path)
			if p.Path != want || !strings.Contains(p.What, tt.what) || !strings.HasPrefix(p.Fix, tt.fix) || !strings.Contains(p.Fix, want) ||
				p.Unsafe != tt.unsafe || p.Fixable != tt.fixable {
				t.Errorf("Inspect = %+v\nwant path %s, what with %q, fix %q..., unsafe %v, fixable %v", p, want, tt.what, tt.fix, tt.unsafe, tt.fixable)
			}
		})
	}
	t.Run("not made yet", func(t *testing.T) {
		ps, err := Inspect(filepath.Join(dataDir(t), "maildrop"))
		if err != nil || len(ps) != 0 {
			t.Errorf("Inspect = %v, %v; want nothing: serve makes it", ps, err)
		}
	})
	t.Run("another owner", func(t *testing.T) {
		needRoot(t)
		dir := filepath.Join(dataDir(t), "maildrop")
		if err := MakeDir(dir); err != nil {
			t.Fatal(err)
		}
		os.Chown(dir, 65534, 65534)
		ps, _ := Inspect(dir)
		if len(ps) != 1 || ps[0].Fixable || !ps[0].Unsafe || !strings.Contains(ps[0].What, "is owned by nobody:") ||
			!strings.HasPrefix(ps[0].Fix, "chown root:root "+dir) {
			t.Errorf("Inspect = %+v", ps)
		}
	})
}

func TestPrepare(t *testing.T) {
	t.Run("makes it", func(t *testing.T) {
		data := filepath.Join(t.TempDir(), "data")
		os.Mkdir(data, 0o700) // as an older serve made data_dir
		dir := filepath.Join(data, "maildrop")
		changed, err := Prepare(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) != 2 || !strings.HasPrefix(changed[0].Text, "created "+dir) || changed[0].Warn ||
			!strings.HasPrefix(changed[1].Text, "fixed "+data+": ") || !changed[1].Warn {
			t.Errorf("Prepare said %+v", changed)
		}
		if ps, _ := Inspect(dir); len(ps) != 0 {
			t.Errorf("after Prepare: %v", ps)
		}
	})
	t.Run("sets modes right", func(t *testing.T) {
		dir := filepath.Join(dataDir(t), "maildrop")
		MakeDir(dir)
		os.Chmod(dir, 0o777)
		os.Remove(filepath.Join(dir, BadDir))
		changed, err := Prepare(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(changed) != 2 || !strings.HasPrefix(changed[0].Text, "fixed "+dir+": mode 0777") || !changed[0].Warn ||
			changed[1] != (Change{Text: "created " + filepath.Join(dir, BadDir)}) {
			t.Errorf("Prepare said %+v", changed)
		}
		if ps, _ := Inspect(dir); len(ps) != 0 {
			t.Errorf("after Prepare: %v", ps)
		}
	})
	t.Run("refuses a symbolic link", func(t *testing.T) {
		target := t.TempDir()
		before, _ := os.Stat(target)
		dir := filepath.Join(dataDir(t), "maildrop")
		os.Symlink(target, dir)
		_, err := Prepare(dir)
		if err == nil || !strings.Contains(err.Error(), dir+": is a symbolic link (to "+target+")") || !strings.Contains(err.Error(), "fix: rm "+dir) {
			t.Errorf("Prepare = %v", err)
		}
		if fi, _ := os.Stat(target); fi.Mode() != before.Mode() {
			t.Errorf("the link's target was changed: %v", fi.Mode())
		}
	})
	t.Run("refuses another owner", func(t *testing.T) {
		needRoot(t)
		dir := filepath.Join(dataDir(t), "maildrop")
		MakeDir(dir)
		os.Chown(dir, 65534, 65534)
		os.Chmod(dir, 0o777)
		if _, err := Prepare(dir); err == nil || !strings.Contains(err.Error(), "chown root:root "+dir) {
			t.Errorf("Prepare = %v", err)
		}
		if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o777 {
			t.Errorf("another user's directory was changed: %v", fi.Mode())
		}
	})
}

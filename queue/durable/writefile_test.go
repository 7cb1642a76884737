package durable

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "drop")
	// 0606: a mode the usual umask (022) would cut to 0604, so that the
	// test sees the mode is set exactly.
	if err := WriteFile(name, []byte("first"), 0o606); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o606 {
		t.Errorf("mode %v, want 0606", fi.Mode().Perm())
	}
	// Replaces, as os.WriteFile does, and leaves no temporary file.
	if err := WriteFile(name, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(name); string(b) != "second" {
		t.Errorf("content %q, want second", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %q, want only drop", names)
	}
	// A directory that is not there: an error, and nothing written.
	if err := WriteFile(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteFile into a missing directory: %v, want not-exist", err)
	}
}

// TestSyncFS: the fallback for a directory the writer may create files in
// but not open (the maildrop, for a local user) syncs the file system.
func TestSyncFS(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syncFS(f); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("syncFS: %v", err)
	}
}

package configs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load. Whatever the file holds, Load
// must not panic, and must either succeed with a configuration that passes
// its own checks or return Errors in which every entry names the file, says
// what is wrong and comes in file order.
func FuzzLoad(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte(baseline))
	f.Add([]byte(""))
	f.Add([]byte("hostname: a.example\nhostname: b.example\n"))
	f.Add([]byte("hostname: a.example\n---\nhostname: b.example\n"))
	f.Add([]byte("base: &b {level: debug}\nlog: *b\nlisten: {<<: *b}\n"))
	f.Add([]byte("dkim: {keys: &k [*k]}\n"))
	for _, name := range badCases {
		data, err := os.ReadFile(filepath.Join("testdata", "bad", name+".yaml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}

	// One file for every input: the fuzz function runs one input at a time
	// in each process, and a directory per input would cost more than Load.
	path := filepath.Join(f.TempDir(), "postern.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err == nil {
			if c == nil {
				t.Fatal("Load returned neither a configuration nor an error")
			}
			// Resolving paths must not break what validation accepted.
			if errs := c.validate(); len(errs) > 0 {
				t.Fatalf("Load succeeded, but the result does not validate:\n%v", errs)
			}
			return
		}
		var errs Errors
		if !errors.As(err, &errs) {
			t.Fatalf("Load returned %T, want configs.Errors: %v", err, err)
		}
		if len(errs) == 0 {
			t.Fatal("Load returned an empty Errors")
		}
		for i, e := range errs {
			if e == nil {
				t.Fatalf("error %d is nil", i)
			}
			if e.Msg == "" || e.File != path {
				t.Errorf("error %d %q: want a message and File %q", i, e, path)
			}
			if i > 0 && e.Line < errs[i-1].Line {
				t.Errorf("error %d (line %d) after line %d: not in file order", i, e.Line, errs[i-1].Line)
			}
		}
	})
}

package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The queue's keys: each wrong value is named with its key and what is
// wrong with it, all at once.
func TestQueueConfig(t *testing.T) {
	dir := t.TempDir()
	dsn := filepath.Join(dir, "dsn")
	os.WriteFile(dsn, []byte("postgres://u:p@db/postern\n"), 0o600)
	blank := filepath.Join(dir, "blank")
	os.WriteFile(blank, []byte(" \n\t\n"), 0o600)
	for _, c := range []struct {
		name, yaml string
		want       []string // "key: message start"; none: it loads
	}{
		{"default", "", nil},
		{"postgres", "queue: {backend: postgres, postgres: {dsn_file: " + dsn + ", lease: 30s, node: mx1}}", nil},
		{"unknown backend", "queue: {backend: Postgres}", []string{`queue.backend: "Postgres" is not one of bbolt, postgres`}},
		{"no dsn_file", "queue: {backend: postgres}", []string{"queue.postgres.dsn_file: must be set"}},
		{"unreadable dsn_file", "queue: {backend: postgres, postgres: {dsn_file: " + filepath.Join(dir, "none") + "}}", []string{"queue.postgres.dsn_file: cannot be read"}},
		{"blank dsn_file", "queue: {backend: postgres, postgres: {dsn_file: " + blank + "}}", []string{"queue.postgres.dsn_file: " + blank + " is empty"}},
		{"lease and file at once", "queue: {backend: postgres, postgres: {lease: 2h}}", []string{"queue.postgres.dsn_file: must be set", "queue.postgres.lease: 2h0m0s is outside 10s..1h"}},
		{"postgres keys for bbolt", "queue: {postgres: {dsn_file: " + dsn + "}}", []string{`queue.postgres: is set, but queue.backend is "bbolt"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, "hostname: mx.example.test\n"+c.yaml+"\n")
			if c.want == nil {
				if _, err := Load(path); err != nil {
					t.Fatal(err)
				}
				return
			}
			errs := loadErrors(t, path)
			var got []string
			for _, e := range errs {
				got = append(got, e.Key+": "+e.Msg)
			}
			if len(got) != len(c.want) {
				t.Fatalf("errors %q, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("error %d = %q, want it to start %q", i, got[i], w)
				}
			}
		})
	}
}

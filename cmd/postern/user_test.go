package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"postern/auth"
)

// noStdin fails the test if the command reads the password at all.
type noStdin struct{ t *testing.T }

func (r noStdin) Read([]byte) (int, error) {
	r.t.Error("the command read a password it was going to refuse anyway")
	return 0, io.EOF
}

// TestUserRefusesBeforeThePrompt: user add and user passwd say what is
// wrong with the name before asking for a password, not after it has been
// typed twice.
func TestUserRefusesBeforeThePrompt(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	cfg := filepath.Join(dir, "postern.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+dir+"\nauth: {users_file: "+users+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := auth.Add(users, "alice@example.test", "correct horse battery", nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		sub, name string
		extra     []string
		want      error  // errors.Is, or nil to match text only
		text      string // in the message
	}{
		{"add", "alice@example.test", nil, auth.ErrUserExists, "alice@example.test"},
		{"add", "ALICE@example.test", nil, auth.ErrUserExists, "ALICE@example.test"},
		{"add", "bob:x", nil, nil, "bob:x"},
		{"add", "bob@example.test", []string{"--allow", "not a pattern"}, nil, "not a pattern"},
		{"passwd", "nobody@example.test", nil, auth.ErrNoSuchUser, "nobody@example.test"},
	} {
		t.Run(tt.sub+" "+tt.name, func(t *testing.T) {
			args := append([]string{"--config", cfg, tt.name}, tt.extra...)
			var out strings.Builder
			err := cmdUser(tt.sub, args, noStdin{t}, &out, &out)
			if err == nil {
				t.Fatalf("no error; output %q", out.String())
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not name %q", err, tt.text)
			}
		})
	}
}

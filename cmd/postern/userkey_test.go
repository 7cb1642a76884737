package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"postern/auth"
)

// userKeyFixture is a config whose users file has alice, for the user key
// commands run in process.
type userKeyFixture struct {
	t                *testing.T
	cfg, users, keys string
}

func newUserKeyFixture(t *testing.T) *userKeyFixture {
	t.Helper()
	dir := t.TempDir()
	f := &userKeyFixture{t: t, cfg: filepath.Join(dir, "postern.yaml"), users: filepath.Join(dir, "users"), keys: filepath.Join(dir, "users.keys")}
	if err := os.WriteFile(f.cfg, []byte("data_dir: "+dir+"\nauth: {users_file: users}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := auth.Add(f.users, "alice@example.test", "correct horse battery", nil); err != nil {
		t.Fatal(err)
	}
	return f
}

// run runs `postern user SUB ARGS... --config CFG` in process.
func (f *userKeyFixture) run(sub string, args ...string) (string, error) {
	f.t.Helper()
	var out strings.Builder
	err := cmdUser(sub, append(args, "--config", f.cfg), noStdin{f.t}, &out, &out)
	return out.String(), err
}

func TestUserKeyCommands(t *testing.T) {
	f := newUserKeyFixture(t)
	out, err := f.run("key", "add", "ALICE@example.test", "--label", "nightly backup")
	if err != nil {
		t.Fatalf("user key add: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	secret := lines[len(lines)-1]
	if !strings.HasPrefix(secret, "pk_") || len(secret) != 49 {
		t.Fatalf("the last line of user key add is %q, want the key\n%s", secret, out)
	}
	keys, err := auth.ListKeys(f.keys, "alice@example.test")
	if err != nil || len(keys) != 1 || !strings.HasPrefix(secret, "pk_"+keys[0].ID+"_") {
		t.Fatalf("keys file holds %+v, %v", keys, err)
	}
	id := keys[0].ID

	out, err = f.run("key", "list", "alice@example.test")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, id) || !strings.Contains(out, "nightly backup") || !strings.Contains(out, keys[0].Created.Format("2006-01-02T15:04:05Z")) {
		t.Errorf("user key list does not show the id, label and creation time:\n%s", out)
	}
	data, _ := os.ReadFile(f.keys)
	hash := strings.Split(strings.TrimSpace(string(data[strings.Index(string(data), id):])), ":")[2]
	if strings.Contains(out, secret[17:]) || strings.Contains(out, hash) {
		t.Errorf("user key list shows the key or its hash:\n%s", out)
	}

	for _, tc := range []struct {
		args []string
		want error
	}{
		{[]string{"add", "bob@example.test"}, auth.ErrNoSuchUser},
		{[]string{"add", "alice@example.test", "--label", "a\tb"}, auth.ErrBadLabel},
		{[]string{"list", "bob@example.test"}, auth.ErrNoSuchUser},
		{[]string{"del", "alice@example.test", "aaaaaaaaaaaaa"}, auth.ErrNoSuchKey},
		{[]string{"del", "bob@example.test", id}, auth.ErrNoSuchKey},
		{[]string{"list"}, errUsage},
		{[]string{"del", "alice@example.test"}, errUsage},
		{[]string{"list", "alice@example.test", "--label", "x"}, errUsage},
		{[]string{"rotate", "alice@example.test"}, errUsage},
	} {
		if out, err := f.run("key", tc.args...); !errors.Is(err, tc.want) {
			t.Errorf("user key %q = %v\n%s\nwant %v", tc.args, err, out, tc.want)
		}
	}
	if _, err := f.run("key"); !errors.Is(err, errUsage) {
		t.Errorf("user key without a subcommand: %v", err)
	}

	if out, err := f.run("key", "del", "alice@example.test", id); err != nil || !strings.Contains(out, "revoked application password "+id) {
		t.Errorf("user key del: %v\n%s", err, out)
	}
	if keys, _ := auth.ListKeys(f.keys, ""); len(keys) != 0 {
		t.Errorf("after user key del: %+v", keys)
	}
}

// TestUserDelRevokesKeys: a user deleted and added again does not get the
// old keys back.
func TestUserDelRevokesKeys(t *testing.T) {
	f := newUserKeyFixture(t)
	for range 2 {
		if out, err := f.run("key", "add", "alice@example.test"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	out, err := f.run("del", "alice@example.test")
	if err != nil || !strings.Contains(out, "revoked 2 application password(s)") {
		t.Errorf("user del: %v\n%s", err, out)
	}
	if keys, _ := auth.ListKeys(f.keys, ""); len(keys) != 0 {
		t.Errorf("keys left after user del: %+v", keys)
	}

	// A broken keys file does not stop the deletion, and says so.
	if err := auth.Add(f.users, "bob@example.test", "x", nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.keys, []byte("garbage\n"), 0o600)
	out, err = f.run("del", "bob@example.test")
	if err == nil || !strings.Contains(err.Error(), "the user is deleted") {
		t.Errorf("user del with a broken keys file: %v\n%s", err, out)
	}
	if users, _ := auth.List(f.users); len(users) != 0 {
		t.Errorf("users left: %+v", users)
	}
}

// TestConfigCheckKeysFile: config check reports every problem of the keys
// file with its line, quoting no hash, and warns of keys without a user.
func TestConfigCheckKeysFile(t *testing.T) {
	f := newUserKeyFixture(t)
	if _, err := f.run("key", "add", "alice@example.test"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := cmdConfigCheck([]string{"--config", f.cfg}, &out); err != nil {
		t.Fatalf("config check with a good keys file: %v\n%s", err, out.String())
	}

	const hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeX"
	good, _ := os.ReadFile(f.keys)
	bad := string(good) + "bbbbbbbbbbbbb:alice@example.test:" + hash + ":20261206T091530Z\n" +
		"ccccccccccccc:gone@example.test\n"
	os.WriteFile(f.keys, []byte(bad), 0o600)
	out.Reset()
	err := cmdConfigCheck([]string{"--config", f.cfg}, &out)
	if err == nil {
		t.Fatalf("config check passed a broken keys file:\n%s", out.String())
	}
	msg := err.Error()
	for _, want := range []string{f.keys + ":5: key hash", f.keys + ":6: want ID:USER"} {
		if !strings.Contains(msg, want) {
			t.Errorf("config check does not say %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, hash[:20]) {
		t.Errorf("config check quotes a hash:\n%s", msg)
	}

	// A valid file with a key of a user who is gone: a warning only.
	os.WriteFile(f.keys, []byte(string(good)+"ddddddddddddd:gone@example.test:"+strings.Repeat("ab", 32)+":20261206T091530Z\n"), 0o600)
	out.Reset()
	if err := cmdConfigCheck([]string{"--config", f.cfg}, &out); err != nil {
		t.Fatalf("config check: %v", err)
	}
	if !strings.Contains(out.String(), "warning: auth.keys_file: application password ddddddddddddd belongs to gone@example.test") {
		t.Errorf("no warning about the orphan key:\n%s", out.String())
	}
}

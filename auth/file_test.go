package auth

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// describe renders a parse result for the golden files: one user per line
// with its allow list, or the error text.
func describe(f *usersFile, err error) string {
	if err != nil {
		return "error:\n" + err.Error() + "\n"
	}
	var b strings.Builder
	for _, r := range f.users {
		allow := make([]string, len(r.allow))
		for i, p := range r.allow {
			allow[i] = p.String()
		}
		if len(allow) == 0 {
			allow = []string{"(nobody)"}
		}
		fmt.Fprintf(&b, "%s line=%d cost=%d allow=%s\n", r.name, r.line+1, r.cost, strings.Join(allow, ","))
	}
	return b.String()
}

// TestParseGolden parses testdata/parse/CASE/users and compares the result
// with testdata/parse/CASE/want. Run with -update to regenerate.
func TestParseGolden(t *testing.T) {
	golden(t, "testdata/parse", "users", func(data []byte) string { return describe(parseUsers("users", data)) })
}

// golden runs one subtest per directory of dir: it reads the file named
// input there, and compares describe's account of it with the file want
// beside it (rewritten instead with -update).
func golden(t *testing.T, dir, input string, describe func([]byte) string) {
	dirs, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases in %s: %v", dir, err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, input))
			if err != nil {
				t.Fatal(err)
			}
			got := describe(data)
			wantPath := filepath.Join(dir, "want")
			if *update {
				if err := os.WriteFile(wantPath, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestParseErrorNeverQuotesHashes(t *testing.T) {
	secret := "$2a$04$THISISASECRETHASHTHATMUSTNOTLEAKXXXXXXXXXXXXXXXXXXXX"
	lines := []string{
		"alice@example.test:" + secret + "xyz:*", // wrong length
		"alice@example.test:" + secret[:20] + ":*",
		"alice@example.test:plaintextpassword:*",
		"plaintextpasswordwithoutcolon",
	}
	_, err := parseUsers("users", []byte(strings.Join(lines, "\n")))
	if err == nil {
		t.Fatal("no error")
	}
	for _, leak := range []string{"THISISASECRET", "plaintextpassword"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error quotes %q:\n%v", leak, err)
		}
	}
	var perr *ParseError
	if !errors.As(err, &perr) || len(perr.Problems) != 4 {
		t.Errorf("want 4 problems in a *ParseError, got %#v", err)
	}
}

func TestParseErrorLinesAndPath(t *testing.T) {
	h := mustHash(t, "pw")
	data := "ok@example.test:" + h + "\n\nbad\n# c\nx:" + h + ":nope\n"
	_, err := parseUsers("/etc/postern/users", []byte(data))
	var perr *ParseError
	if !errors.As(err, &perr) {
		t.Fatalf("err = %v, want *ParseError", err)
	}
	var lines []int
	for _, p := range perr.Problems {
		lines = append(lines, p.Line)
	}
	if fmt.Sprint(lines) != "[3 5]" {
		t.Errorf("problem lines = %v, want [3 5]", lines)
	}
	if !strings.HasPrefix(err.Error(), "/etc/postern/users:3: ") {
		t.Errorf("error does not start with path:line: %q", err)
	}
}

func TestEditRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")

	if got, err := List(path); err != nil || len(got) != 0 {
		t.Fatalf("List(missing) = %v, %v; want empty", got, err)
	}
	if err := Add(path, "alice@example.test", "pw-alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := Add(path, "webapp", "pw-web", []string{"noreply@example.test", " @example.org "}); err != nil {
		t.Fatal(err)
	}
	if err := Add(path, "carol@example.test", "pw-carol", []string{"*"}); err != nil {
		t.Fatal(err)
	}
	if err := Add(path, "ALICE@example.test", "x", nil); !errors.Is(err, ErrUserExists) {
		t.Errorf("Add(existing, other case) = %v, want ErrUserExists", err)
	}
	if err := Add(path, "cron", "x", nil); !errors.Is(err, ErrNoDefaultAllow) {
		t.Errorf("Add(non-address, no allow) = %v, want ErrNoDefaultAllow", err)
	}
	if err := Add(path, "dave@example.test", "", nil); !errors.Is(err, ErrEmptyPassword) {
		t.Errorf("Add(empty password) = %v, want ErrEmptyPassword", err)
	}
	if err := Add(path, "dave@example.test", strings.Repeat("x", 73), nil); !errors.Is(err, ErrPasswordTooLong) {
		t.Errorf("Add(73-byte password) = %v, want ErrPasswordTooLong", err)
	}
	if err := Add(path, "dave@example.test", "a\x00b", nil); !errors.Is(err, ErrPasswordNUL) {
		t.Errorf("Add(NUL password) = %v, want ErrPasswordNUL", err)
	}
	if err := Add(path, "dave@example.test", "x", []string{"bad", "@", "ok@example.test"}); err == nil ||
		!strings.Contains(err.Error(), `"bad"`) || !strings.Contains(err.Error(), `"@"`) {
		t.Errorf("Add(bad patterns) = %v, want both bad patterns named", err)
	}
	if err := Add(path, "a b", "x", nil); err == nil {
		t.Error("Add(bad name) succeeded")
	}

	got, err := List(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "[alice@example.test:[alice@example.test] webapp:[noreply@example.test @example.org] carol@example.test:[*]]"
	if s := listString(got); s != want {
		t.Errorf("List = %s\nwant   %s", s, want)
	}

	// A comment added by hand survives edits.
	data, _ := os.ReadFile(path)
	os.WriteFile(path, append(data, "# keep me\n"...), 0o600)

	before := hashOf(t, path, "webapp")
	if err := SetPassword(path, "WEBAPP", "new-pw"); err != nil {
		t.Fatal(err)
	}
	after := hashOf(t, path, "webapp")
	if before == after {
		t.Error("SetPassword did not change the hash")
	}
	if err := SetPassword(path, "nobody", "x"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("SetPassword(unknown) = %v, want ErrNoSuchUser", err)
	}
	if err := SetPassword(path, "webapp", ""); !errors.Is(err, ErrEmptyPassword) {
		t.Errorf("SetPassword(empty) = %v, want ErrEmptyPassword", err)
	}
	if err := Delete(path, "alice@EXAMPLE.test"); err != nil {
		t.Fatal(err)
	}
	if err := Delete(path, "alice@example.test"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("Delete(twice) = %v, want ErrNoSuchUser", err)
	}
	got, err = List(path)
	if err != nil {
		t.Fatal(err)
	}
	want = "[webapp:[noreply@example.test @example.org] carol@example.test:[*]]"
	if s := listString(got); s != want {
		t.Errorf("List = %s\nwant   %s", s, want)
	}
	data, _ = os.ReadFile(path)
	if !strings.Contains(string(data), "# keep me\n") || !strings.HasPrefix(string(data), "# postern users") {
		t.Errorf("comments lost:\n%s", data)
	}
	if strings.Contains(string(data), "new-pw") || strings.Contains(string(data), "pw-carol") {
		t.Errorf("a password is stored in clear:\n%s", data)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	// No temporary file left behind.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the users file", len(entries))
	}
}

func TestAtomicWriteReplacesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	h := mustHash(t, "pw")
	if err := os.WriteFile(path, []byte("a@example.test:"+h+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SetPassword(path, "a@example.test", "pw2"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestEditRefusesInvalidFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	orig := []byte("broken line\n")
	os.WriteFile(path, orig, 0o600)
	var perr *ParseError
	if err := Add(path, "a@example.test", "pw", nil); !errors.As(err, &perr) {
		t.Errorf("Add = %v, want *ParseError", err)
	}
	if err := SetPassword(path, "a@example.test", "pw"); !errors.As(err, &perr) {
		t.Errorf("SetPassword = %v, want *ParseError", err)
	}
	if err := Delete(path, "a@example.test"); !errors.As(err, &perr) {
		t.Errorf("Delete = %v, want *ParseError", err)
	}
	if _, err := List(path); !errors.As(err, &perr) {
		t.Errorf("List = %v, want *ParseError", err)
	}
	if data, _ := os.ReadFile(path); string(data) != string(orig) {
		t.Errorf("invalid file modified: %q", data)
	}
}

func TestAddMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "users")
	if err := Add(path, "a@example.test", "pw", nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Add = %v, want ErrNotExist", err)
	}
}

func listString(us []UserInfo) string {
	var parts []string
	for _, u := range us {
		parts = append(parts, fmt.Sprintf("%s:%v", u.Name, u.Allow))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func hashOf(t *testing.T, path, name string) string {
	t.Helper()
	f, err := readUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	r := f.byKey[nameKey(name)]
	if r == nil {
		t.Fatalf("no user %q", name)
	}
	return r.hash
}

package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Errors of the users-file editing functions, for errors.Is.
var (
	ErrUserExists = errors.New("user already exists")
	ErrNoSuchUser = errors.New("no such user")
)

// maxReportedProblems caps a ParseError, so that pointing the server at a
// binary file by mistake produces a readable error rather than a screenful.
const maxReportedProblems = 50

// ParseError lists every problem found in a users or keys file, so that one
// run of the server or the CLI shows everything that needs fixing. It never
// quotes a password or key hash.
type ParseError struct {
	Path     string
	Problems []LineProblem
	// Omitted counts problems beyond the ones listed.
	Omitted int
}

// LineProblem is one problem on one line (numbered from 1).
type LineProblem struct {
	Line int
	Msg  string
}

// Error lists the problems one per line, as "path:line: problem", the form
// editors and grep understand.
func (e *ParseError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s:%d: %s", e.Path, p.Line, p.Msg)
	}
	if e.Omitted > 0 {
		fmt.Fprintf(&b, "\n%s: and %d more problems", e.Path, e.Omitted)
	}
	return b.String()
}

// UserInfo is what List returns about a user: never the hash.
type UserInfo struct {
	Name  string
	Allow []Pattern
}

// record is one user line of a users file.
type record struct {
	name  string // as written
	hash  string
	allow []Pattern
	line  int // index into usersFile.lines
	cost  int
}

// usersFile is a parsed users file, kept with its original lines so that
// edits preserve comments and layout.
type usersFile struct {
	path  string
	lines []string
	users []*record
	byKey map[string]*record
}

// parseUsers parses data, the content of the file at path (path is used only
// in error messages). Every line is examined and every problem reported.
func parseUsers(path string, data []byte) (*usersFile, error) {
	f := &usersFile{path: path, byKey: map[string]*record{}}
	lines, err := scanLines(path, data, func(i int, line string, problem problemFunc) {
		// Never quote the line: it holds a hash, or worse a password.
		fields := strings.SplitN(line, ":", 3)
		if len(fields) < 2 {
			problem("want NAME:HASH:ALLOW, found no ':'")
			return
		}
		rec := &record{name: fields[0], hash: fields[1], line: i}
		bad := false
		if err := ValidateName(rec.name); err != nil {
			problem("%v", err)
			bad = true
		}
		cost, err := checkHash(rec.hash)
		if err != nil {
			problem("%v", err)
			bad = true
		}
		rec.cost = cost
		allow := ""
		if len(fields) == 3 {
			allow = strings.TrimSpace(fields[2])
		}
		if allow == "" {
			// Absent or empty: the default, which for a non-address name
			// is nobody. Store logs a warning for such users.
			rec.allow, _ = DefaultAllow(rec.name)
		} else {
			for item := range strings.SplitSeq(allow, ",") {
				item = strings.TrimSpace(item)
				if item == "" {
					problem("empty sender pattern in allow list (doubled or trailing comma?)")
					bad = true
					continue
				}
				p, err := ParsePattern(item)
				if err != nil {
					problem("%v", err)
					bad = true
					continue
				}
				rec.allow = append(rec.allow, p)
			}
		}
		if bad {
			return
		}
		key := nameKey(rec.name)
		if prev, ok := f.byKey[key]; ok {
			problem("duplicate user %q (first on line %d; names ignore case)", rec.name, prev.line+1)
			return
		}
		f.byKey[key] = rec
		f.users = append(f.users, rec)
	})
	if err != nil {
		return nil, err
	}
	f.lines = lines
	return f, nil
}

// problemFunc reports one problem on the line being parsed.
type problemFunc func(format string, args ...any)

// scanLines splits data, the content of the file at path, into lines (LF;
// a trailing CR is dropped) and calls each for every line that is not
// blank or a '#' comment, with the line's index and its text without
// surrounding whitespace. It returns the lines as they are, so that edits
// keep comments and layout, and a *ParseError if each reported anything.
// It is the users file's syntax, kept apart from the meaning of a line so
// that other files of the same kind can share it.
func scanLines(path string, data []byte, each func(i int, line string, problem problemFunc)) ([]string, error) {
	text := strings.TrimSuffix(string(data), "\n")
	var lines []string
	if text != "" {
		lines = strings.Split(text, "\n")
	}
	perr := &ParseError{Path: path}
	for i, raw := range lines {
		raw = strings.TrimSuffix(raw, "\r")
		lines[i] = raw
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		each(i, line, func(format string, args ...any) {
			if len(perr.Problems) >= maxReportedProblems {
				perr.Omitted++
				return
			}
			perr.Problems = append(perr.Problems, LineProblem{Line: i + 1, Msg: fmt.Sprintf(format, args...)})
		})
	}
	if len(perr.Problems) > 0 {
		return nil, perr
	}
	return lines, nil
}

// readUsers reads and parses the file at path. A missing file is an empty
// set.
func readUsers(path string) (*usersFile, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &usersFile{path: path, byKey: map[string]*record{}}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseUsers(path, data)
}

// render formats a user line.
func render(name, hash string, allow []Pattern) string {
	s := make([]string, len(allow))
	for i, p := range allow {
		s[i] = p.String()
	}
	return name + ":" + hash + ":" + strings.Join(s, ",")
}

// bytes returns the file content, newline-terminated.
func (f *usersFile) bytes() []byte {
	if len(f.lines) == 0 {
		return nil
	}
	return []byte(strings.Join(f.lines, "\n") + "\n")
}

// fileHeader starts a users file that Add creates.
const fileHeader = `# postern users: NAME:HASH:ALLOW, one user per line.
# ALLOW is a comma-separated list of sender patterns: alice@example.test,
# @example.test (any address at that domain) or * (any sender).
# Edit with "postern user add|passwd|del"; see "go doc postern/auth".`

// Add adds a user to the users file at path, creating the file if needed.
// With an empty allow list the user gets DefaultAllow(name), which is an
// error for a name that is not an address. It fails with ErrUserExists if
// the name (compared without case) is taken. An invalid users file is not
// modified: its *ParseError is returned.
func Add(path, name, password string, allow []string) error {
	f, patterns, err := checkAdd(path, name, allow)
	if err != nil {
		return err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	if len(f.lines) == 0 {
		f.lines = strings.Split(fileHeader, "\n")
	}
	f.lines = append(f.lines, render(name, hash, patterns))
	return writeFileAtomic(path, f.bytes())
}

// CheckAdd reports the error Add would return for name and allow before
// any password is involved (a bad name or pattern, a taken name, an invalid
// users file), so that a command can refuse before asking for one.
func CheckAdd(path, name string, allow []string) error {
	_, _, err := checkAdd(path, name, allow)
	return err
}

func checkAdd(path, name string, allow []string) (*usersFile, []Pattern, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, err
	}
	patterns, err := parsePatterns(name, allow)
	if err != nil {
		return nil, nil, err
	}
	f, err := readUsers(path)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := f.byKey[nameKey(name)]; ok {
		return nil, nil, fmt.Errorf("%q: %w", name, ErrUserExists)
	}
	return f, patterns, nil
}

// CheckUser reports ErrNoSuchUser (or the users file's own error) unless
// name is in the users file at path: the check SetPassword makes, for a
// command to make before asking for the new password.
func CheckUser(path, name string) error {
	f, err := readUsers(path)
	if err != nil {
		return err
	}
	if _, ok := f.byKey[nameKey(name)]; !ok {
		return fmt.Errorf("%q: %w", name, ErrNoSuchUser)
	}
	return nil
}

// parsePatterns parses the allow list given to Add, reporting every bad
// pattern, or returns DefaultAllow(name) if it is empty.
func parsePatterns(name string, allow []string) ([]Pattern, error) {
	if len(allow) == 0 {
		return DefaultAllow(name)
	}
	var (
		out  []Pattern
		errs []error
	)
	for _, s := range allow {
		p, err := ParsePattern(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// SetPassword replaces the password of an existing user. The line keeps its
// place and its allow list; comments elsewhere are untouched.
func SetPassword(path, name, password string) error {
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	f, err := readUsers(path)
	if err != nil {
		return err
	}
	rec, ok := f.byKey[nameKey(name)]
	if !ok {
		return fmt.Errorf("%q: %w", name, ErrNoSuchUser)
	}
	f.lines[rec.line] = render(rec.name, hash, rec.allow)
	return writeFileAtomic(path, f.bytes())
}

// Delete removes a user from the users file.
func Delete(path, name string) error {
	f, err := readUsers(path)
	if err != nil {
		return err
	}
	rec, ok := f.byKey[nameKey(name)]
	if !ok {
		return fmt.Errorf("%q: %w", name, ErrNoSuchUser)
	}
	f.lines = append(f.lines[:rec.line], f.lines[rec.line+1:]...)
	return writeFileAtomic(path, f.bytes())
}

// List returns the users in file order, without hashes. A missing file is
// an empty list; an invalid one returns its *ParseError, so List doubles as
// the check behind `postern user list`.
func List(path string) ([]UserInfo, error) {
	f, err := readUsers(path)
	if err != nil {
		return nil, err
	}
	out := make([]UserInfo, len(f.users))
	for i, r := range f.users {
		out[i] = UserInfo{Name: r.name, Allow: append([]Pattern(nil), r.allow...)}
	}
	return out, nil
}

// writeFileAtomic replaces path with data so that a reader (the running
// server) sees the old file or the new one, never a mix, and a crash leaves
// one of the two: write a temporary file in the same directory (rename is
// atomic only within a filesystem), mode 0600, fsync it, rename it over
// path, then fsync the directory so the rename itself is durable.
//
// When path exists, its owner and group carry over to the new file: the CLI
// often runs as root while the server runs as its own user, and a root-owned
// 0600 file would lock the server out of its users (it would keep serving
// the last good set and log an error on every change).
//
// Two CLI processes editing at once can lose one edit (read-modify-write
// without a lock); edits are human-paced and the file stays consistent.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp already uses 0600; Chmod makes it independent of that.
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if err = copyOwner(tmp, path); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

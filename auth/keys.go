package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Application passwords are secrets that postern makes, one per
// application, so that a user can give each application its own password
// and revoke one without changing the others (`postern user key add|list|
// del`). A key works wherever its user's password does, with the same
// sender rights.
//
// A key looks like
//
//	pk_<ID>_<SECRET>
//
// where ID (13 characters, 64 random bits) names the key in listings, in
// logs and in `user key del`, and SECRET carries 160 random bits; both are
// lowercase base32 ([a-z2-7]), which survives shells, URLs, YAML and
// config files of every kind without quoting, unlike base64's '+', '/' or
// '-'. Because the key names its own ID, a key alone (without the user
// name) finds its record: see Store.AuthenticateKey.
//
// Keys are stored as SHA-256, not bcrypt: bcrypt's cost is there to slow
// down guessing passwords people chose, and 160 random bits cannot be
// guessed at any speed, so a fast hash loses nothing (cloud providers store
// their SMTP credentials the same way), and checking a key costs
// microseconds and no bcrypt slot.
const (
	keyPrefix    = "pk_"
	keyIDLen     = 13 // 8 random bytes in unpadded base32
	keyRandLen   = 32 // 20 random bytes
	keySecretLen = len(keyPrefix) + keyIDLen + 1 + keyRandLen
)

// MaxKeyLabelLen is the longest label of a key, in bytes.
const MaxKeyLabelLen = 100

// keyTimeFormat is how a key's creation time is written in the keys file:
// ISO 8601's basic format, without the ':' that separates fields.
const keyTimeFormat = "20060102T150405Z"

var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Errors of the keys-file functions, for errors.Is.
var (
	ErrNoSuchKey = errors.New("no such application password")
	ErrBadLabel  = errors.New("bad label")
)

// KeyInfo is what is shown of an application password: never the secret,
// never its hash.
type KeyInfo struct {
	ID      string
	User    string // as written in the users file when the key was made
	Label   string
	Created time.Time
}

// DefaultKeysFile is where the keys of the users file at usersFile live
// when the configuration does not say: next to it, with ".keys" appended.
func DefaultKeysFile(usersFile string) string { return usersFile + ".keys" }

// newKeySecret returns a new key and its ID.
func newKeySecret() (secret, id string) {
	var b [8 + 20]byte
	rand.Read(b[:]) // never fails (Go 1.24+)
	id = keyEncoding.EncodeToString(b[:8])
	return keyPrefix + id + "_" + keyEncoding.EncodeToString(b[8:]), id
}

// keyIDOf returns the ID that secret names, if secret has the form of a
// key; it says nothing about whether the key exists.
func keyIDOf(secret string) (id string, ok bool) {
	if len(secret) != keySecretLen || !strings.HasPrefix(secret, keyPrefix) || secret[len(keyPrefix)+keyIDLen] != '_' {
		return "", false
	}
	id = secret[len(keyPrefix) : len(keyPrefix)+keyIDLen]
	if !isKeyChars(id) || !isKeyChars(secret[keySecretLen-keyRandLen:]) {
		return "", false
	}
	return id, true
}

// isKeyChars reports whether s is made of key characters only.
func isKeyChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// validKeyID checks an ID as it appears in the keys file or `user key del`.
// The error does not quote it: in a line whose fields slipped, a hash may
// stand where the ID belongs.
func validKeyID(id string) error {
	if len(id) != keyIDLen || !isKeyChars(id) {
		return fmt.Errorf("key id is not %d characters of a-z and 2-7", keyIDLen)
	}
	return nil
}

// ValidateKeyLabel reports whether label may label a key: at most
// MaxKeyLabelLen bytes of UTF-8 without control characters (a label is
// one line of the keys file). Surrounding whitespace does not count and is
// dropped when the key is made.
func ValidateKeyLabel(label string) error {
	switch {
	case len(label) > MaxKeyLabelLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrBadLabel, MaxKeyLabelLen)
	case !utf8.ValidString(label):
		return fmt.Errorf("%w: not valid UTF-8", ErrBadLabel)
	case strings.ContainsFunc(label, unicode.IsControl):
		return fmt.Errorf("%w: contains a control character", ErrBadLabel)
	}
	return nil
}

// keyRecord is one key line of a keys file.
type keyRecord struct {
	KeyInfo
	hash [sha256.Size]byte
	line int // index into keysFile.lines
}

// keysFile is a parsed keys file, kept with its original lines so that
// edits preserve comments and layout.
type keysFile struct {
	lines []string
	keys  []*keyRecord
	byID  map[string]*keyRecord
}

// parseKeys parses data, the content of the keys file at path (path is used
// only in error messages). The format, one key per line, is
//
//	ID:USER:SHA256:CREATED:LABEL
//
// with the SHA-256 of the whole key in hex, CREATED as 20261206T101500Z
// (UTC) and LABEL free text up to the end of the line (it may hold ':').
// Comments, blank lines and line ends follow the users file's rules, and
// every problem is reported at once as "path:line: problem", never quoting
// a hash. Whether USER exists is the users file's business: a key of an
// unknown user is valid here and authenticates nobody.
func parseKeys(path string, data []byte) (*keysFile, error) {
	f := &keysFile{byID: map[string]*keyRecord{}}
	lines, err := scanLines(path, data, func(i int, line string, problem problemFunc) {
		// Never quote the line: it holds a hash.
		fields := strings.SplitN(line, ":", 5)
		if len(fields) < 4 {
			problem("want ID:USER:SHA256:CREATED:LABEL, found %d field(s)", len(fields))
			return
		}
		rec := &keyRecord{KeyInfo: KeyInfo{ID: fields[0], User: fields[1]}, line: i}
		bad := false
		if err := validKeyID(rec.ID); err != nil {
			problem("%v", err)
			bad = true
		}
		if err := ValidateName(rec.User); err != nil {
			problem("%v", err)
			bad = true
		}
		if h, err := hex.DecodeString(fields[2]); err != nil || len(h) != sha256.Size {
			problem("key hash is not %d hexadecimal digits (a SHA-256)", 2*sha256.Size)
			bad = true
		} else {
			copy(rec.hash[:], h)
		}
		created, err := time.Parse(keyTimeFormat, fields[3])
		if err != nil {
			problem("creation time is not YYYYMMDDTHHMMSSZ (UTC), such as 20261206T101500Z")
			bad = true
		}
		rec.Created = created
		if len(fields) == 5 {
			rec.Label = strings.TrimSpace(fields[4])
			if err := ValidateKeyLabel(rec.Label); err != nil {
				problem("%v", err)
				bad = true
			}
		}
		if bad {
			return
		}
		if prev, ok := f.byID[rec.ID]; ok {
			problem("duplicate key id %q (first on line %d)", rec.ID, prev.line+1)
			return
		}
		f.byID[rec.ID] = rec
		f.keys = append(f.keys, rec)
	})
	if err != nil {
		return nil, err
	}
	f.lines = lines
	return f, nil
}

// renderKey formats a key line.
func renderKey(r *keyRecord) string {
	line := r.ID + ":" + r.User + ":" + hex.EncodeToString(r.hash[:]) + ":" + r.Created.UTC().Format(keyTimeFormat)
	if r.Label != "" {
		line += ":" + r.Label
	}
	return line
}

// readKeys reads and parses the keys file at path. A missing file has no
// keys.
func readKeys(path string) (*keysFile, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &keysFile{byID: map[string]*keyRecord{}}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseKeys(path, data)
}

func (f *keysFile) bytes() []byte {
	if len(f.lines) == 0 {
		return nil
	}
	return []byte(strings.Join(f.lines, "\n") + "\n")
}

// keysFileHeader starts a keys file that AddKey creates.
const keysFileHeader = `# postern application passwords: ID:USER:SHA256:CREATED:LABEL, one per line.
# Each key is shown once, by "postern user key add", and kept here only as
# its SHA-256. Revoke one with "postern user key del USER ID".`

// keyClock is the time AddKey records (a seam for tests).
var keyClock = time.Now

// AddKey makes a new application password for the user name of the users
// file at usersPath, records it in the keys file at keysPath (created if
// needed, written atomically like the users file) and returns the key,
// which is shown once and stored nowhere, with its KeyInfo. The user must
// exist (ErrNoSuchUser); an invalid users or keys file is not touched: its
// *ParseError is returned.
func AddKey(keysPath, usersPath, name, label string) (string, KeyInfo, error) {
	label = strings.TrimSpace(label)
	if err := ValidateKeyLabel(label); err != nil {
		return "", KeyInfo{}, err
	}
	uf, err := readUsers(usersPath)
	if err != nil {
		return "", KeyInfo{}, err
	}
	u, ok := uf.byKey[nameKey(name)]
	if !ok {
		return "", KeyInfo{}, fmt.Errorf("%q: %w", name, ErrNoSuchUser)
	}
	kf, err := readKeys(keysPath)
	if err != nil {
		return "", KeyInfo{}, err
	}
	secret, id := newKeySecret()
	for kf.byID[id] != nil { // 64 random bits: never, but cheap to rule out
		secret, id = newKeySecret()
	}
	rec := &keyRecord{
		KeyInfo: KeyInfo{ID: id, User: u.name, Label: label, Created: keyClock().UTC().Truncate(time.Second)},
		hash:    sha256.Sum256([]byte(secret)),
	}
	if len(kf.lines) == 0 {
		kf.lines = strings.Split(keysFileHeader, "\n")
	}
	kf.lines = append(kf.lines, renderKey(rec))
	if err := writeFileAtomic(keysPath, kf.bytes()); err != nil {
		return "", KeyInfo{}, err
	}
	return secret, rec.KeyInfo, nil
}

// ListKeys returns the keys of the user name (compared as user names are),
// or of every user when name is "", in file order. A missing file has no
// keys; an invalid one returns its *ParseError, so ListKeys doubles as the
// check behind `postern config check`.
func ListKeys(keysPath, name string) ([]KeyInfo, error) {
	kf, err := readKeys(keysPath)
	if err != nil {
		return nil, err
	}
	var out []KeyInfo
	for _, r := range kf.keys {
		if name == "" || nameKey(r.User) == nameKey(name) {
			out = append(out, r.KeyInfo)
		}
	}
	return out, nil
}

// Orphans returns the keys among keys whose user is not among users (names
// compared as the Store compares them): they authenticate nobody, but a
// user added again under that name would get them back.
func Orphans(keys []KeyInfo, users []UserInfo) []KeyInfo {
	known := make(map[string]bool, len(users))
	for _, u := range users {
		known[nameKey(u.Name)] = true
	}
	var out []KeyInfo
	for _, k := range keys {
		if !known[nameKey(k.User)] {
			out = append(out, k)
		}
	}
	return out
}

// DeleteKey revokes the key id of the user name: a running server refuses
// it from its next authentication on. ErrNoSuchKey when the user has no
// such key.
func DeleteKey(keysPath, name, id string) error {
	if err := validKeyID(id); err != nil {
		return fmt.Errorf("%w: %v", ErrNoSuchKey, err)
	}
	_, err := deleteKeys(keysPath, func(r *keyRecord) bool {
		return r.ID == id && nameKey(r.User) == nameKey(name)
	})
	if errors.Is(err, errNothingDeleted) {
		return fmt.Errorf("%q of %q: %w", id, name, ErrNoSuchKey)
	}
	return err
}

// DeleteUserKeys revokes every key of the user name and returns how many
// there were; no key is not an error. `postern user del` calls it, so that
// a user added again later under the same name does not inherit old keys.
func DeleteUserKeys(keysPath, name string) (int, error) {
	n, err := deleteKeys(keysPath, func(r *keyRecord) bool { return nameKey(r.User) == nameKey(name) })
	if errors.Is(err, errNothingDeleted) {
		return 0, nil
	}
	return n, err
}

var errNothingDeleted = errors.New("nothing deleted")

// deleteKeys removes the keys for which match is true and rewrites the
// file, or returns errNothingDeleted without writing.
func deleteKeys(keysPath string, match func(*keyRecord) bool) (int, error) {
	kf, err := readKeys(keysPath)
	if err != nil {
		return 0, err
	}
	drop := map[int]bool{}
	for _, r := range kf.keys {
		if match(r) {
			drop[r.line] = true
		}
	}
	if len(drop) == 0 {
		return 0, errNothingDeleted
	}
	kept := kf.lines[:0]
	for i, l := range kf.lines {
		if !drop[i] {
			kept = append(kept, l)
		}
	}
	kf.lines = kept
	return len(drop), writeFileAtomic(keysPath, kf.bytes())
}

package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

func TestKeySecretForm(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		secret, id := newKeySecret()
		if len(secret) != keySecretLen || !strings.HasPrefix(secret, "pk_"+id+"_") {
			t.Fatalf("key %q (id %q): want pk_<id>_<random>, %d characters", secret, id, keySecretLen)
		}
		if got, ok := keyIDOf(secret); !ok || got != id {
			t.Fatalf("keyIDOf(%q) = %q, %v; want %q", secret, got, ok, id)
		}
		// At least 128 random bits: 160 in the secret part alone.
		b, err := keyEncoding.DecodeString(secret[len(secret)-keyRandLen:])
		if err != nil || len(b)*8 < 128 {
			t.Fatalf("random part of %q: %d bytes, %v", secret, len(b), err)
		}
		if seen[secret] || seen[id] {
			t.Fatalf("key or id repeated: %q", secret)
		}
		seen[secret], seen[id] = true, true
	}
	good, _ := newKeySecret()
	for _, bad := range []string{
		"",
		good[:len(good)-1],
		good + "a",
		"pK" + good[2:],
		"xk_" + good[3:],
		good[:16] + "-" + good[17:], // the separator
		strings.ToUpper(good),
		good[:20] + "1" + good[21:], // 1, 8, 9, 0 are not base32
		good[:5] + "8" + good[6:],
		good[:30] + "=" + good[31:],
		"a correct horse battery staple with exactly forty-nine chars!!",
	} {
		if id, ok := keyIDOf(bad); ok {
			t.Errorf("keyIDOf(%q) = %q: accepted", bad, id)
		}
	}
}

// tamper changes the last character of a key to another key character.
func tamper(secret string) string {
	last := byte('a')
	if secret[len(secret)-1] == 'a' {
		last = 'b'
	}
	return secret[:len(secret)-1] + string(last)
}

// TestParseKeysGolden parses testdata/keys/CASE/keys and compares the
// result with testdata/keys/CASE/want. Run with -update to regenerate.
func TestParseKeysGolden(t *testing.T) {
	golden(t, "testdata/keys", "keys", func(data []byte) string {
		f, err := parseKeys("keys", data)
		if err != nil {
			return "error:\n" + err.Error() + "\n"
		}
		var b strings.Builder
		for _, r := range f.keys {
			fmt.Fprintf(&b, "%s user=%s created=%s label=%q line=%d hash=%x...\n",
				r.ID, r.User, r.Created.Format(time.RFC3339), r.Label, r.line+1, r.hash[:4])
		}
		return b.String()
	})
}

// keysFixture is a users file with alice and bob and a keys file beside
// it, with the clock of AddKey fixed.
type keysFixture struct {
	users, keys string
}

func newKeysFixture(t *testing.T) keysFixture {
	t.Helper()
	dir := t.TempDir()
	f := keysFixture{users: filepath.Join(dir, "users")}
	f.keys = DefaultKeysFile(f.users)
	for _, u := range []string{alice, "bob@example.test"} {
		if err := Add(f.users, u, "pw", nil); err != nil {
			t.Fatal(err)
		}
	}
	old := keyClock
	keyClock = func() time.Time { return time.Date(2026, 12, 6, 10, 15, 30, 999, time.FixedZone("CET", 3600)) }
	t.Cleanup(func() { keyClock = old })
	return f
}

func (f keysFixture) add(t *testing.T, name, label string) (string, KeyInfo) {
	t.Helper()
	secret, info, err := AddKey(f.keys, f.users, name, label)
	if err != nil {
		t.Fatalf("AddKey(%s): %v", name, err)
	}
	return secret, info
}

func TestKeysEditRoundTrip(t *testing.T) {
	f := newKeysFixture(t)
	if got, err := ListKeys(f.keys, ""); err != nil || len(got) != 0 {
		t.Fatalf("ListKeys(missing file) = %v, %v; want none", got, err)
	}
	if _, _, err := AddKey(f.keys, f.users, "carol@example.test", ""); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("AddKey(unknown user) = %v, want ErrNoSuchUser", err)
	}
	for _, label := range []string{"two\nlines", "tab\there", strings.Repeat("x", MaxKeyLabelLen+1), "\xff"} {
		if _, _, err := AddKey(f.keys, f.users, alice, label); !errors.Is(err, ErrBadLabel) {
			t.Errorf("AddKey(label %q) = %v, want ErrBadLabel", label, err)
		}
	}
	if _, err := os.Stat(f.keys); err == nil {
		t.Fatal("refused AddKeys created the keys file")
	}

	s1, k1 := f.add(t, "ALICE@example.test", "  nightly backup: db1  ")
	s2, k2 := f.add(t, alice, "")
	_, k3 := f.add(t, "bob@example.test", "crm")
	created := time.Date(2026, 12, 6, 9, 15, 30, 0, time.UTC)
	if k1.User != alice || k1.Label != "nightly backup: db1" || !k1.Created.Equal(created) || k1.Created.Location() != time.UTC {
		t.Errorf("first key %+v: want the users file's spelling, a trimmed label, creation %v", k1, created)
	}
	if s1 == s2 || k1.ID == k2.ID {
		t.Error("two keys alike")
	}

	got, err := ListKeys(f.keys, "alice@EXAMPLE.test")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint([]KeyInfo{k1, k2}) {
		t.Errorf("ListKeys(alice) = %+v, want %+v", got, []KeyInfo{k1, k2})
	}
	if all, _ := ListKeys(f.keys, ""); len(all) != 3 {
		t.Errorf("ListKeys(all) = %d keys, want 3", len(all))
	}

	data, err := os.ReadFile(f.keys)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(s1))
	line := k1.ID + ":" + alice + ":" + hex.EncodeToString(sum[:]) + ":20261206T091530Z:nightly backup: db1\n"
	if !strings.Contains(string(data), line) || !strings.HasPrefix(string(data), "# postern application passwords") {
		t.Errorf("keys file lacks %q after its header:\n%s", line, data)
	}
	if strings.Contains(string(data), s1[len(s1)-keyRandLen:]) || strings.Contains(string(data), s2[len(s2)-keyRandLen:]) {
		t.Errorf("a key is stored in clear:\n%s", data)
	}
	if fi, _ := os.Stat(f.keys); fi.Mode().Perm() != 0o600 {
		t.Errorf("keys file mode %v, want 0600", fi.Mode().Perm())
	}
	// A comment added by hand survives edits.
	os.WriteFile(f.keys, append(data, "# keep me\n"...), 0o600)

	if err := DeleteKey(f.keys, alice, k3.ID); !errors.Is(err, ErrNoSuchKey) {
		t.Errorf("DeleteKey(alice, bob's key) = %v, want ErrNoSuchKey", err)
	}
	if err := DeleteKey(f.keys, alice, "not an id"); !errors.Is(err, ErrNoSuchKey) {
		t.Errorf("DeleteKey(bad id) = %v, want ErrNoSuchKey", err)
	}
	if err := DeleteKey(f.keys, "Alice@example.test", k1.ID); err != nil {
		t.Fatal(err)
	}
	if err := DeleteKey(f.keys, alice, k1.ID); !errors.Is(err, ErrNoSuchKey) {
		t.Errorf("DeleteKey(twice) = %v, want ErrNoSuchKey", err)
	}
	if got, _ := ListKeys(f.keys, alice); len(got) != 1 || got[0].ID != k2.ID {
		t.Errorf("after DeleteKey: %+v, want only %s", got, k2.ID)
	}
	if n, err := DeleteUserKeys(f.keys, "bob@example.test"); n != 1 || err != nil {
		t.Errorf("DeleteUserKeys(bob) = %d, %v; want 1", n, err)
	}
	if n, err := DeleteUserKeys(f.keys, "bob@example.test"); n != 0 || err != nil {
		t.Errorf("DeleteUserKeys(bob, again) = %d, %v; want 0, nil", n, err)
	}
	data, _ = os.ReadFile(f.keys)
	if !strings.Contains(string(data), "# keep me\n") || strings.Count(string(data), "\n"+k2.ID+":") != 1 || strings.Contains(string(data), k3.ID) {
		t.Errorf("keys file after deletions:\n%s", data)
	}
	entries, _ := os.ReadDir(filepath.Dir(f.keys))
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want the users and keys files only", len(entries))
	}
}

func TestKeysEditRefusesInvalidFile(t *testing.T) {
	f := newKeysFixture(t)
	orig := []byte("not a key line\n")
	os.WriteFile(f.keys, orig, 0o600)
	var perr *ParseError
	if _, _, err := AddKey(f.keys, f.users, alice, ""); !errors.As(err, &perr) {
		t.Errorf("AddKey = %v, want *ParseError", err)
	}
	if err := DeleteKey(f.keys, alice, "aaaaaaaaaaaaa"); !errors.As(err, &perr) {
		t.Errorf("DeleteKey = %v, want *ParseError", err)
	}
	if _, err := DeleteUserKeys(f.keys, alice); !errors.As(err, &perr) {
		t.Errorf("DeleteUserKeys = %v, want *ParseError", err)
	}
	if _, err := ListKeys(f.keys, ""); !errors.As(err, &perr) {
		t.Errorf("ListKeys = %v, want *ParseError", err)
	}
	if data, _ := os.ReadFile(f.keys); string(data) != string(orig) {
		t.Errorf("invalid file modified: %q", data)
	}
}

func TestKeysParseErrorNeverQuotesHashes(t *testing.T) {
	const secretHash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeX"
	_, err := parseKeys("keys", []byte(strings.Join([]string{
		"aaaaaaaaaaaaa:alice@example.test:" + secretHash + ":20261206T091530Z",
		"aaaaaaaaaaaab:alice@example.test:" + secretHash[:40] + ":20261206T091530Z",
		"aaaaaaaaaaaac " + secretHash,
	}, "\n")))
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), secretHash[:20]) {
		t.Errorf("error quotes a hash:\n%v", err)
	}
	var perr *ParseError
	if !errors.As(err, &perr) || len(perr.Problems) != 3 {
		t.Errorf("want 3 problems in a *ParseError, got %#v", err)
	}
}

// keysStore is a Store on the fixture, counting its full checks.
func (f keysFixture) store(t *testing.T) (*Store, *atomic.Int32) {
	t.Helper()
	s, _, _ := newTestStore(t, f.users)
	var n atomic.Int32
	s.compare = func(hash, pw []byte) error {
		n.Add(1)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	return s, &n
}

func TestAuthenticateWithKey(t *testing.T) {
	f := newKeysFixture(t)
	secret, info := f.add(t, alice, "app")
	bobs, _ := f.add(t, "bob@example.test", "")
	s, compares := f.store(t)
	ctx := context.Background()

	u, err := s.Authenticate(ctx, "Alice@Example.test", secret)
	if err != nil || u.Name != alice {
		t.Fatalf("Authenticate(alice, her key) = %v, %v", u, err)
	}
	if n := compares.Load(); n != 0 {
		t.Errorf("a key cost %d bcrypt checks, want 0", n)
	}
	// The same user, with the same rights, as the password gives.
	up, err := s.Authenticate(ctx, alice, "pw")
	if err != nil || up != u {
		t.Errorf("password and key give different users: %p %p (%v)", up, u, err)
	}
	// A bare key finds its user and its ID.
	u, id, err := s.AuthenticateKey(ctx, secret)
	if err != nil || u.Name != alice || id != info.ID {
		t.Errorf("AuthenticateKey(alice's key) = %v, %q, %v; want alice, %s", u, id, err, info.ID)
	}

	compares.Store(0)
	for _, c := range []struct{ name, pw string }{
		{"bob@example.test", secret}, // another user's key
		{alice, bobs},                // ditto
		{alice, tamper(secret)},      // one character off
		{alice, strings.Replace(secret, info.ID, "aaaaaaaaaaaaa", 1)}, // another id
		{"nobody@example.test", secret},
	} {
		if u, err := s.Authenticate(ctx, c.name, c.pw); !errors.Is(err, ErrInvalidCredentials) {
			t.Errorf("Authenticate(%s, %.20q...) = %v, %v; want ErrInvalidCredentials", c.name, c.pw, u, err)
		}
	}
	// A wrong key goes on to the full check, like a wrong password.
	if n := compares.Load(); n != 5 {
		t.Errorf("5 wrong keys cost %d full checks, want 5", n)
	}
	for _, bad := range []string{"", "pw", secret + "x", tamper(secret)} {
		if u, id, err := s.AuthenticateKey(ctx, bad); !errors.Is(err, ErrInvalidCredentials) || u != nil || id != "" {
			t.Errorf("AuthenticateKey(%q) = %v, %q, %v; want ErrInvalidCredentials", bad, u, id, err)
		}
	}
}

// TestKeyFailuresArePadded: a failed bare key takes FailureDelay, like a
// failed password.
func TestKeyFailuresArePadded(t *testing.T) {
	f := newKeysFixture(t)
	secret, _ := f.add(t, alice, "")
	s, ft, _ := newTestStore(t, f.users)
	if _, _, err := s.AuthenticateKey(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	if sl := ft.takeSleeps(); len(sl) != 0 {
		t.Errorf("a good key slept %v", sl)
	}
	for _, bad := range []string{"nonsense", tamper(secret)} {
		s.AuthenticateKey(context.Background(), bad)
		if sl := ft.takeSleeps(); len(sl) != 1 || sl[0] < DefaultFailureDelay {
			t.Errorf("failed key %q slept %v, want one FailureDelay", bad, sl)
		}
	}
}

// TestKeyRevokedAtOnce: the running Store sees a revoked key, a deleted
// user and a new key without a reload.
func TestKeyRevokedAtOnce(t *testing.T) {
	f := newKeysFixture(t)
	s, _ := f.store(t)
	ctx := context.Background()
	secret, info := f.add(t, alice, "") // after the Store started
	if _, err := s.Authenticate(ctx, alice, secret); err != nil {
		t.Fatalf("a key added while the server runs: %v", err)
	}
	other, _ := f.add(t, alice, "")
	if err := DeleteKey(f.keys, alice, info.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, alice, secret); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("revoked key: %v, want ErrInvalidCredentials", err)
	}
	if _, _, err := s.AuthenticateKey(ctx, secret); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("revoked bare key: %v, want ErrInvalidCredentials", err)
	}
	// Changing the password leaves the keys alone ...
	if err := SetPassword(f.users, alice, "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, alice, other); err != nil {
		t.Errorf("key after a password change: %v", err)
	}
	// ... deleting the user ends them.
	if err := Delete(f.users, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, alice, other); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("key of a deleted user: %v, want ErrInvalidCredentials", err)
	}
	if _, _, err := s.AuthenticateKey(ctx, other); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("bare key of a deleted user: %v, want ErrInvalidCredentials", err)
	}
}

// TestPasswordShapedLikeAKey: a user whose own password happens to have a
// key's form still logs in with it.
func TestPasswordShapedLikeAKey(t *testing.T) {
	f := newKeysFixture(t)
	pw, _ := newKeySecret() // never recorded as a key
	if err := SetPassword(f.users, alice, pw); err != nil {
		t.Fatal(err)
	}
	s, compares := f.store(t)
	if _, err := s.Authenticate(context.Background(), alice, pw); err != nil || compares.Load() != 1 {
		t.Errorf("Authenticate = %v after %d full checks; want success after 1", err, compares.Load())
	}
}

// TestKeysNeedNoSlot: with every password check slot taken, a key still
// gets in.
func TestKeysNeedNoSlot(t *testing.T) {
	f := newKeysFixture(t)
	secret, _ := f.add(t, alice, "")
	s, _, _ := newTestStore(t, f.users)
	h := holdChecks(s, 1)
	expireAtOnce(s)
	held := authAsync(context.Background(), s, "bob@example.test", "pw")
	<-h.entered
	if _, err := s.Authenticate(context.Background(), alice, secret); err != nil {
		t.Errorf("key with every slot taken: %v", err)
	}
	if _, _, err := s.AuthenticateKey(context.Background(), secret); err != nil {
		t.Errorf("bare key with every slot taken: %v", err)
	}
	if n := h.obs.nWaited.Load(); n != 0 {
		t.Errorf("keys waited for a slot %d times", n)
	}
	h.release <- struct{}{}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}

// TestKeysFileReload: a keys file that breaks keeps the last good keys in
// service and is reported once; an invalid one at start is an error.
func TestKeysFileReload(t *testing.T) {
	f := newKeysFixture(t)
	secret, _ := f.add(t, alice, "")
	s, _, logs := newTestStore(t, f.users)
	ctx := context.Background()
	data, _ := os.ReadFile(f.keys)
	if err := os.WriteFile(f.keys, append(data, "garbage\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Authenticate(ctx, alice, secret); err != nil {
			t.Fatalf("a broken keys file took the good keys out of service: %v", err)
		}
	}
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 1 || !strings.Contains(errs[0].ContextMap()["error"].(string), f.keys+":5:") {
		t.Errorf("want one error log naming %s:5 (the header is lines 1-3), got %v", f.keys, errs)
	}
	if err := s.Reload(); err == nil {
		t.Error("Reload with a broken keys file returned nil")
	}
	if _, err := NewStore(f.users, "", nil); err == nil {
		t.Error("NewStore with a broken keys file succeeded")
	}
	// An explicit keys file path is used instead of the default.
	other := filepath.Join(t.TempDir(), "elsewhere.keys")
	if err := os.Rename(f.keys, other); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(other, data, 0o600)
	s2, err := NewStore(f.users, other, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.FailureDelay = time.Nanosecond
	if _, err := s2.Authenticate(ctx, alice, secret); err != nil {
		t.Errorf("key from an explicit keys file: %v", err)
	}
	// Removed: no keys.
	os.Remove(other)
	if _, err := s2.Authenticate(ctx, alice, secret); !errors.Is(err, ErrInvalidCredentials) {
		t.Errorf("key after its file was removed: %v", err)
	}
}

func TestOrphans(t *testing.T) {
	keys := []KeyInfo{{ID: "a", User: "Alice@example.test"}, {ID: "b", User: "gone@example.test"}, {ID: "c", User: "ÜBER@example.test"}}
	users := []UserInfo{{Name: "alice@EXAMPLE.test"}, {Name: "über@example.test"}}
	var ids []string
	for _, k := range Orphans(keys, users) {
		ids = append(ids, k.ID)
	}
	// Names fold ASCII case only, as the Store compares them.
	if fmt.Sprint(ids) != "[b c]" {
		t.Errorf("Orphans = %v, want [b c]", ids)
	}
}

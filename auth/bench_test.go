package auth

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// BenchmarkAuthenticate compares what one successful AUTH costs: a full
// bcrypt check at the production cost, a cache hit and an application
// password. Run it briefly: a full check takes a quarter of a second
// (go test -run '^$' -bench Authenticate -benchtime 5x ./auth/).
func BenchmarkAuthenticate(b *testing.B) {
	dir := b.TempDir()
	users := filepath.Join(dir, "users")
	h, err := bcrypt.GenerateFromPassword([]byte("correct horse"), 12) // BcryptCost in production
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(users, []byte(alice+":"+string(h)+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	key, _, err := AddKey(DefaultKeysFile(users), users, alice, "bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, bc := range []struct {
		name     string
		ttl      int // hours
		password string
	}{
		{"bcrypt-12", 0, "correct horse"},
		{"cache_hit", 1, "correct horse"},
		{"app_password", 0, key},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := NewStore(users, "", nil)
			if err != nil {
				b.Fatal(err)
			}
			s.CacheTTL = time.Duration(bc.ttl) * time.Hour
			if _, err := s.Authenticate(ctx, alice, bc.password); err != nil { // fills the cache
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := s.Authenticate(ctx, alice, bc.password); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package auth

import (
	"os"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	// Real cost is for real passwords; tests hash dozens.
	BcryptCost = bcrypt.MinCost
	os.Exit(m.Run())
}

// mustHash returns a MinCost bcrypt hash of pw.
func mustHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

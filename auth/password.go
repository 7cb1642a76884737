package auth

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Passwords are stored as bcrypt hashes, not argon2id. argon2id resists GPU
// cracking better, but its strength is memory: at the usual 64 MiB per
// attempt, anyone who can open connections and send AUTH can make the
// server allocate that much per concurrent attempt, on a process whose job
// is to keep a mail queue alive. bcrypt costs 4 KiB and CPU time that the
// failure padding in Store.Authenticate already absorbs. bcrypt is also what
// `htpasswd -B` writes, so administrators can produce a hash with a tool
// they already have, and the hash carries its own cost, so raising
// BcryptCost later needs no format change.

// BcryptCost is the bcrypt cost of new hashes. 12 takes about a quarter of a
// second on current hardware. Tests, in this package and in others, lower it
// to bcrypt.MinCost; set it before any goroutine hashes.
var BcryptCost = 12

// MaxPasswordLen is the longest password, in bytes: bcrypt reads only the
// first 72 bytes of its input. Longer passwords are refused rather than
// silently truncated (which would let "the first 72 bytes plus anything" log
// in) or pre-hashed (which would need a second, non-standard hash format that
// htpasswd cannot produce). 72 bytes is far beyond any password a person
// types and is room enough for a generated 64-character one.
const MaxPasswordLen = 72

// Password errors, for errors.Is.
var (
	ErrEmptyPassword   = errors.New("empty password")
	ErrPasswordTooLong = fmt.Errorf("password longer than %d bytes (bcrypt's limit)", MaxPasswordLen)
	ErrPasswordNUL     = errors.New("password contains a NUL byte, which AUTH PLAIN cannot carry")
)

// ValidatePassword reports whether password may be set: not empty, at most
// MaxPasswordLen bytes, and without NUL (the AUTH PLAIN separator, so such a
// password could never be used). Strength policy is the caller's business.
func ValidatePassword(password string) error {
	switch {
	case password == "":
		return ErrEmptyPassword
	case len(password) > MaxPasswordLen:
		return ErrPasswordTooLong
	case strings.IndexByte(password, 0) >= 0:
		return ErrPasswordNUL
	}
	return nil
}

// hashPassword validates password and returns its bcrypt hash at BcryptCost.
func hashPassword(password string) (string, error) {
	if err := ValidatePassword(password); err != nil {
		return "", err
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), BcryptCost)
	if err != nil {
		return "", err
	}
	return string(h), nil
}

// bcryptHashLen is the length of every bcrypt hash: "$2b$" + 2-digit cost +
// "$" + 22 characters of salt + 31 of hash.
const bcryptHashLen = 60

// checkHash validates a stored hash without ever quoting it: a hash is
// secret-adjacent, and a "hash" that fails to parse may well be a plain text
// password pasted into the wrong field. It returns the hash's cost.
func checkHash(h string) (int, error) {
	if h == "" {
		return 0, errors.New("empty password hash")
	}
	if !strings.HasPrefix(h, "$2a$") && !strings.HasPrefix(h, "$2b$") && !strings.HasPrefix(h, "$2y$") {
		return 0, errors.New("password hash is not a bcrypt hash ($2a$, $2b$ or $2y$); set one with `postern user passwd` or `htpasswd -nB`")
	}
	if len(h) != bcryptHashLen {
		return 0, fmt.Errorf("bcrypt hash has %d characters, want %d", len(h), bcryptHashLen)
	}
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil {
		return 0, errors.New("bcrypt hash has an invalid cost")
	}
	for i := 7; i < len(h); i++ {
		c := h[i]
		if !isAlnum(c) && c != '.' && c != '/' {
			return 0, errors.New("bcrypt hash has a character outside its alphabet")
		}
	}
	return cost, nil
}

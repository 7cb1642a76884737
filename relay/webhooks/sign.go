package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// SecretPrefix starts a Standard Webhooks secret; the rest is the key,
// base64 (standard alphabet, padded).
const SecretPrefix = "whsec_"

// Key lengths accepted: the specification asks for 24 to 64 random bytes.
const (
	minKeyLen = 24
	maxKeyLen = 64
)

// ErrBadSecret is the error of ParseSecret.
var ErrBadSecret = errors.New("not a Standard Webhooks secret")

// Secret is an endpoint's signing key. Its String never shows the key, so
// that logging one by mistake leaks nothing.
type Secret struct{ key []byte }

func (Secret) String() string { return "whsec_…" }

// ParseSecret reads "whsec_" followed by the base64 of 24 to 64 bytes,
// the form the specification gives secrets in (and its libraries read).
// Surrounding white space (a file's final newline) is ignored.
func ParseSecret(s string) (Secret, error) {
	s = strings.TrimSpace(s)
	b64, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return Secret{}, fmt.Errorf("%w: it must start with %q (generate one with: printf 'whsec_%%s\\n' \"$(head -c 32 /dev/urandom | base64)\")", ErrBadSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return Secret{}, fmt.Errorf("%w: the part after %q is not base64", ErrBadSecret, SecretPrefix)
	}
	if len(key) < minKeyLen || len(key) > maxKeyLen {
		return Secret{}, fmt.Errorf("%w: the key is %d bytes, not %d to %d", ErrBadSecret, len(key), minKeyLen, maxKeyLen)
	}
	return Secret{key: key}, nil
}

// ReadSecretFile reads a secret from a file that holds it alone.
func ReadSecretFile(path string) (Secret, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Secret{}, err
	}
	return ParseSecret(string(data))
}

// Signature is the webhook-signature header for a message id sent at ts
// with body: "v1," and the base64 of HMAC-SHA256(key, "id.ts.body"), ts in
// unix seconds.
func (s Secret) Signature(id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, ts.Unix(), 10))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

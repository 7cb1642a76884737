package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Algorithm names, as they appear in the k= tag of a key record and in
// Key.Algorithm.
const (
	AlgRSA     = "rsa"
	AlgEd25519 = "ed25519"
)

// RSA key sizes. RFC 8301 §3.2: signers MUST use RSA keys of at least 1024
// bits and SHOULD use at least 2048 bits; verifiers MUST NOT accept
// signatures from keys under 1024 bits, so such a key is useless.
const (
	MinRSABits         = 1024
	RecommendedRSABits = 2048
	// MaxRSABits bounds GenerateKey: a larger key does not fit a TXT record
	// that most DNS hosting panels accept and makes every signature slow.
	MaxRSABits = 4096
)

// Errors that LoadKeys, ReadKeyFile and WriteKeyFile wrap; test with errors.Is.
var (
	// ErrKeyFormat: the file holds no private key we can use (not PEM, a
	// public key, a certificate, an encrypted key, an ECDSA key, ...).
	ErrKeyFormat = errors.New("not a usable private key")
	// ErrKeyTooSmall: an RSA key under MinRSABits.
	ErrKeyTooSmall = errors.New("RSA key too small")
	// ErrDuplicateKey: two entries share domain and selector, so they would
	// claim the same DNS record.
	ErrDuplicateKey = errors.New("duplicate domain and selector")
	// ErrBadEntry: a missing or malformed domain, selector or key_file.
	ErrBadEntry = errors.New("invalid key entry")
	// ErrKeyFileExists: WriteKeyFile never overwrites. It also matches
	// fs.ErrExist.
	ErrKeyFileExists = fmt.Errorf("key file already exists, refusing to overwrite: %w", fs.ErrExist)
)

// KeyConfig is one entry of the dkim.keys configuration list.
type KeyConfig struct {
	Domain   string // the d= domain; the key record lives at Selector._domainkey.Domain
	Selector string
	KeyFile  string // PEM: PKCS#8 (RSA or Ed25519) or PKCS#1 "RSA PRIVATE KEY"
	// SignSubdomains makes this key sign mail whose From domain is any
	// subdomain of Domain too (d= stays Domain; see Signer.Sign).
	SignSubdomains bool
}

// Key is a loaded signing key. Treat it as read-only once handed to NewSigner.
type Key struct {
	Domain         string // lower case, no trailing dot
	Selector       string // lower case
	SignSubdomains bool
	Signer         crypto.Signer // *rsa.PrivateKey or ed25519.PrivateKey
	Algorithm      string        // AlgRSA or AlgEd25519
	Bits           int           // RSA modulus size; 256 for Ed25519
	File           string        // where it was loaded from, for messages
}

// KeyError is a problem with one dkim.keys entry. It names the entry in the
// terms of the configuration file so the operator can find it.
type KeyError struct {
	Index    int
	Domain   string
	Selector string
	File     string
	Err      error
}

func (e *KeyError) Error() string {
	return fmt.Sprintf("dkim.keys[%d] (domain %q, selector %q, key_file %q): %v",
		e.Index, e.Domain, e.Selector, e.File, e.Err)
}

func (e *KeyError) Unwrap() error { return e.Err }

// LoadKeys loads every configured key. It does not stop at the first
// problem: errs holds one *KeyError per problem found (a missing, unreadable
// or malformed key file, an RSA key under MinRSABits, a duplicate
// domain+selector, an empty or malformed domain or selector), so one run of
// `postern config check` shows them all. warnings are problems that do not
// stop the server: an RSA key under RecommendedRSABits, a key file that group
// or others may access.
//
// keys holds the entries that loaded; the caller must not start signing
// with them when errs is not empty (a half-applied config would silently
// leave some domains unsigned).
func LoadKeys(cfgs []KeyConfig) (keys []*Key, warnings []string, errs []error) {
	type id struct{ domain, selector string }
	seen := map[id]int{}

	for i, c := range cfgs {
		fail := func(err error) {
			errs = append(errs, &KeyError{Index: i, Domain: c.Domain, Selector: c.Selector, File: c.KeyFile, Err: err})
		}
		entryOK := true

		domain, err := normalizeDomain(c.Domain)
		if err != nil {
			fail(fmt.Errorf("%w: domain: %v", ErrBadEntry, err))
			entryOK = false
		}
		selector := strings.ToLower(c.Selector)
		if err := checkSelector(selector); err != nil {
			fail(fmt.Errorf("%w: selector: %v", ErrBadEntry, err))
			entryOK = false
		}
		if entryOK {
			k := id{domain, selector}
			if j, dup := seen[k]; dup {
				fail(fmt.Errorf("%w: same as dkim.keys[%d]; each selector names one DNS record", ErrDuplicateKey, j))
				entryOK = false
			} else {
				seen[k] = i
			}
		}

		if c.KeyFile == "" {
			fail(fmt.Errorf("%w: key_file is empty", ErrBadEntry))
			continue
		}
		signer, err := ReadKeyFile(c.KeyFile)
		if err != nil {
			fail(err)
			continue
		}
		alg, bits := describe(signer)
		if alg == AlgRSA && bits < MinRSABits {
			fail(fmt.Errorf("%w: %d bits, need at least %d (RFC 8301 §3.2); generate a new one with `postern dkim keygen`",
				ErrKeyTooSmall, bits, MinRSABits))
			continue
		}
		where := fmt.Sprintf("dkim.keys[%d] (domain %q, selector %q, key_file %q)", i, c.Domain, c.Selector, c.KeyFile)
		if alg == AlgRSA && bits < RecommendedRSABits {
			warnings = append(warnings, fmt.Sprintf("%s: RSA key is %d bits; RFC 8301 recommends at least %d", where, bits, RecommendedRSABits))
		}
		if fi, err := os.Stat(c.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			warnings = append(warnings, fmt.Sprintf("%s: key file mode is %#o, group or others can access it; chmod 600 it", where, fi.Mode().Perm()))
		}
		if !entryOK {
			continue
		}
		keys = append(keys, &Key{
			Domain:         domain,
			Selector:       selector,
			SignSubdomains: c.SignSubdomains,
			Signer:         signer,
			Algorithm:      alg,
			Bits:           bits,
			File:           c.KeyFile,
		})
	}
	return keys, warnings, errs
}

// CheckDomain reports why d cannot be a signing domain (d=), as LoadKeys
// would, or nil.
func CheckDomain(d string) error {
	_, err := normalizeDomain(d)
	return err
}

// CheckSelector reports why s cannot be a selector (s=), as LoadKeys would,
// or nil.
func CheckSelector(s string) error { return checkSelector(s) }

// normalizeDomain returns the form used both for d= and for matching From
// domains: lower case, no trailing dot. Internationalized domains must be
// configured in their A-label (xn--) form; a From domain in U-labels
// (SMTPUTF8 mail) then does not match and the message is not signed.
// (Mapping U-labels needs golang.org/x/net/idna and so golang.org/x/text,
// which the module does not require yet.)
func normalizeDomain(d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	if d == "" {
		return "", errors.New("empty")
	}
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			return "", fmt.Errorf("%q: write an internationalized domain in its A-label (xn--) form", d)
		}
	}
	if err := checkLabels(d); err != nil {
		return "", err
	}
	if !strings.Contains(d, ".") {
		return "", fmt.Errorf("%q is not a fully qualified domain name", d)
	}
	return d, nil
}

// checkSelector: RFC 6376 §3.1, selector = sub-domain *("." sub-domain),
// i.e. dot-separated LDH labels. Underscore is tolerated since some DNS
// providers' generated selectors carry one.
func checkSelector(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	return checkLabels(s)
}

// checkLabels checks dot-separated labels of letters, digits, inner
// hyphens and underscores (lower case already).
func checkLabels(s string) error {
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q: empty or over-long label", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' ||
				c == '-' && i > 0 && i < len(label)-1
			if !ok {
				return fmt.Errorf("%q: want letters, digits and inner hyphens", s)
			}
		}
	}
	return nil
}

func describe(s crypto.Signer) (alg string, bits int) {
	switch k := s.(type) {
	case *rsa.PrivateKey:
		return AlgRSA, k.N.BitLen()
	case ed25519.PrivateKey:
		return AlgEd25519, 256
	}
	return "", 0
}

// ReadKeyFile reads one private key from a PEM file; see ParsePrivateKey.
func ReadKeyFile(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // already names the file and says missing / permission denied
	}
	return ParsePrivateKey(b)
}

// ParsePrivateKey parses the PEM formats that DKIM tools write:
//   - "PRIVATE KEY", PKCS#8 holding RSA or Ed25519: GenerateKey's output,
//     `openssl genpkey -algorithm ed25519`, OpenSSL 3's `genrsa`;
//   - "RSA PRIVATE KEY", PKCS#1: `opendkim-genkey`, older `openssl genrsa`.
//
// Other PEM blocks before the key (such as "EC PARAMETERS" or a comment-only
// preamble) are skipped; exactly one private key must be present. RSA keys
// of any size are returned (LoadKeys enforces the minimum so its error can
// say how big the key is).
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	var found []crypto.Signer
	var other []string
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			if len(block.Headers) > 0 {
				// Proc-Type: 4,ENCRYPTED; a server can't prompt for a passphrase.
				return nil, fmt.Errorf("%w: the RSA key is encrypted; store it unencrypted with mode 0600", ErrKeyFormat)
			}
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			other = append(other, block.Type)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: PEM block %q: %v", ErrKeyFormat, block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			found = append(found, k)
		case ed25519.PrivateKey:
			found = append(found, k)
		default:
			return nil, fmt.Errorf("%w: %T; DKIM signs with RSA (RFC 6376) or Ed25519 (RFC 8463) only", ErrKeyFormat, key)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		return nil, fmt.Errorf("%w: %d private keys in one file; put each in its own file with its own selector", ErrKeyFormat, len(found))
	case len(other) > 0:
		return nil, fmt.Errorf("%w: found PEM block(s) %s, want \"PRIVATE KEY\" or \"RSA PRIVATE KEY\"", ErrKeyFormat, quoteList(other))
	default:
		return nil, fmt.Errorf("%w: no PEM block found", ErrKeyFormat)
	}
}

// GenerateKey makes a new signing key. alg is AlgRSA or AlgEd25519. For RSA,
// bits 0 means RecommendedRSABits and must otherwise lie in
// [MinRSABits, MaxRSABits]; for Ed25519 bits is ignored.
//
// Ed25519 signatures are small and fast, but not every verifier checks
// them yet (2026): publish an RSA key beside an Ed25519 one.
func GenerateKey(alg string, bits int) (crypto.Signer, error) {
	switch strings.ToLower(alg) {
	case AlgRSA:
		if bits == 0 {
			bits = RecommendedRSABits
		}
		if bits < MinRSABits || bits > MaxRSABits {
			return nil, fmt.Errorf("dkim: RSA key size %d out of range [%d, %d]", bits, MinRSABits, MaxRSABits)
		}
		return rsa.GenerateKey(rand.Reader, bits)
	case AlgEd25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("dkim: unknown key algorithm %q, want %q or %q", alg, AlgRSA, AlgEd25519)
}

// MarshalPrivateKey encodes a key as a PEM "PRIVATE KEY" block (PKCS#8), the
// format OpenSSL, OpenDKIM and ParsePrivateKey all read.
func MarshalPrivateKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteKeyFile creates path with mode 0600 and writes data to it. It never
// replaces an existing file: overwriting a key whose record is published
// breaks every signature until DNS is updated. Then the error matches
// ErrKeyFileExists and fs.ErrExist.
func WriteKeyFile(path string, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("dkim: %s: %w", path, ErrKeyFileExists)
	}
	if err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path) // don't leave a truncated key that blocks the next attempt
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	// The key is worth an fsync: losing it after its record is published
	// means mail fails DKIM until a new key is made and published.
	if err = f.Sync(); err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	return nil
}

// DNSRecord returns the TXT record value that publishes k's public key:
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" (RFC 6376 §3.6.1, the
// form OpenDKIM writes) or "v=DKIM1; k=ed25519; p=<base64 of the 32 raw
// bytes>" (RFC 8463 §4.2). An RSA value is longer than 255 bytes: publish it
// as the strings SplitTXT returns.
func DNSRecord(k crypto.Signer) (string, error) {
	switch pub := k.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("dkim: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("dkim: %w: %T", ErrKeyFormat, k.Public())
}

// SplitTXT cuts a TXT record value into strings of at most 255 bytes, the
// limit of one character-string (RFC 1035 §3.3.14). Resolvers join them back
// with nothing in between (RFC 6376 §3.6.2.2), so the cut may fall anywhere.
func SplitTXT(value string) []string {
	const max = 255
	var out []string
	for len(value) > max {
		out = append(out, value[:max])
		value = value[max:]
	}
	return append(out, value)
}

// RecordName is the DNS name of a key record: "selector._domainkey.domain"
// (RFC 6376 §3.6.2.1).
func RecordName(selector, domain string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".")
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

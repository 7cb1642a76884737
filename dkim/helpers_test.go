package dkim

import (
	"bytes"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// Test keys live in testdata/keys, made by the real tools (see
// testdata/keys/README): generating RSA keys in every test would be slow
// under -race.

func mustReadKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	k, err := ReadKeyFile(filepath.Join("testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testKey(t testing.TB, domain, selector, file string, sub bool) *Key {
	t.Helper()
	s := mustReadKey(t, file)
	alg, bits := describe(s)
	return &Key{Domain: domain, Selector: selector, SignSubdomains: sub, Signer: s, Algorithm: alg, Bits: bits, File: file}
}

func rsaKey(t testing.TB) *Key {
	return testKey(t, "example.org", "rsa", "rsa2048-pkcs1.pem", false)
}

func edKey(t testing.TB) *Key {
	return testKey(t, "example.org", "ed", "ed25519-openssl.pem", false)
}

// testKeys is the key set of the golden cases: example.org signs with RSA
// and Ed25519, exactly; example.net signs its subdomains too.
func testKeys(t testing.TB) []*Key {
	return []*Key{
		rsaKey(t),
		edKey(t),
		testKey(t, "example.net", "sub", "ed25519-openssl.pem", true),
	}
}

// lookupFor serves the key records of keys, as DNS would.
func lookupFor(t testing.TB, keys []*Key) func(string) ([]string, error) {
	t.Helper()
	recs := map[string]string{}
	for _, k := range keys {
		v, err := DNSRecord(k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		recs[RecordName(k.Selector, k.Domain)] = v
	}
	return func(name string) ([]string, error) {
		v, ok := recs[name]
		if !ok {
			return nil, fmt.Errorf("no TXT record for %s", name)
		}
		// Resolvers hand over the joined strings of one record.
		return []string{strings.Join(SplitTXT(v), "")}, nil
	}
}

func verify(t testing.TB, keys []*Key, msg []byte) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{LookupTXT: lookupFor(t, keys)})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return vs
}

// crlf turns the LF line ends of a testdata file into CRLF, as in DATA.
func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

func readEML(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return crlf(b)
}

// signTags returns the tags of a DKIM-Signature field (unfolded).
func signTags(t testing.TB, field string) map[string]string {
	t.Helper()
	name, value, ok := strings.Cut(field, ":")
	if !ok || !strings.EqualFold(name, "DKIM-Signature") {
		t.Fatalf("not a DKIM-Signature field: %q", field)
	}
	value = strings.NewReplacer("\r\n", "", "\t", "", " ", "").Replace(value)
	tags := map[string]string{}
	for _, kv := range strings.Split(value, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			tags[k] = v
		}
	}
	return tags
}

// splitFields splits Sign's output into its header fields.
func splitFields(sigs []byte) []string {
	var out []string
	for _, line := range strings.SplitAfter(string(sigs), "\r\n") {
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1] += line
		} else {
			out = append(out, line)
		}
	}
	return out
}

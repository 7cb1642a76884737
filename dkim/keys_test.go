package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// copyKey copies a testdata key into dir with the given mode.
func copyKey(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask
		t.Fatal(err)
	}
	return p
}

func TestParsePrivateKeyFormats(t *testing.T) {
	for _, tc := range []struct {
		file    string
		alg     string
		bits    int
		wantErr string
	}{
		{"opendkim-genkey.private", AlgRSA, 2048, ""},
		{"rsa2048-pkcs1.pem", AlgRSA, 2048, ""},
		{"ed25519-openssl.pem", AlgEd25519, 256, ""},
		{"rsa512.pem", AlgRSA, 512, ""}, // parsed; LoadKeys refuses it
		{"ed25519-public.pem", "", 0, `"PUBLIC KEY"`},
		{"ecdsa-p256.pem", "", 0, `"EC PARAMETERS", "EC PRIVATE KEY"`},
		{"ecdsa-p256-pkcs8.pem", "", 0, "ecdsa.PrivateKey; DKIM signs with RSA"},
		{"cert.pem", "", 0, `"CERTIFICATE"`},
		{"README", "", 0, "no PEM block"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			k, err := ReadKeyFile(filepath.Join("testdata", "keys", tc.file))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrKeyFormat) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want ErrKeyFormat mentioning %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if alg, bits := describe(k); alg != tc.alg || bits != tc.bits {
				t.Errorf("got %s/%d, want %s/%d", alg, bits, tc.alg, tc.bits)
			}
		})
	}

	b, _ := os.ReadFile(filepath.Join("testdata", "keys", "ed25519-openssl.pem"))
	two := append(append([]byte{}, b...), b...)
	if _, err := ParsePrivateKey(two); !errors.Is(err, ErrKeyFormat) || !strings.Contains(err.Error(), "2 private keys") {
		t.Errorf("two keys in one file: %v", err)
	}
	enc := []byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n")
	if _, err := ParsePrivateKey(enc); !errors.Is(err, ErrKeyFormat) || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("encrypted key: %v", err)
	}
	garbage := []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	if _, err := ParsePrivateKey(garbage); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("garbage PKCS#8: %v", err)
	}
}

// TestLoadKeys: every kind of problem in one config, all reported at once,
// each naming its entry; the good entries load; warnings for the weak and
// the exposed.
func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	rsaFile := copyKey(t, dir, "rsa2048-pkcs1.pem", 0o600)
	edFile := copyKey(t, dir, "ed25519-openssl.pem", 0o644)
	smallFile := copyKey(t, dir, "rsa512.pem", 0o600)
	pubFile := copyKey(t, dir, "ed25519-public.pem", 0o600)
	garbageFile := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbageFile, []byte("not a key\n"), 0o600)
	k1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	pem1024, _ := MarshalPrivateKey(k1024)
	file1024 := filepath.Join(dir, "rsa1024.pem")
	if err := WriteKeyFile(file1024, pem1024); err != nil {
		t.Fatal(err)
	}

	cfgs := []KeyConfig{
		0:  {Domain: "Example.ORG.", Selector: "RSA", KeyFile: rsaFile},
		1:  {Domain: "example.org", Selector: "ed", KeyFile: edFile, SignSubdomains: true},
		2:  {Domain: "example.net", Selector: "old", KeyFile: file1024},
		3:  {Domain: "example.com", Selector: "gone", KeyFile: filepath.Join(dir, "missing.pem")},
		4:  {Domain: "example.com", Selector: "junk", KeyFile: garbageFile},
		5:  {Domain: "example.com", Selector: "small", KeyFile: smallFile},
		6:  {Domain: "example.org", Selector: "rsa", KeyFile: rsaFile},
		7:  {Domain: "example.com", Selector: "pub", KeyFile: pubFile},
		8:  {Domain: "", Selector: "x", KeyFile: rsaFile},
		9:  {Domain: "example.com", Selector: "bad selector", KeyFile: rsaFile},
		10: {Domain: "example.com", Selector: "nofile"},
		11: {Domain: "localhost", Selector: "s", KeyFile: rsaFile},
		12: {Domain: "bücher.example", Selector: "s", KeyFile: rsaFile},
	}
	keys, warnings, errs := LoadKeys(cfgs)

	wantErrs := []struct {
		index    int
		sentinel error
		text     string
	}{
		{3, fs.ErrNotExist, "missing.pem"},
		{4, ErrKeyFormat, "no PEM block"},
		{5, ErrKeyTooSmall, "512 bits"},
		{6, ErrDuplicateKey, "dkim.keys[0]"},
		{7, ErrKeyFormat, "PUBLIC KEY"},
		{8, ErrBadEntry, "domain: empty"},
		{9, ErrBadEntry, "selector"},
		{10, ErrBadEntry, "key_file is empty"},
		{11, ErrBadEntry, "not a fully qualified"},
		{12, ErrBadEntry, "A-label"},
	}
	if len(errs) != len(wantErrs) {
		t.Errorf("got %d errors, want %d:", len(errs), len(wantErrs))
		for _, e := range errs {
			t.Log(e)
		}
	}
	for i, w := range wantErrs {
		if i >= len(errs) {
			break
		}
		var ke *KeyError
		if !errors.As(errs[i], &ke) || ke.Index != w.index {
			t.Errorf("error %d: %v, want one for dkim.keys[%d]", i, errs[i], w.index)
			continue
		}
		msg := errs[i].Error()
		c := cfgs[w.index]
		for _, part := range []string{"dkim.keys[" + strconv.Itoa(w.index) + "]", c.Domain, c.Selector, c.KeyFile, w.text} {
			if !strings.Contains(msg, part) {
				t.Errorf("error %q does not mention %q", msg, part)
			}
		}
		if !errors.Is(errs[i], w.sentinel) {
			t.Errorf("error %q is not %v", msg, w.sentinel)
		}
	}

	if len(keys) != 3 {
		t.Fatalf("loaded %d keys, want 3", len(keys))
	}
	if k := keys[0]; k.Domain != "example.org" || k.Selector != "rsa" || k.Algorithm != AlgRSA || k.Bits != 2048 {
		t.Errorf("key 0: %+v", k)
	}
	if k := keys[1]; k.Algorithm != AlgEd25519 || !k.SignSubdomains || k.Bits != 256 {
		t.Errorf("key 1: %+v", k)
	}
	if k := keys[2]; k.Bits != 1024 {
		t.Errorf("key 2: %+v", k)
	}

	wantWarn := []string{"dkim.keys[1]", "0644", "dkim.keys[2]", "1024 bits"}
	all := strings.Join(warnings, "\n")
	for _, w := range wantWarn {
		if !strings.Contains(all, w) {
			t.Errorf("warnings do not mention %q:\n%s", w, all)
		}
	}
	if len(warnings) != 2 {
		t.Errorf("got %d warnings, want 2:\n%s", len(warnings), all)
	}

	if k, w, e := LoadKeys(nil); k != nil || w != nil || e != nil {
		t.Errorf("no config: %v %v %v", k, w, e)
	}
}

func TestGenerateMarshalWrite(t *testing.T) {
	dir := t.TempDir()
	for _, alg := range []string{AlgEd25519, AlgRSA} {
		bits := 0
		if alg == AlgRSA {
			bits = 1024 // fast; the default (2048) is tested by size only
		}
		k, err := GenerateKey(alg, bits)
		if err != nil {
			t.Fatal(err)
		}
		pem, err := MarshalPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, alg+".pem")
		if err := WriteKeyFile(path, pem); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %#o, want 0600", path, fi.Mode().Perm())
		}
		back, err := ReadKeyFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Errorf("%s: key read back differs", alg)
		}

		// Never overwrite, and leave the old file alone.
		err = WriteKeyFile(path, []byte("other"))
		if !errors.Is(err, ErrKeyFileExists) || !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("overwrite: got %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != string(pem) {
			t.Errorf("existing key file was changed")
		}
	}

	for _, bad := range []struct {
		alg  string
		bits int
	}{{AlgRSA, 512}, {AlgRSA, 8192}, {"dsa", 0}} {
		if _, err := GenerateKey(bad.alg, bad.bits); err == nil {
			t.Errorf("GenerateKey(%s, %d) succeeded", bad.alg, bad.bits)
		}
	}
	if err := WriteKeyFile(filepath.Join(dir, "no", "such", "dir"), []byte("x")); err == nil || errors.Is(err, ErrKeyFileExists) {
		t.Errorf("write into missing dir: %v", err)
	}
}

// TestDNSRecord: the record parses back to the key, checked by verifying a
// signature with the public key taken from the record.
func TestDNSRecord(t *testing.T) {
	msg := []byte("a message")
	digest := sha256.Sum256(msg)
	for _, file := range []string{"rsa2048-pkcs1.pem", "ed25519-openssl.pem", "opendkim-genkey.private"} {
		t.Run(file, func(t *testing.T) {
			k := mustReadKey(t, file)
			rec, err := DNSRecord(k)
			if err != nil {
				t.Fatal(err)
			}
			tags := map[string]string{}
			for _, kv := range strings.Split(rec, ";") {
				n, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
				tags[n] = v
			}
			if tags["v"] != "DKIM1" {
				t.Errorf("v=%q", tags["v"])
			}
			p, err := base64.StdEncoding.DecodeString(tags["p"])
			if err != nil {
				t.Fatal(err)
			}
			switch tags["k"] {
			case "rsa":
				pub, err := x509.ParsePKIXPublicKey(p)
				if err != nil {
					t.Fatal(err)
				}
				sig, _ := k.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err := rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig); err != nil {
					t.Error(err)
				}
			case "ed25519":
				if len(p) != ed25519.PublicKeySize {
					t.Fatalf("p= is %d bytes, want 32 (RFC 8463 §4.2)", len(p))
				}
				sig, _ := k.Sign(nil, msg, crypto.Hash(0))
				if !ed25519.Verify(ed25519.PublicKey(p), msg, sig) {
					t.Error("signature does not verify with the record's key")
				}
			default:
				t.Fatalf("k=%q", tags["k"])
			}

			// Same key material as OpenDKIM publishes for its own key.
			if file == "opendkim-genkey.private" {
				txt, _ := os.ReadFile(filepath.Join("testdata", "keys", "opendkim-genkey.txt"))
				var joined strings.Builder
				for _, part := range strings.Split(string(txt), `"`)[1:] {
					if strings.HasPrefix(part, "v=") || strings.HasPrefix(part, "p=") || !strings.ContainsAny(part, "\t()") {
						joined.WriteString(part)
					}
				}
				if !strings.Contains(joined.String(), "p="+tags["p"]) {
					t.Errorf("p= differs from opendkim-genkey's record:\n%s\n%s", joined.String(), tags["p"])
				}
			}
		})
	}
}

func TestSplitTXT(t *testing.T) {
	for _, n := range []int{0, 1, 254, 255, 256, 410, 510, 765, 766} {
		v := strings.Repeat("a", n)
		parts := SplitTXT(v)
		if strings.Join(parts, "") != v {
			t.Errorf("%d: parts don't join back", n)
		}
		for _, p := range parts {
			if len(p) > 255 {
				t.Errorf("%d: part of %d bytes", n, len(p))
			}
		}
		if want := max(1, (n+254)/255); len(parts) != want {
			t.Errorf("%d: %d parts, want %d", n, len(parts), want)
		}
	}
}

func TestRecordName(t *testing.T) {
	if got := RecordName("s2026", "example.org."); got != "s2026._domainkey.example.org" {
		t.Errorf("got %q", got)
	}
}

// FuzzParsePrivateKey: no input makes the parser panic.
func FuzzParsePrivateKey(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "keys", "*"))
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParsePrivateKey(b)
		if err == nil {
			if alg, _ := describe(k); alg == "" {
				t.Fatalf("accepted %T", k)
			}
		}
	})
}

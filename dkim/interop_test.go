package dkim

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// dkimpyVerify checks every signature with dkimpy (Debian's python3-dkim,
// with python3-nacl for Ed25519), a verifier independent of go-msgauth. Its
// dnsfunc serves the test records instead of real DNS.
const dkimpyVerify = `
import sys, json, dkim
recs = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    return recs.get(name.decode().rstrip("."), "").encode()
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = msg.count(b"DKIM-Signature:")
def check(i):
    try:
        return d.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        return False
ok = [check(i) for i in range(n)]
print(" ".join("pass" if x else "fail" for x in ok))
`

// dkimpy returns a function that verifies a signed message with dkimpy
// (Debian's python3-dkim, with python3-nacl for Ed25519), serving the
// records of keys instead of DNS, and gives "pass" or "fail" per
// signature. It fails the test where /usr/bin/python3 lacks the dkim or
// nacl module: `make test` installs them.
func dkimpy(t *testing.T, keys []*Key) func(t *testing.T, signed []byte) []string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dkim, nacl").Run(); err != nil {
		t.Fatal("dkimpy not installed: run `make deps` (apt-get install python3-dkim python3-nacl)")
	}
	recs := map[string]string{}
	for _, k := range keys {
		v, _ := DNSRecord(k.Signer)
		recs[RecordName(k.Selector, k.Domain)] = v
	}
	recJSON, _ := json.Marshal(recs)
	return func(t *testing.T, signed []byte) []string {
		t.Helper()
		cmd := exec.Command(py, "-c", dkimpyVerify, string(recJSON))
		cmd.Stdin = bytes.NewReader(signed)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(out))
	}
}

// TestInteropDkimpy: the golden messages, signed, verify with dkimpy too.
// It fails where /usr/bin/python3 lacks the dkim or nacl module: `make
// test` installs them (python3-dkim, python3-nacl).
func TestInteropDkimpy(t *testing.T) {
	keys := testKeys(t)
	run := dkimpy(t, keys)

	// Negative control, so a dkimpy that passes everything can't hide.
	sigs := sign(t, keys, []byte(baseMsg))
	tampered := append(sigs, strings.Replace(baseMsg, "Bob", "Eve", 1)...)
	if got := strings.Join(run(t, tampered), " "); got != "fail fail" {
		t.Fatalf("tampered message: dkimpy says %q, want \"fail fail\"", got)
	}

	ins, _ := filepath.Glob(filepath.Join("testdata", "*", "input.eml"))
	for _, in := range ins {
		t.Run(filepath.Base(filepath.Dir(in)), func(t *testing.T) {
			msg := readEML(t, in)
			sigs := sign(t, keys, msg)
			if sigs == nil {
				return // a golden case that is meant to stay unsigned
			}
			got := run(t, append(sigs, msg...))
			if len(got) != len(splitFields(sigs)) {
				t.Fatalf("dkimpy saw %d signatures, want %d", len(got), len(splitFields(sigs)))
			}
			for i, r := range got {
				if r != "pass" {
					t.Errorf("signature %d: dkimpy says %s", i, r)
				}
			}
		})
	}
}

// TestOneClickUnsubscribeSigned: a message with RFC 8058's one-click pair
// verifies with dkimpy, and changing either field, or adding a second
// List-Unsubscribe that a receiver might POST to instead, breaks every
// signature: both are covered, as RFC 8058 §4 requires before a receiver
// may offer one-click unsubscription.
func TestOneClickUnsubscribeSigned(t *testing.T) {
	keys := []*Key{rsaKey(t), edKey(t)}
	run := dkimpy(t, keys)
	msg := string(readEML(t, filepath.Join("testdata", "one-click-unsubscribe", "input.eml")))
	signed := string(sign(t, keys, []byte(msg))) + msg
	for _, f := range splitFields([]byte(signed[:len(signed)-len(msg)])) {
		h := strings.Split(signTags(t, f)["h"], ":")
		for _, name := range []string{"List-Unsubscribe", "List-Unsubscribe-Post"} {
			if n := countOf(h, name); n != 2 {
				t.Errorf("h= lists %s %d times, want 2 (once, and once more: oversigned): %v", name, n, h)
			}
		}
	}
	for _, tc := range []struct {
		name, msg, want string
	}{
		{"as signed", signed, "pass pass"},
		{"List-Unsubscribe changed", strings.Replace(signed, "u=bob", "u=eve", 1), "fail fail"},
		{"List-Unsubscribe-Post changed", strings.Replace(signed, "List-Unsubscribe=One-Click", "List-Unsubscribe=Two-Clicks", 1), "fail fail"},
		{"List-Unsubscribe-Post removed", strings.Replace(signed, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", "", 1), "fail fail"},
		{"a second List-Unsubscribe added", strings.Replace(signed, "\r\nMIME-Version: 1.0\r\n", "\r\nList-Unsubscribe: <https://attacker.example/x>\r\nMIME-Version: 1.0\r\n", 1), "fail fail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(run(t, []byte(tc.msg)), " "); got != tc.want {
				t.Errorf("dkimpy says %q, want %q", got, tc.want)
			}
		})
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if strings.EqualFold(x, s) {
			n++
		}
	}
	return n
}

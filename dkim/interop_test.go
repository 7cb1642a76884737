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

// TestInteropDkimpy: the golden messages, signed, verify with dkimpy too.
// It fails where /usr/bin/python3 lacks the dkim or nacl module: `make
// test` installs them (python3-dkim, python3-nacl).
func TestInteropDkimpy(t *testing.T) {
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import dkim, nacl").Run(); err != nil {
		t.Fatal("dkimpy not installed: run `make deps` (apt-get install python3-dkim python3-nacl)")
	}
	keys := testKeys(t)
	recs := map[string]string{}
	for _, k := range keys {
		v, _ := DNSRecord(k.Signer)
		recs[RecordName(k.Selector, k.Domain)] = v
	}
	recJSON, _ := json.Marshal(recs)

	run := func(t *testing.T, signed []byte) []string {
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

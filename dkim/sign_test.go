package dkim

import (
	"bytes"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/queue/message"
)

var update = flag.Bool("update", false, "rewrite the golden want-headers.txt files")

const baseMsg = "From: Alice <alice@example.org>\r\n" +
	"To: bob@example.com\r\n" +
	"Subject: hello\r\n" +
	"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n" +
	"Message-ID: <x@example.org>\r\n" +
	"\r\n" +
	"Hello Bob.\r\n"

func sign(t testing.TB, keys []*Key, msg []byte) []byte {
	t.Helper()
	sigs, err := NewSigner(keys).Sign(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return sigs
}

// TestSignVerify: what Sign makes, go-msgauth verifies, for each algorithm
// and for both at once.
func TestSignVerify(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys func(testing.TB) []*Key
	}{
		{"rsa2048", func(t testing.TB) []*Key { return []*Key{rsaKey(t)} }},
		{"ed25519", func(t testing.TB) []*Key { return []*Key{edKey(t)} }},
		{"rsa2048+ed25519", func(t testing.TB) []*Key { return []*Key{rsaKey(t), edKey(t)} }},
		{"opendkim-genkey key", func(t testing.TB) []*Key {
			return []*Key{testKey(t, "example.org", "od", "opendkim-genkey.private", false)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := tc.keys(t)
			sigs := sign(t, keys, []byte(baseMsg))
			fields := splitFields(sigs)
			if len(fields) != len(keys) {
				t.Fatalf("got %d signatures, want %d:\n%s", len(fields), len(keys), sigs)
			}
			for i, f := range fields {
				tags := signTags(t, f)
				want := map[string]string{
					"v": "1", "a": keys[i].Algorithm + "-sha256", "c": "relaxed/relaxed",
					"d": keys[i].Domain, "s": keys[i].Selector,
				}
				for k, v := range want {
					if tags[k] != v {
						t.Errorf("signature %d: %s=%q, want %q", i, k, tags[k], v)
					}
				}
				if tags["t"] == "" {
					t.Errorf("signature %d: no t= tag", i)
				}
				if _, ok := tags["l"]; ok {
					t.Errorf("signature %d: has l=", i)
				}
			}
			vs := verify(t, keys, append(sigs, baseMsg...))
			if len(vs) != len(keys) {
				t.Fatalf("%d verifications, want %d", len(vs), len(keys))
			}
			for _, v := range vs {
				if v.Err != nil {
					t.Errorf("d=%s: %v", v.Domain, v.Err)
				}
			}
		})
	}
}

// TestGolden signs each testdata/<case>/input.eml with testKeys and
// compares d=, s= and h= of every signature with want-headers.txt (one line
// per signature; empty when the message stays unsigned). Every signature
// must also verify. Run with -update to rewrite the files.
func TestGolden(t *testing.T) {
	keys := testKeys(t)
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "input.eml"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			msg := readEML(t, in)
			sigs := sign(t, keys, msg)
			var got strings.Builder
			for _, f := range splitFields(sigs) {
				tags := signTags(t, f)
				fmt.Fprintf(&got, "d=%s s=%s h=%s\n", tags["d"], tags["s"], tags["h"])
			}
			wantFile := filepath.Join(dir, "want-headers.txt")
			if *update {
				if err := os.WriteFile(wantFile, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("signatures differ from %s:\ngot:\n%swant:\n%s", wantFile, got.String(), want)
			}
			signed := append(sigs, msg...)
			if !bytes.Contains(msg, []byte("\r\n\r\n")) {
				// No body, so no empty line: legal (RFC 5322 §3.5) and the
				// signature holds (an empty body hashes the same), but
				// go-msgauth's verifier cannot read such a header.
				signed = append(signed, "\r\n"...)
			}
			for _, v := range verify(t, keys, signed) {
				if v.Err != nil {
					t.Errorf("d=%s: %v", v.Domain, v.Err)
				}
			}
		})
	}
}

// TestVerifyAfterChange: a valid signed baseline, then one change per
// subtest. Changes to signed content must fail verification; changes
// relaxed canonicalization ignores, or to unsigned fields, must not.
func TestVerifyAfterChange(t *testing.T) {
	keys := []*Key{edKey(t)}
	sigs := string(sign(t, keys, []byte(baseMsg)))

	for _, tc := range []struct {
		name    string
		change  func(string) string
		wantErr string // "" means it must still verify
	}{
		{"baseline", func(m string) string { return m }, ""},
		{"subject changed", func(m string) string {
			return strings.Replace(m, "Subject: hello", "Subject: hellO", 1)
		}, "signature did not verify"},
		{"body changed", func(m string) string {
			return strings.Replace(m, "Hello Bob.", "Hello Eve.", 1)
		}, "body hash did not verify"},
		{"body appended", func(m string) string { return m + "P.S. wire money\r\n" }, "body hash did not verify"},
		{"second From added on top", func(m string) string {
			return "From: ceo@example.org\r\n" + m
		}, "signature did not verify"},
		{"second Subject added", func(m string) string {
			return strings.Replace(m, "\r\n\r\n", "\r\nSubject: urgent\r\n\r\n", 1)
		}, "signature did not verify"},
		{"To removed", func(m string) string {
			return strings.Replace(m, "To: bob@example.com\r\n", "", 1)
		}, "signature did not verify"},
		{"signature's d= changed", func(m string) string {
			return strings.Replace(m, "d=example.org", "d=example.com", 1)
		}, "no TXT record"},
		// Relaxed canonicalization: case of names, whitespace, folding.
		{"header whitespace and case changed", func(m string) string {
			return strings.Replace(m, "Subject: hello", "SUBJECT:   hello  ", 1)
		}, ""},
		{"Received added by a later hop", func(m string) string {
			return "Received: from relay by mx; Mon, 23 Nov 2026 10:00:01 +0000\r\n" + m
		}, ""},
		{"Cc added where there was none", func(m string) string {
			// Only present fields are signed (see signedFields).
			return strings.Replace(m, "\r\n\r\n", "\r\nCc: eve@example.com\r\n\r\n", 1)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := verify(t, keys, []byte(tc.change(sigs+baseMsg)))
			if len(vs) != 1 {
				t.Fatalf("%d verifications", len(vs))
			}
			err := vs[0].Err
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("want valid, got %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestHeaderKeys(t *testing.T) {
	for _, tc := range []struct{ header, want string }{
		{"From: a@example.org\r\n", "From:From"},
		{"From: a@example.org\r\nX-Foo: 1\r\nSubject: s\r\n", "From:From:Subject:Subject"},
		{"from: a@example.org\r\nFROM: b@example.org\r\n", "From:From:From"},
		{"From: a@example.org\r\nReply-To: r@example.org\r\nReply-To: s@example.org\r\n", "From:From:Reply-To:Reply-To"},
		{"Message-Id: <1@x>\r\nFrom: a@example.org\r\nContent-Type: text/plain\r\n", "From:From:Message-ID:Message-ID:Content-Type"},
		{"From : a@example.org\r\nTo: b@example.com\r\nCc: c@example.com\r\n", "From:From:To:To:Cc:Cc"},
	} {
		got := strings.Join(headerKeysFor(message.ParseHeader([]byte(tc.header+"\r\n")).Fields), ":")
		if got != tc.want {
			t.Errorf("%q: h=%s, want %s", tc.header, got, tc.want)
		}
	}
}

func TestSignUnsigned(t *testing.T) {
	for name, msg := range map[string]string{
		"empty":             "",
		"only empty line":   "\r\n",
		"no From":           "Subject: x\r\n\r\nbody\r\n",
		"From without addr": "From: \r\n\r\nbody\r\n",
		"domain literal":    "From: a@[192.0.2.1]\r\n\r\nbody\r\n",
		"other domain":      "From: a@example.com\r\n\r\nbody\r\n",
		"parent domain":     "From: a@org\r\n\r\nbody\r\n",
		"suffix not label":  "From: a@badexample.org\r\n\r\nbody\r\n",
		"first line folded": " From: a@example.org\r\n\r\nbody\r\n",
		"first line tab":    "\tX: 1\r\nFrom: a@example.org\r\n\r\nbody\r\n",
		"one From unparseable": "From: a@example.org\r\n" +
			"From: not an address\r\n\r\nbody\r\n",
	} {
		sigs, err := NewSigner(testKeys(t)).Sign(strings.NewReader(msg))
		if err != nil || sigs != nil {
			t.Errorf("%s: got %q, %v; want nil, nil", name, sigs, err)
		}
	}
	var nilSigner *Signer
	if sigs, err := nilSigner.Sign(strings.NewReader(baseMsg)); sigs != nil || err != nil {
		t.Errorf("nil Signer: %q, %v", sigs, err)
	}
}

// TestSignNoFinalCRLF: a message that ends inside its header, without even
// a line end, is still signed, and verifies once a line end is added (as
// the SMTP client must when it sends it on).
func TestSignNoFinalCRLF(t *testing.T) {
	keys := []*Key{edKey(t)}
	msg := "From: alice@example.org\r\nSubject: cut"
	sigs := sign(t, keys, []byte(msg))
	if sigs == nil {
		t.Fatal("not signed")
	}
	for _, v := range verify(t, keys, append(sigs, msg+"\r\n\r\n"...)) {
		if v.Err != nil {
			t.Error(v.Err)
		}
	}
}

// TestSignLongHeaderLine: a header line longer than the read buffer.
func TestSignLongHeaderLine(t *testing.T) {
	keys := []*Key{edKey(t)}
	msg := "X-Long: " + strings.Repeat("a", 100_000) + "\r\nFrom: alice@example.org\r\nSubject: " +
		strings.Repeat("b ", 40_000) + "\r\n\r\nbody\r\n"
	sigs := sign(t, keys, []byte(msg))
	if got := signTags(t, splitFields(sigs)[0])["h"]; got != "From:From:Subject:Subject" {
		t.Errorf("h=%s", got)
	}
	for _, v := range verify(t, keys, append(sigs, msg...)) {
		if v.Err != nil {
			t.Error(v.Err)
		}
	}
}

type failingSigner struct{ crypto.Signer }

var errHSM = errors.New("hsm unplugged")

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return nil, errHSM }

type failingReader struct{ r io.Reader }

var errDisk = errors.New("disk gone")

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errDisk
	}
	return n, err
}

func TestSignErrors(t *testing.T) {
	good := edKey(t)
	bad := *good
	bad.Selector = "broken"
	bad.Signer = failingSigner{good.Signer}

	_, err := NewSigner([]*Key{good, &bad}).Sign(strings.NewReader(baseMsg))
	if !errors.Is(err, errHSM) || !strings.Contains(err.Error(), "s=broken") {
		t.Errorf("failing key: got %v, want errHSM naming s=broken", err)
	}

	_, err = NewSigner([]*Key{good}).Sign(&failingReader{strings.NewReader(baseMsg)})
	if !errors.Is(err, errDisk) {
		t.Errorf("failing reader in body: got %v, want errDisk", err)
	}
	_, err = NewSigner([]*Key{good}).Sign(&failingReader{strings.NewReader("From: a@example.org\r\n")})
	if !errors.Is(err, errDisk) {
		t.Errorf("failing reader in header: got %v, want errDisk", err)
	}
}

// TestSignConcurrent: one Signer, many sessions (run with -race).
func TestSignConcurrent(t *testing.T) {
	keys := []*Key{edKey(t), testKey(t, "example.net", "sub", "ed25519-openssl.pem", true)}
	s := NewSigner(keys)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dom := []string{"example.org", "a.example.net"}[i%2]
			msg := fmt.Sprintf("From: u%d@%s\r\nSubject: %d\r\n\r\nbody %d\r\n", i, dom, i, i)
			sigs, err := s.Sign(strings.NewReader(msg))
			if err != nil {
				errs <- err
				return
			}
			if n := len(splitFields(sigs)); n != 1 {
				errs <- fmt.Errorf("message %d: %d signatures", i, n)
				return
			}
			for _, v := range verify(t, keys, append(sigs, msg...)) {
				if v.Err != nil {
					errs <- fmt.Errorf("message %d: %v", i, v.Err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// bigMessage streams a message of n body bytes without holding it.
type bigMessage struct {
	header string
	n      int
	line   []byte
	off    int
}

func (b *bigMessage) Read(p []byte) (int, error) {
	if b.header != "" {
		n := copy(p, b.header)
		b.header = b.header[n:]
		return n, nil
	}
	if b.n <= 0 {
		return 0, io.EOF
	}
	total := 0
	for len(p) > 0 && b.n > 0 {
		c := copy(p, b.line[b.off:])
		if c > b.n {
			c = b.n
		}
		p, b.n, total = p[c:], b.n-c, total+c
		b.off = (b.off + c) % len(b.line)
	}
	return total, nil
}

// TestSignStreams: a 25 MiB message is signed without holding a copy of
// it. go-msgauth's body canonicalizer makes short-lived garbage in
// proportion to the message, so the check is on the peak heap, sampled.
func TestSignStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("25 MiB")
	}
	s := NewSigner([]*Key{edKey(t)})
	msg := &bigMessage{header: baseMsg[:strings.Index(baseMsg, "\r\n\r\n")+4], n: 25 << 20,
		line: []byte(strings.Repeat("0123456789", 7) + "\r\n")}
	runtime.GC()
	var peak uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	sigs, err := s.Sign(msg)
	close(stop)
	<-done
	if err != nil || sigs == nil {
		t.Fatalf("Sign: %q, %v", sigs, err)
	}
	if peak > 16<<20 {
		t.Errorf("peak heap %d bytes while signing 25 MiB; want < 16 MiB", peak)
	}
	t.Logf("peak heap %.1f MiB", float64(peak)/(1<<20))
}

// FuzzSign: no input makes Sign panic, and whatever it signs verifies.
func FuzzSign(f *testing.F) {
	ins, _ := filepath.Glob(filepath.Join("testdata", "*", "input.eml"))
	for _, in := range ins {
		f.Add(readEML(f, in))
	}
	f.Add([]byte(baseMsg))
	f.Add([]byte("From: a@example.org\n\nbare LF\n"))
	f.Add([]byte("From: a@example.org\r\n\r"))
	keys := []*Key{edKey(f), testKey(f, "example.net", "sub", "ed25519-openssl.pem", true)}
	s := NewSigner(keys)
	f.Fuzz(func(t *testing.T, msg []byte) {
		sigs, err := s.Sign(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if sigs == nil {
			return
		}
		// Verify the message as the SMTP client will send it: with CRLF
		// line ends and a complete header (go-msgauth's body
		// canonicalization treats a bare CR or LF differently from a
		// verifier that sees DATA's CRLF).
		if !cleanCRLF(msg) || !bytes.Contains(msg, []byte("\r\n\r\n")) {
			return
		}
		full := append(sigs, msg...)
		for _, v := range verify(t, keys, full) {
			if v.Err != nil {
				t.Errorf("d=%s: %v\n%q", v.Domain, v.Err, full)
			}
		}
	})
}

// cleanCRLF: every CR is followed by LF and every LF preceded by CR.
func cleanCRLF(b []byte) bool {
	return bytes.Count(b, []byte("\r")) == bytes.Count(b, []byte("\r\n")) &&
		bytes.Count(b, []byte("\n")) == bytes.Count(b, []byte("\r\n"))
}

func BenchmarkSign(b *testing.B) {
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", 4096/78)
	msg := []byte(baseMsg[:strings.Index(baseMsg, "\r\n\r\n")+4] + body)
	for _, bc := range []struct {
		name string
		keys func(testing.TB) []*Key
	}{
		{"rsa2048", func(t testing.TB) []*Key { return []*Key{rsaKey(t)} }},
		{"ed25519", func(t testing.TB) []*Key { return []*Key{edKey(t)} }},
		{"rsa2048+ed25519", func(t testing.TB) []*Key { return []*Key{rsaKey(t), edKey(t)} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewSigner(bc.keys(b))
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Sign(bytes.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

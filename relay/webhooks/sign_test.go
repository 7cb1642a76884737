package webhooks

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSignatureVector signs the test vector the Standard Webhooks
// reference libraries check against (standard-webhooks/standard-webhooks,
// libraries/go/webhook_test.go, TestWebhookSign; the other languages'
// tests use the same one).
func TestSignatureVector(t *testing.T) {
	s, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := s.Signature("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("signature %s, want %s", got, want)
	}
}

func TestParseSecret(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // part of the error; "" for none
	}{
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ""},
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", ""},
		{"whsec_" + strings.Repeat("A", 84), ""},         // 63 bytes
		{"whsec_" + strings.Repeat("A", 88), "66 bytes"}, // one block too many
		{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with"},
		{"whsec_not base64!", "not base64"},
		{"whsec_c2hvcnQ=", "5 bytes"},
		{"", "must start with"},
	} {
		_, err := ParseSecret(tt.in)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ParseSecret(%q): %v", tt.in, err)
		case tt.want != "" && (err == nil || !errors.Is(err, ErrBadSecret) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("ParseSecret(%q) = %v, want ErrBadSecret saying %q", tt.in, err, tt.want)
		}
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	os.WriteFile(p, []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"), 0o600)
	s, err := ReadSecretFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if str := s.String(); strings.Contains(str, "MfKQ") {
		t.Errorf("String shows the key: %s", str)
	}
}

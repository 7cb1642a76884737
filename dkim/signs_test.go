package dkim

import (
	"strings"
	"testing"

	"postern/queue/message"
)

// TestSigns: Signs agrees with Sign on whether a message is signed.
func TestSigns(t *testing.T) {
	s := NewSigner(testKeys(t))
	for _, msg := range []string{baseMsg, "From: a@org\r\n\r\nbody\r\n", "From: not an address\r\n\r\nx\r\n"} {
		sigs, err := s.Sign(strings.NewReader(msg))
		if err != nil {
			t.Fatal(err)
		}
		h := message.ParseHeader([]byte(msg))
		if got := s.Signs(h); got != (sigs != nil) {
			t.Errorf("%q: Signs %v, Sign gave %q", msg, got, sigs)
		}
	}
	var nilSigner *Signer
	if nilSigner.Signs(message.ParseHeader([]byte(baseMsg))) {
		t.Error("nil Signer signs")
	}
}

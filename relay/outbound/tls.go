package outbound

import (
	"fmt"
	"strings"
)

// TLSMode is how delivery uses STARTTLS (RFC 3207).
type TLSMode int

const (
	// Opportunistic upgrades with STARTTLS when the server offers it,
	// without verifying the certificate (RFC 7435: encryption against
	// passive eavesdroppers, no promise against an active attacker), and
	// carries on in plain text when the server does not offer it. TLS 1.2
	// is the minimum even here.
	Opportunistic TLSMode = iota
	// Required delivers only over TLS with a certificate valid for the MX
	// host name; a server without STARTTLS or with a bad certificate is a
	// temporary failure, and the next MX is tried.
	Required
	// Disabled never uses STARTTLS.
	Disabled
)

func (m TLSMode) String() string {
	switch m {
	case Opportunistic:
		return "opportunistic"
	case Required:
		return "required"
	case Disabled:
		return "disabled"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// ParseTLSMode parses a config value: "opportunistic", "required" or
// "disabled", in any case. The empty string is the default, Opportunistic.
func ParseTLSMode(s string) (TLSMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "opportunistic":
		return Opportunistic, nil
	case "required":
		return Required, nil
	case "disabled":
		return Disabled, nil
	}
	return 0, fmt.Errorf("unknown TLS mode %q (want opportunistic, required or disabled)", s)
}

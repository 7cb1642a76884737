package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNothingSilentlyDropped: values yaml.v3 would truncate or drop
// without a word are errors naming their key.
func TestNothingSilentlyDropped(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"delivery: {port: 587.9}\n", "delivery.port: 587.9 is not a whole number"},
		{"limits: {max_recipients: 1e3}\n", "limits.max_recipients: 1e3 is not a whole number"},
		{"dkim: {keys: [~]}\n", "dkim.keys[0]: empty list item"},
		{"delivery:\n  routes: [{sender_domains: [ok.test, \"bad dom\"], via: mx}]\n", "delivery.routes[0].sender_domains[1]: \"bad dom\" is not a domain name"},
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		os.WriteFile(path, []byte(tt.yaml), 0o600)
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error containing %q", tt.yaml, err, tt.want)
		}
	}
}

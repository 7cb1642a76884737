package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"postern/configs"
)

// TestBounceTokensKey: without bounces.secret_file the key is generated
// once, 0600, and the same one is used on the next start (tokens already
// out stay valid); a configured file that is too short is an error; no
// bounce domain, no tokens.
func TestBounceTokensKey(t *testing.T) {
	cfg := configs.Default()
	cfg.DataDir = t.TempDir()
	if tk, err := bounceTokens(cfg); tk != nil || err != nil {
		t.Fatalf("without a domain: %v, %v", tk, err)
	}
	cfg.Bounces.Domain = "bounces.example.test"
	first, err := bounceTokens(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.GeneratedBounceSecretPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated key: %v, %v", fi, err)
	}
	second, err := bounceTokens(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rp := first.ReturnPath("00000000000000A1", []int{0})
	if _, err := second.Parse(rp); err != nil {
		t.Errorf("a token from before the restart: %v", err)
	}
	cfg.Bounces.SecretFile = filepath.Join(t.TempDir(), "short")
	os.WriteFile(cfg.Bounces.SecretFile, []byte("short\n"), 0o600)
	if _, err := bounceTokens(cfg); err == nil || !strings.Contains(err.Error(), "bounces.secret_file") {
		t.Errorf("a 5-byte key: %v", err)
	}
}

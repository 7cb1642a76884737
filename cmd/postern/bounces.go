package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"postern/configs"
	"postern/queue"
	"postern/queue/durable"
	"postern/relay/bounces"
)

// bounceTokens returns the VERP tokens of bounces.domain, with the key
// from bounces.secret_file or, when that is "", from a file serve
// generates in data_dir once and keeps (a new key would void the return
// paths of mail already sent). nil when bounces.domain is empty.
func bounceTokens(cfg *configs.Config) (*bounces.Tokens, error) {
	if cfg.Bounces.Domain == "" {
		return nil, nil
	}
	path := cfg.Bounces.SecretFile
	if path == "" {
		path = cfg.GeneratedBounceSecretPath()
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			b := make([]byte, 32)
			rand.Read(b)
			if err := durable.WriteFile(path, []byte(base64.RawURLEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
				return nil, fmt.Errorf("bounces secret: %w", err)
			}
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bounces.secret_file: %w", err)
	}
	t, err := bounces.NewTokens([]byte(strings.TrimSpace(string(b))), cfg.Bounces.Domain)
	if err != nil {
		return nil, fmt.Errorf("bounces.secret_file %s: %w", path, err)
	}
	return t, nil
}

// bounceOptions are the queue's VERP options for t (none when nil).
func bounceOptions(cfg *configs.Config, t *bounces.Tokens) queue.BounceOptions {
	if t == nil {
		return queue.BounceOptions{}
	}
	return queue.BounceOptions{ReturnPath: t.ReturnPath, Keep: cfg.Bounces.Keep.D()}
}

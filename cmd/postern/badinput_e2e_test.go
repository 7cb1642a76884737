package main

// Entry points answer garbage with a clear error and the right exit code
// (2 for a wrong command line, 1 for a failure), and do nothing else.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestBadInputAtTheCommandLine(t *testing.T) {
	t.Parallel()
	in := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25, Admin: freeAddr(t)})
	garbageToken := filepath.Join(in.dir, "token")
	os.WriteFile(garbageToken, []byte("two words\n"), 0o600)
	withToken := newInstance(t, testConfig{Resolver: "127.0.0.1:53", DeliveryPort: 25, Admin: freeAddr(t),
		Extra: "admin: {token_file: " + garbageToken + "}\n"})
	for _, tt := range []struct {
		in   *instance
		args []string
		code int
		want string
	}{
		// An empty ID would become /api/queue//retry, cleaned into
		// "retry everything".
		{in, []string{"queue", "retry", ""}, 2, "the message ID is empty"},
		{in, []string{"queue", "hold", ""}, 2, "the message ID is empty"},
		{nil, []string{"dkim", "keygen", "--domain", "example.test", "--selector", "bad sel"}, 2, "not a valid selector"},
		{nil, []string{"dkim", "keygen", "--domain", "bad domain", "--selector", "s1"}, 2, "not a domain name"},
		// LoadKeys refuses a single-label d=: no key is written for it.
		{nil, []string{"dkim", "keygen", "--domain", "localhost", "--selector", "s1", "--out", os.DevNull}, 2, "not a fully qualified domain name"},
		{nil, []string{"dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--algorithm", "dsa"}, 2, "not rsa or ed25519"},
		// Extra words are a mistake to point out, not to ignore.
		{nil, []string{"version", "--verbose"}, 2, "version takes no arguments"},
		{nil, []string{"config", "default", "/etc/postern.yaml"}, 2, "config default takes no arguments"},
		// config check promises that serve starts: a token no client
		// could send is a problem.
		{withToken, []string{"config", "check"}, 1, "admin.token_file"},
	} {
		var out string
		var err error
		if tt.in == nil { // a command that reads no config
			var b []byte
			b, err = exec.Command(binPath, tt.args...).CombinedOutput()
			out = string(b)
		} else {
			out, err = tt.in.postern("", tt.args...)
		}
		if got := exitCode(err); got != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("postern %q: exit %d, want %d with %q:\n%s", tt.args, got, tt.code, tt.want, out)
		}
	}
}

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"postern/relay/pickup"
)

// TestConfigCheckMaildrop: config check reports the maildrop's
// permissions as serve will find them, naming the path, what is wrong and
// the command that fixes it. What is unsafe is a problem (exit 1); what
// only keeps local users out, which serve sets right, a warning.
func TestConfigCheckMaildrop(t *testing.T) {
	t.Parallel()
	in := newInstance(t, testConfig{Relay: freeAddr(t), Resolver: "127.0.0.1:53", DeliveryPort: 25})
	data := filepath.Join(in.dir, "data")
	maildrop := filepath.Join(data, "maildrop")
	check := func() (string, error) {
		var out bytes.Buffer
		err := cmdConfigCheck([]string{"--config", in.cfgPath}, &out)
		if err != nil {
			out.WriteString(err.Error())
		}
		return out.String(), err
	}

	// No data_dir yet: serve makes everything.
	if out, err := check(); err != nil || strings.Contains(out, "maildrop") {
		t.Errorf("before the first start: %v\n%s", err, out)
	}
	os.Mkdir(data, 0o700)
	if err := pickup.MakeDir(maildrop); err != nil {
		t.Fatal(err)
	}
	out, err := check()
	if err != nil || !strings.Contains(out, "warning: data_dir: "+data+": mode 0700: other users cannot reach the maildrop") ||
		!strings.Contains(out, "fix: chmod o+x "+data+" (serve does this at start)") {
		t.Errorf("data_dir without o+x: want a warning and OK, got %v\n%s", err, out)
	}
	os.Chmod(data, 0o711)
	if out, err := check(); err != nil || strings.Contains(out, "data_dir") {
		t.Errorf("a maildrop as serve makes it: %v\n%s", err, out)
	}

	for _, tt := range []struct {
		name  string
		setup func()
		want  string
	}{
		{"readable and writable by all", func() { os.Chmod(maildrop, 0o777) },
			maildrop + ": mode 0777, not 3733: other users can list the drops; without the sticky bit any user can delete or rename"},
		{"no sticky bit", func() { os.Chmod(maildrop, os.ModeSetgid|0o733) },
			maildrop + ": mode 2733, not 3733: without the sticky bit any user can delete or rename another user's drops; fix: chmod 3733 " + maildrop},
		{"a symbolic link", func() { os.RemoveAll(maildrop); os.Symlink(t.TempDir(), maildrop) },
			maildrop + ": is a symbolic link (to "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.RemoveAll(maildrop)
			if err := pickup.MakeDir(maildrop); err != nil {
				t.Fatal(err)
			}
			tt.setup()
			out, err := check()
			var ex exitError
			if !errors.As(err, &ex) || ex.code != exitFail || !strings.Contains(out, in.cfgPath+": data_dir: "+tt.want) || !strings.Contains(out, "1 problem(s)") {
				t.Errorf("want exit 1 with %q, got %v\n%s", tt.want, err, out)
			}
		})
	}
}

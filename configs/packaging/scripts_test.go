package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPostinstAlternatives: postinst's choice about /usr/sbin/sendmail,
// run against stand-ins for the commands it calls (they log their
// arguments), so that both branches are tested on any machine: where a
// package such as Postfix owns the path (the test machines' case, which
// TestDebPackage meets for real), no alternative is registered; where
// nobody does, sendmail and mailq become the sendmail alternative.
func TestPostinstAlternatives(t *testing.T) {
	for _, tc := range []struct {
		name, owner string
		wantAlt     bool
	}{
		{"another MTA owns sendmail", "postfix", false},
		{"no MTA", "", true},
		{"an earlier postern", "postern", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			log := filepath.Join(t.TempDir(), "calls")
			fake := func(name, body string) {
				script := "#!/bin/sh\necho \"" + name + " $*\" >> " + log + "\n" + body + "\n"
				if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			owner := "exit 1"
			if tc.owner != "" {
				owner = "echo \"" + tc.owner + ": $1\""
			}
			fake("dpkg-query", owner)
			fake("getent", "exit 0") // the user exists already
			for _, c := range []string{"adduser", "install", "update-alternatives", "systemctl"} {
				fake(c, "exit 0")
			}
			cmd := exec.Command("/bin/sh", "postinst", "configure")
			cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("postinst: %v\n%s", err, out)
			}
			calls, _ := os.ReadFile(log)
			alt := ""
			for _, l := range strings.Split(string(calls), "\n") {
				if strings.HasPrefix(l, "update-alternatives ") {
					alt = l
				}
			}
			want := "update-alternatives --install /usr/sbin/sendmail sendmail /usr/lib/postern/sendmail 25 --slave /usr/bin/mailq mailq /usr/lib/postern/mailq"
			if tc.wantAlt && alt != want {
				t.Errorf("got %q, want %q\ncalls:\n%s", alt, want, calls)
			}
			if !tc.wantAlt && (alt != "" || !strings.Contains(string(out), "belongs to "+tc.owner)) {
				t.Errorf("alternative %q registered over %s's sendmail, or not said:\n%s", alt, tc.owner, out)
			}
			if !strings.Contains(string(calls), "install -d -o postern -g postern -m 3733 /var/lib/postern/maildrop") {
				t.Errorf("the maildrop is not made 3733:\n%s", calls)
			}
		})
	}
}

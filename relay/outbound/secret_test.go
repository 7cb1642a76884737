package outbound

import (
	"fmt"
	"strings"
	"testing"
)

// TestCredentialsNeverPrintThePassword: every fmt verb masks it, also for
// the struct and a pointer to it (fmt does not call String on unexported
// fields, so the struct must mask itself).
func TestCredentialsNeverPrintThePassword(t *testing.T) {
	c := &credentials{username: "u", password: "hunter2"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{c, *c, c.password} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, "hunter2") {
				t.Errorf("%s of %T prints the password: %s", verb, v, out)
			}
		}
	}
}

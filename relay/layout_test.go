package relay_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayout holds the rooms to the import rules that relay's package
// comment and each room's doc.go state: a room that imports another it
// should not fails here, by name, before it grows into a cycle or a
// tangle. It asks the go command for each package's dependencies (its
// code, not its tests).
func TestLayout(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("the go command is needed to list dependencies:", err)
	}
	for _, tt := range []struct {
		pkgs      string   // a go list pattern
		forbidden []string // import paths, or prefixes ending in "/"
	}{
		// The queue is storage and scheduling: no HTTP (not even through
		// zap, which imports net/http: the queue logs through log/slog),
		// nothing of the network rooms.
		{"postern/queue/...", []string{"net/http", "postern/relay/", "postern/cmd/"}},
		// The embedded queue knows no database server: PostgreSQL is a
		// room of its own (queue/postgres), which cmd/postern wires in.
		{"postern/queue", []string{"github.com/jackc/"}},
		// The submission pipeline takes from every source and gives to the
		// queue: it imports no source and no deliverer.
		{"postern/relay/submit", []string{"postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/smtpclient", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/cmd/"}},
		{"postern/relay/smtpd", []string{"postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/cmd/"}},
		// The maildrop's pickup is a source like smtpd: it feeds the
		// pipeline and knows no other source and no deliverer.
		{"postern/relay/pickup", []string{"postern/relay/smtpd", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/cmd/"}},
		// Delivery shapes with the other nodes through an interface of
		// its own (SharedShaping), which relay/limits implements and
		// cmd/postern wires: it does not import the store.
		{"postern/relay/outbound", []string{"postern/relay/submit", "postern/relay/smtpd", "postern/relay/pickup", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/relay/limits", "postern/cmd/"}},
		// Outbound TLS policy is consulted by delivery and wired by
		// cmd/postern: it reaches the queue's state store through an
		// interface of its own, and mails reports through one too.
		{"postern/relay/tlspolicy", []string{"postern/queue", "postern/relay/submit", "postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/relay/status", "postern/auth", "postern/dkim", "postern/configs", "postern/cmd/"}},
		// The SMTP client is a leaf under delivery: the standard library,
		// queue/reply and queue/message, nothing else (not go-smtp either).
		{"postern/relay/smtpclient", []string{"postern/relay/", "postern/queue", "postern/queue/dsn", "postern/queue/durable", "postern/auth", "postern/dkim", "postern/configs", "postern/cmd/", "github.com/", "go.uber.org/", "golang.org/", "gopkg.in/", "go.etcd.io/"}},
		{"postern/relay/capture", []string{"postern/relay/submit", "postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/httpapi", "postern/relay/metrics", "postern/cmd/"}},
		{"postern/relay/httpapi", []string{"postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/cmd/"}},
		// Bounce intake: its own SMTP server; never the submission
		// pipeline (nothing it receives is queued) nor a deliverer
		// (nothing is relayed).
		{"postern/relay/bounces", []string{"postern/relay/submit", "postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/cmd/"}},
		{"postern/relay/metrics", []string{"net/http/httptest", "postern/relay/smtpd", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/cmd/"}},
		// Webhook delivery reads the queue's outbox through an interface
		// of its own; cmd/postern turns the config into its endpoints.
		{"postern/relay/webhooks", []string{"postern/relay/", "postern/auth", "postern/dkim", "postern/configs", "postern/cmd/"}},
		// Shared limits: a store the listeners and auth consult through
		// interfaces of their own; it knows no SMTP session, no queue and
		// no HTTP surface.
		{"postern/relay/limits", []string{"postern/relay/", "postern/queue", "postern/auth", "postern/dkim", "postern/configs", "postern/cmd/"}},
		{"postern/relay/status", []string{"postern/relay/", "postern/queue", "postern/auth", "postern/dkim", "postern/configs", "postern/cmd/"}}, // queue/reply, a leaf, only
		{"postern/relay/certs", []string{"postern/"}},
		// ACME obtains what certs serves; cmd/postern plugs it in.
		{"postern/relay/acme", []string{"postern/"}},
		// The queue's leaves, shared by every room: they import nothing
		// of postern.
		{"postern/queue/reply", []string{"postern/"}},
		{"postern/queue/message", []string{"postern/"}},
		{"postern/queue/durable", []string{"postern/"}},
		{"postern/auth/...", []string{"postern/relay/", "postern/queue", "postern/dkim", "postern/cmd/"}},
		{"postern/configs/...", []string{"postern/relay/", "postern/queue", "postern/cmd/"}},
		{"postern/dkim/...", []string{"postern/relay/", "postern/auth", "postern/queue", "postern/queue/dsn", "postern/cmd/"}}, // queue/message only
		// The SPF evaluator is a leaf: doctor uses it, and a receiving
		// side could.
		{"postern/relay/spf", []string{"postern/"}},
		// doctor reads DNS and reports; the configuration reaches it as
		// Options, through cmd/postern. It uses spf and dkim only.
		{"postern/relay/doctor", []string{"postern/relay/smtpd", "postern/relay/submit", "postern/relay/pickup", "postern/relay/outbound", "postern/relay/capture", "postern/relay/httpapi", "postern/relay/metrics", "postern/relay/bounces", "postern/relay/tlspolicy", "postern/relay/acme", "postern/relay/certs", "postern/relay/status", "postern/queue", "postern/auth", "postern/configs", "postern/cmd/"}},
		// packaging is the .deb and its test, which drives the built
		// package from outside: no Go code of postern's.
		{"postern/configs/packaging", []string{"postern/"}},
	} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", tt.pkgs).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", tt.pkgs, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(tt.pkgs, dep) || strings.HasPrefix(dep, strings.TrimSuffix(tt.pkgs, "...")) {
				continue // the packages themselves
			}
			for _, f := range tt.forbidden {
				if dep == strings.TrimSuffix(f, "/") || strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s, which its room may not import", tt.pkgs, dep)
				}
			}
		}
	}
}

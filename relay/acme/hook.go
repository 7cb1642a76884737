package acme

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// The dns-01 hook. postern knows no DNS provider's API; the operator
// gives a command that does, and postern runs it as
//
//	HOOK present _acme-challenge.mail.example.test. VALUE
//	HOOK cleanup _acme-challenge.mail.example.test. VALUE
//
// (the name fully qualified, with its final dot; VALUE the TXT record's
// content), the convention of lego's "exec" provider, so scripts written
// for it work here. Exit status 0 is success; anything the command prints
// goes into the log line of a failure. present must publish the TXT
// record (beside any other TXT record of that name: two challenges can
// run at once); cleanup removes that one record.
//
// The command runs without a shell, at most hookTimeout, with postern's
// environment.

// hookTimeout bounds one run of the hook.
const hookTimeout = 2 * time.Minute

// defaultPropagation bounds the wait for a record to be visible.
const defaultPropagation = 2 * time.Minute

// hookSolver is an acmez.Solver (and Waiter) for dns-01.
type hookSolver struct {
	command string
	// lookup returns the TXT records of a name (Resolver's view).
	lookup  func(ctx context.Context, name string) ([]string, error)
	timeout time.Duration // see Options.PropagationTimeout
	log     *zap.Logger
}

func (h *hookSolver) Present(ctx context.Context, c acme.Challenge) error {
	return h.run(ctx, "present", c)
}

func (h *hookSolver) CleanUp(ctx context.Context, c acme.Challenge) error {
	return h.run(ctx, "cleanup", c)
}

// Wait returns once the record is visible through the resolver, so that
// the CA is not asked to look before it can see it (a hook that calls a
// provider's API often returns before the provider publishes). After the
// timeout it lets the CA look anyway, with a warning: the CA asks the
// zone's own servers, which may see what a caching resolver does not yet.
func (h *hookSolver) Wait(ctx context.Context, c acme.Challenge) error {
	name, want := c.DNS01TXTRecordName(), c.DNS01KeyAuthorization()
	timeout := h.timeout
	if timeout <= 0 {
		timeout = defaultPropagation
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		got, err := h.lookup(ctx, name)
		if err == nil && slices.Contains(got, want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			h.log.Warn("dns-01: the challenge record is not visible yet; asking the CA to look anyway",
				zap.String("name", name), zap.Duration("waited", timeout))
			return nil
		case <-tick.C:
		}
	}
}

func (h *hookSolver) run(ctx context.Context, action string, c acme.Challenge) error {
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	name := c.DNS01TXTRecordName() + "."
	cmd := exec.CommandContext(ctx, h.command, action, name, c.DNS01KeyAuthorization())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("dns-01 hook %s %s %s: %w: %s", h.command, action, name, err, clip(out))
	}
	h.log.Info("dns-01 hook ran", zap.String("action", action), zap.String("name", name))
	return nil
}

// clip keeps the start of a command's output for an error message.
func clip(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) > 500 {
		out = append(out[:500:500], "..."...)
	}
	return strings.ToValidUTF8(string(out), "?")
}

// txtLookup asks resolver ("IP:port"; "" for the system's) for TXT
// records, over the Go resolver so that it goes to that server only.
func txtLookup(resolver string) func(context.Context, string) ([]string, error) {
	r := net.DefaultResolver
	if resolver != "" {
		r = &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, resolver)
			},
		}
	}
	return r.LookupTXT
}

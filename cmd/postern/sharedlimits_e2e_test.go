package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// limitRE is swaks's line for the per-user message limit's reply to MAIL
// (after STARTTLS, swaks marks what it receives "<~", and an error "*").
var limitRE = regexp.MustCompile(`(?m)^<~\* 450 4\.7\.1 Message limit reached \(3 per 1h0m0s\), try again in \d`)

// sharedLimitsConfig is a config whose limits are shared through the Redis
// at addr (with the password in passwordFile, "" for none), 3 messages an
// hour per user.
func sharedLimitsConfig(w *world, addr, passwordFile string) testConfig {
	cfg := w.config()
	cfg.Limits = fmt.Sprintf("{max_message_size: 10MiB, max_recipients: 100, user_messages_per_hour: 3, redis: {address: %q, password_file: %q, prefix: e2e}}", addr, passwordFile)
	return cfg
}

// TestSharedLimitsE2E: two nodes sharing one Redis give a user one
// allowance of 3 messages an hour: 2 through node A and 1 through node B
// are accepted, the fourth is refused at MAIL with the per-user limit's
// 450 4.7.1 on either node. The Redis password comes from a file and never
// reaches the log.
func TestSharedLimitsE2E(t *testing.T) {
	t.Parallel()
	const password = "redis-pw-9f3b1c"
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{Password: password})
	pwFile := filepath.Join(t.TempDir(), "redis.password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	w.receiver("127.0.2.2")
	var nodes []*instance
	for range 2 {
		cfg := sharedLimitsConfig(w, srv.Addr, pwFile)
		cfg.Admin = freeAddr(t)
		in := newInstance(t, cfg)
		in.addUser("alice@example.test", "correct horse")
		in.start()
		in.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("shared limits: using Redis") })
		nodes = append(nodes, in)
	}
	a, b := nodes[0], nodes[1]
	send := func(in *instance) (string, error) {
		return submit(t, in, "PLAIN", "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test")
	}
	for i, in := range []*instance{a, a, b} {
		if out, err := send(in); err != nil || !queuedRE.MatchString(out) {
			t.Fatalf("message %d: %v\n%s", i+1, err, out)
		}
	}
	for name, in := range map[string]*instance{"A": a, "B": b} {
		out, _ := send(in)
		if queuedRE.MatchString(out) || !limitRE.MatchString(out) {
			t.Errorf("fourth message through node %s: want 450 4.7.1 at MAIL, got:\n%s", name, out)
		}
	}
	for _, in := range nodes {
		if strings.Contains(in.logs.String(), password) {
			t.Error("the Redis password is in the log")
		}
		metrics := scrapeMetrics(t, in.cfg.Admin)
		for _, want := range []string{"\npostern_limits_redis_up 1\n", "\npostern_limits_redis_fallbacks_total 0\n"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
			}
		}
	}
}

// TestSharedLimitsRedisDownE2E: a node whose Redis does not answer still
// takes mail, with its own per-node limits (3 messages, then 450), and
// says so once in its log.
func TestSharedLimitsRedisDownE2E(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	w.receiver("127.0.2.2")
	cfg := sharedLimitsConfig(w, freeAddr(t), "")
	cfg.Admin = freeAddr(t)
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()
	for i := range 3 {
		out, err := submit(t, in, "PLAIN", "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test")
		if err != nil || !queuedRE.MatchString(out) {
			t.Fatalf("message %d with Redis down: %v\n%s", i+1, err, out)
		}
	}
	out, _ := submit(t, in, "PLAIN", "alice@example.test", "correct horse", "alice@example.test", "bob@dest.test")
	if !limitRE.MatchString(out) {
		t.Errorf("fourth message with Redis down: want the node's own 450 4.7.1, got:\n%s", out)
	}
	if n := len(in.logs.all(func(e logEntry) bool {
		return e.isMsg("shared limits: Redis unreachable; limits are per node until it answers")
	})); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	// Every limit check fell back (at least the 4 MAILs), and the store
	// shows as not in use.
	metrics := scrapeMetrics(t, cfg.Admin)
	if !strings.Contains(metrics, "\npostern_limits_redis_up 0\n") {
		t.Error("/metrics lacks postern_limits_redis_up 0")
	}
	m := regexp.MustCompile(`\npostern_limits_redis_fallbacks_total (\d+)\n`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatal("/metrics lacks postern_limits_redis_fallbacks_total")
	}
	if n, _ := strconv.Atoi(m[1]); n < 4 {
		t.Errorf("postern_limits_redis_fallbacks_total %d, want at least 4", n)
	}
}

// scrapeMetrics returns the admin listener's /metrics.
func scrapeMetrics(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// TestSharedLimitsPasswdE2E: `postern user passwd` on one node tells
// every node sharing the Redis, and another node, whose own users file did
// not change, empties its password cache and re-reads its users at once.
// With Redis down, the command still changes the password and warns.
func TestSharedLimitsPasswdE2E(t *testing.T) {
	t.Parallel()
	srv := relaytest.NewRedis(t, relaytest.RedisOptions{})
	w := newWorld(t)
	a := newInstance(t, sharedLimitsConfig(w, srv.Addr, ""))
	b := newInstance(t, sharedLimitsConfig(w, srv.Addr, ""))
	for _, in := range []*instance{a, b} {
		in.addUser("alice@example.test", "correct horse")
	}
	b.start()
	b.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("shared limits: using Redis") })
	reloads := func() int {
		return len(b.logs.all(func(e logEntry) bool { return e.isMsg("users file reloaded") }))
	}
	before := reloads()
	if out, err := a.postern("battery staple\n", "user", "passwd", "alice@example.test"); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("user passwd: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for reloads() == before {
		if time.Now().After(deadline) {
			t.Fatalf("node B did not reload its users on node A's password change:\n%s", b.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	srv.Kill()
	out, err := a.postern("tr0ub4dor\n", "user", "passwd", "alice@example.test")
	if err != nil || !strings.Contains(out, "changed the password of alice@example.test") ||
		!strings.Contains(out, "warning: could not tell the other nodes through limits.redis") {
		t.Errorf("user passwd with Redis down: %v\n%s", err, out)
	}
}

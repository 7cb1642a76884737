package main

// End-to-end tests of issue 17's PostgreSQL backend with the real binary:
// mail queued in the database is delivered, survives a restart, and the
// configuration refuses what the backend does not keep.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue/postgres/pgtest"
)

// postgresQueue returns the YAML that puts an instance's queue in a new
// database of the test cluster, the DSN in a file of dir.
func postgresQueue(t testing.TB, dir, dsn string, lease string) string {
	t.Helper()
	f := filepath.Join(dir, "dsn")
	if err := os.WriteFile(f, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("queue:\n  backend: postgres\n  postgres: {dsn_file: %q, lease: %s}\n", f, lease)
}

func TestPostgresBackendDeliversAcrossRestart(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DB(t)
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	// The first attempt is refused for a while: the message waits in the
	// database across a restart of postern.
	rcv.FailNext("RCPT", 451, "4.3.0 not now", 1)
	cfg := w.config()
	dir := t.TempDir()
	cfg.Extra = postgresQueue(t, dir, dsn, "10s")
	cfg.RetryInitial = "2s"
	in := newInstanceIn(t, dir, cfg)
	in.start()
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", "bob@dest.test", "--data", swaksData)
	if err != nil || !queuedRE.MatchString(out) {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	id := queuedRE.FindStringSubmatch(out)[1]
	in.waitLog(20*time.Second, func(e logEntry) bool { return e.isMsg("deferred") && e.str("id") == id })
	in.stop()
	if n := len(rcv.Messages()); n != 0 {
		t.Fatalf("%d messages delivered before the retry", n)
	}
	if n := countRows(t, dsn, "postern_messages"); n != 1 {
		t.Fatalf("%d messages in the database while postern is down, want 1", n)
	}
	in.start()
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1)
	if err != nil {
		t.Fatalf("after the restart: %v\n%s", err, in.logs)
	}
	if !strings.Contains(string(msgs[0].Data), "Hello Bob.") || msgs[0].From != "app@example.test" {
		t.Errorf("delivered %+v", msgs[0])
	}
	in.waitLog(10*time.Second, func(e logEntry) bool { return e.isMsg("final") && e.str("id") == id })
	if n := countRows(t, dsn, "postern_messages"); n != 0 {
		t.Errorf("%d messages left in the database after delivery", n)
	}
}

func countRows(t testing.TB, dsn, table string) int {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPostgresConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := testConfig{MX: freeAddr(t)}
	cfg.Extra = "queue:\n  backend: postgres\n  postgres: {lease: 5s}\n"
	in := newInstanceIn(t, dir, cfg)
	out, err := in.postern("", "config", "check")
	if err == nil {
		t.Fatalf("config check passed:\n%s", out)
	}
	for _, want := range []string{"queue.postgres.dsn_file: must be set", "queue.postgres.lease: 5s is outside"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check does not say %q:\n%s", want, out)
		}
	}
}

// A stopped node's bbolt queue moves into PostgreSQL: every message once,
// a rerun moves nothing twice, and the node, restarted on the database,
// delivers them.
func TestQueueMigrateBboltToPostgres(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DB(t)
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	rcv.Close() // nothing is delivered while on bbolt
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	cfg.RetryInitial, cfg.RetryMax = "1h", "1h"
	dir := t.TempDir()
	in := newInstanceIn(t, dir, cfg)
	in.start()
	const n = 5
	for i := range n {
		out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", fmt.Sprintf("r%d@dest.test", i),
			"--data", fmt.Sprintf("Subject: m%d\r\n\r\nbody %d", i, i))
		if err != nil || !queuedRE.MatchString(out) {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
	}
	eventuallyE2E(t, "every message tried", func() bool {
		out, err := in.postern("", "queue", "list", "--state", "deferred", "--json")
		return err == nil && strings.Count(out, `"id"`) == n
	})
	// The operator switches the config to the database; migrate refuses
	// while the node still runs on the file.
	cfg.Extra = postgresQueue(t, dir, dsn, "30s")
	in2 := newInstanceIn(t, dir, cfg)
	if out, err := in2.postern("", "queue", "migrate", "--from", "bbolt", "--to", "postgres"); err == nil || !strings.Contains(out, "stop postern") {
		t.Errorf("migrate with the node running: %v\n%s", err, out)
	}
	in.stop()
	out, err := in2.postern("", "queue", "migrate", "--from", "bbolt", "--to", "postgres")
	if err != nil || !strings.Contains(out, fmt.Sprintf("moved %d messages", n)) {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if out, err := in2.postern("", "queue", "migrate", "--from", "bbolt", "--to", "postgres"); err != nil || !strings.Contains(out, "moved 0 messages") {
		t.Fatalf("second migrate: %v\n%s", err, out)
	}
	if got := countRows(t, dsn, "postern_messages"); got != n {
		t.Fatalf("%d messages in the database, want %d", got, n)
	}
	rcv = w.receiver("127.0.2.2")
	in2.start()
	// Their next attempt is an hour away, as it was on the file.
	time.Sleep(time.Second)
	if got := len(rcv.Messages()); got != 0 {
		t.Fatalf("%d delivered before their next attempt", got)
	}
	if out, err := in2.postern("", "queue", "retry", "--all"); err != nil || !strings.Contains(out, fmt.Sprintf("%d messages", n)) {
		t.Fatalf("retry --all: %v\n%s", err, out)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), n)
	if err != nil {
		t.Fatalf("after migration: %v", err)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[strings.Join(m.To, ",")] = true
	}
	if len(seen) != n {
		t.Errorf("delivered to %v", seen)
	}
	for _, m := range msgs {
		if !strings.Contains(string(m.Data), "Subject: m") {
			t.Errorf("body %q", m.Data)
		}
	}
}

func eventuallyE2E(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// With the database unreachable, a message gets a temporary refusal
// (never a 250 that nothing backs, never the database's own words), and
// mail flows again once the database is back, with no restart.
func TestPostgresOutageRefusesThenRecovers(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DB(t)
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	cfg := w.config()
	dir := t.TempDir()
	cfg.Extra = postgresQueue(t, dir, dsn, "10s")
	in := newInstanceIn(t, dir, cfg)
	in.start()
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	admin := strings.Replace(dsn, "/"+db+"?", "/postgres?", 1)
	sql := func(q string) {
		t.Helper()
		ctx := ctxTimeout(t, 10*time.Second)
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	sql("ALTER DATABASE " + db + " ALLOW_CONNECTIONS false")
	sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "'")
	out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", "bob@dest.test", "--data", swaksData)
	if err == nil || !regexp.MustCompile(`<~?\*{0,2} *4\d\d[ -]4\.`).MatchString(out) {
		t.Fatalf("with the database down: %v\n%s", err, out)
	}
	for _, leak := range []string{"SQLSTATE", "pg_", "postgres", "FATAL"} {
		if strings.Contains(out, leak) {
			t.Errorf("the reply leaks %q:\n%s", leak, out)
		}
	}
	sql("ALTER DATABASE " + db + " ALLOW_CONNECTIONS true")
	if out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test", "--to", "bob@dest.test", "--data", swaksData); err != nil || !queuedRE.MatchString(out) {
		t.Fatalf("with the database back: %v\n%s", err, out)
	}
	if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 1); err != nil {
		t.Fatal(err)
	}
}

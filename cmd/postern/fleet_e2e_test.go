package main

// The fleet of issue 17: three postern nodes on one PostgreSQL queue and
// one Redis, behind HAProxy (PROXY v2, /readyz checks), under smtp-source
// load, one of them killed with SIGKILL and not restarted.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"postern/queue/postgres/pgtest"
	"postern/relay/relaytest"
)

// freeAddrOn is freeAddr on another loopback address: each node of a
// fleet has its own.
func freeAddrOn(t testing.TB, ip string) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		issuedMu.Lock()
		fresh := !issued[addr]
		issued[addr] = true
		issuedMu.Unlock()
		if fresh {
			return addr
		}
	}
}

// tarpit accepts connections and never answers: an MX that hangs.
func tarpit(t testing.TB, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
}

var fleetIDRE = regexp.MustCompile(`Message-ID: <(fleet-[a-z]*-?\d+)@client\.test>`)

// sinkArrivals reads smtp-sink's dump directory: for each tracked
// Message-ID, the modification times of the files that hold it (more
// than one is a duplicate), and how many files there are in all.
func sinkArrivals(t testing.TB, dump string) (map[string][]time.Time, int) {
	t.Helper()
	ents, err := os.ReadDir(dump)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]time.Time{}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dump, e.Name()))
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if m := fleetIDRE.FindSubmatch(data); m != nil {
			out[string(m[1])] = append(out[string(m[1])], info.ModTime())
		}
	}
	return out, len(ents)
}

// sendTracked sends one message with its own Message-ID through addr on a
// new connection, as an application would, and reports whether it got 250.
func sendTracked(addr, id string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	expect := func(code string) bool {
		for {
			line, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, code) {
				return false
			}
			if len(line) > 3 && line[3] == ' ' {
				return true
			}
		}
	}
	say := func(s, code string) bool {
		if _, err := fmt.Fprintf(c, "%s\r\n", s); err != nil {
			return false
		}
		return expect(code)
	}
	return expect("220") && say("EHLO client.test", "250") && say("MAIL FROM:<app@example.test>", "250") &&
		say("RCPT TO:<bob@dest.test>", "250") && say("DATA", "354") &&
		say(fmt.Sprintf("From: app@example.test\r\nTo: bob@dest.test\r\nSubject: fleet\r\nMessage-ID: <%s@client.test>\r\n\r\nbody of %s\r\n.", id, id), "250") &&
		say("QUIT", "221")
}

func TestFleetSurvivesLosingANode(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DB(t)
	redis := relaytest.NewRedis(t, relaytest.RedisOptions{})
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.3")
	dump := startSmtpSink(t, fmt.Sprintf("127.0.2.3:%d", w.port))
	tarpitAddr := freeAddrOn(t, "127.0.2.3")
	tarpit(t, tarpitAddr)
	_, tarpitPort, _ := net.SplitHostPort(tarpitAddr)

	const lease = 10 * time.Second
	const perHour = 4
	var nodes []*instance
	var relays, subs []relaytest.HAProxyBackend
	for i := range 3 {
		ip := fmt.Sprintf("127.0.5.%d", i+1)
		cfg := w.config()
		cfg.Relay, cfg.Submission, cfg.Admin = freeAddrOn(t, ip), freeAddrOn(t, ip), freeAddrOn(t, ip)
		cfg.RetryInitial, cfg.RetryMax = "1s", "2s"
		cfg.Limits = fmt.Sprintf("{max_message_size: 10MiB, max_recipients: 100, user_messages_per_hour: %d, redis: {address: %q}}", perHour, redis.Addr)
		node := fmt.Sprintf("node%d", i+1)
		if i == 2 {
			// The node to be killed delivers into a tarpit: what it
			// leases, it holds until it dies.
			fmt.Sscan(tarpitPort, &cfg.DeliveryPort)
		}
		dir := t.TempDir()
		cfg.Extra = postgresQueue(t, dir, dsn, lease.String())
		cfg.Extra = strings.Replace(cfg.Extra, "lease: ", fmt.Sprintf("node: %s, lease: ", node), 1)
		cfg.Extra += "listen_proxy_protocol_from: [\"127.0.0.1\"]\n"
		in := newInstanceIn(t, dir, cfg)
		in.addUser("alice@example.test", "correct horse")
		in.start()
		nodes = append(nodes, in)
		relays = append(relays, relaytest.HAProxyBackend{SMTP: cfg.Relay, Health: cfg.Admin})
		subs = append(subs, relaytest.HAProxyBackend{SMTP: cfg.Submission, Health: cfg.Admin})
	}
	hp := relaytest.NewHAProxy(t, relaytest.HAProxyOptions{Backends: relays, CheckHost: "postern.test", CheckInterval: 100 * time.Millisecond})
	hs := relaytest.NewHAProxy(t, relaytest.HAProxyOptions{Backends: subs, CheckHost: "postern.test", CheckInterval: 100 * time.Millisecond})
	for i := range nodes {
		hp.WaitServer(t, i, "UP", 30*time.Second)
		hs.WaitServer(t, i, "UP", 30*time.Second)
	}

	// A user's hourly limit holds across the fleet: round robin spreads
	// the sessions over the three nodes, and Redis counts for all.
	for i := range perHour + 1 {
		out, err := swaks(t, "--server", hs.Addr, "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.test",
			"--auth-password", "correct horse", "--from", "alice@example.test", "--to", "bob@dest.test", "--data", swaksData)
		switch {
		case i < perHour && (err != nil || !queuedRE.MatchString(out)):
			t.Fatalf("message %d of the hour refused: %v\n%s", i+1, err, out)
		case i == perHour && (err == nil || !regexp.MustCompile(`<~?\*{0,2} *4\d\d[ -]4\.7\.`).MatchString(out)):
			t.Fatalf("message %d of the hour, over the limit of %d across the fleet: %v\n%s", i+1, perHour, err, out)
		}
	}
	var perNode []int
	for _, in := range nodes {
		perNode = append(perNode, len(in.logs.all(func(e logEntry) bool { return e.isMsg("accepted") && e.str("user") == "alice@example.test" })))
	}
	t.Logf("alice's accepted messages per node: %v", perNode)

	// The rate through HAProxy with all three nodes up: smtp-source, 20
	// sessions, one message per connection, timed to its last 250.
	const rateMsgs = 1000
	t0 := time.Now()
	if out, err := exec.Command("/usr/sbin/smtp-source", "-s", "20", "-m", fmt.Sprint(rateMsgs), "-l", "4096",
		"-f", "load@example.test", "-t", "bob@dest.test", hp.Addr).CombinedOutput(); err != nil {
		t.Fatalf("smtp-source through HAProxy: %v\n%s", err, out)
	}
	rateTook := time.Since(t0)
	var nodeShare []int
	for _, in := range nodes {
		nodeShare = append(nodeShare, len(in.logs.all(func(e logEntry) bool { return e.isMsg("accepted") && e.str("from") == "load@example.test" })))
	}
	t.Logf("through HAProxy to three nodes: %d messages of 4 KiB from 20 sessions accepted in %v, %.0f/s (per node %v; PostgreSQL, Redis, HAProxy, smtp-source and smtp-sink on the same two cores: a correctness test, not a scaling claim)",
		rateMsgs, rateTook.Round(time.Millisecond), float64(rateMsgs)/rateTook.Seconds(), nodeShare)

	// Load: smtp-source through HAProxy, in batches (a batch cut off by
	// the kill is logged and the next one goes on), and tracked messages
	// beside it.
	const batch, tracked = 50, 240
	start := time.Now()
	var loadAcked atomic.Int64
	var loadFailures []string
	var wgLoad sync.WaitGroup
	var trackedDone atomic.Bool
	wgLoad.Add(1)
	go func() {
		defer wgLoad.Done()
		for !trackedDone.Load() {
			src := exec.Command("/usr/sbin/smtp-source", "-s", "8", "-m", fmt.Sprint(batch), "-l", "4096",
				"-f", "load@example.test", "-t", "bob@dest.test", hp.Addr)
			if out, err := src.CombinedOutput(); err != nil {
				loadFailures = append(loadFailures, fmt.Sprintf("%v: %s", err, strings.TrimSpace(string(out))))
				continue
			}
			loadAcked.Add(batch)
		}
	}()
	var acked sync.Map
	var nAcked, next atomic.Int64
	var wgTracked sync.WaitGroup
	for range 6 {
		wgTracked.Add(1)
		go func() {
			defer wgTracked.Done()
			for {
				n := next.Add(1)
				if n > tracked {
					return
				}
				id := fmt.Sprintf("fleet-%d", n)
				if sendTracked(hp.Addr, id) {
					acked.Store(id, true)
					nAcked.Add(1)
				}
			}
		}()
	}

	go func() { wgTracked.Wait(); trackedDone.Store(true) }()

	// Kill node3 in the middle of the load, once it holds tracked
	// messages under its lease.
	ctx := ctxTimeout(t, 2*time.Minute)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	type held struct {
		id  string
		due time.Time
	}
	var leasedAtKill []held
	deadline := time.Now().Add(60 * time.Second)
	for {
		rows, err := conn.Query(ctx, `SELECT body, due FROM postern_messages WHERE lease_owner LIKE 'node3#%' AND due > now()`)
		if err != nil {
			t.Fatal(err)
		}
		leasedAtKill = leasedAtKill[:0]
		for rows.Next() {
			var body []byte
			var due time.Time
			rows.Scan(&body, &due)
			if m := fleetIDRE.FindSubmatch(body); m != nil {
				leasedAtKill = append(leasedAtKill, held{string(m[1]), due})
			}
		}
		rows.Close()
		if len(leasedAtKill) > 0 && nAcked.Load() >= tracked/3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(leasedAtKill) == 0 {
		t.Fatal("node3 never held a tracked message under its lease")
	}
	nodes[2].kill()
	killed := time.Now()
	t.Logf("SIGKILL to node3 with %d tracked messages under its lease (%v)", len(leasedAtKill), lease)
	wgTracked.Wait()
	wgLoad.Wait()
	elapsed := time.Since(start)
	if len(loadFailures) > 0 {
		t.Logf("smtp-source batches cut off (by the kill): %d\n%s", len(loadFailures), strings.Join(loadFailures, "\n"))
	}

	// Every acknowledged message arrives; the dead node's, after its lease.
	var arrivals map[string][]time.Time
	var files int
	deadline = time.Now().Add(lease + 90*time.Second)
	for {
		arrivals, files = sinkArrivals(t, dump)
		missing := 0
		acked.Range(func(k, _ any) bool {
			if len(arrivals[k.(string)]) == 0 {
				missing++
			}
			return true
		})
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never arrived at the sink", missing, nAcked.Load())
		}
		time.Sleep(200 * time.Millisecond)
	}
	dups := 0
	for _, ts := range arrivals {
		dups += len(ts) - 1
	}
	for _, h := range leasedAtKill {
		ts := arrivals[h.id]
		if len(ts) == 0 {
			t.Errorf("%s, leased by the dead node, never arrived", h.id)
			continue
		}
		// The dump file's time has a second's precision.
		if ts[0].Before(h.due.Add(-time.Second)) {
			t.Errorf("%s arrived at %v, before the dead node's lease ended at %v", h.id, ts[0], h.due)
		}
	}
	// Nothing is left behind: the smtp-source load is delivered too.
	deadline = time.Now().Add(90 * time.Second)
	for countRows(t, dsn, "postern_messages") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still queued", countRows(t, dsn, "postern_messages"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A drained node leaves nothing behind: its listeners close, HAProxy
	// takes it out, it exits 0, and the last node delivers what follows.
	drain := startDrain(t, nodes[1], "60s")
	hp.WaitServer(t, 1, "DOWN", 30*time.Second)
	drain.wait(t, nodes[1])
	for i := range 3 {
		if !sendTracked(hp.Addr, fmt.Sprintf("fleet-after-%d", i)) {
			t.Errorf("message %d after the drain refused", i)
		}
	}
	deadline = time.Now().Add(60 * time.Second)
	for countRows(t, dsn, "postern_messages") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still queued after the drain", countRows(t, dsn, "postern_messages"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, files = sinkArrivals(t, dump)
	t.Logf("fleet: %d of %d tracked messages acknowledged, all arrived, %d duplicates; %d files at the sink in all; node3 killed %v after the load began; %d messages acknowledged through HAProxy in %v (%.0f/s accepted, three nodes on one two-core machine with PostgreSQL and Redis: a correctness test, not a scaling claim)",
		nAcked.Load(), tracked, dups, files, killed.Sub(start).Round(time.Millisecond), loadAcked.Load()+nAcked.Load(), elapsed.Round(time.Millisecond),
		float64(loadAcked.Load()+nAcked.Load())/elapsed.Seconds())
}

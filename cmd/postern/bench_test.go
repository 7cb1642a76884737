//go:build bench

package main

// The side-by-side benchmark of issue 5 (`make bench`): the built postern
// binary and Postfix, each relaying on loopback from Postfix's smtp-source
// to one smtp-sink, one after the other in the same run, on the same disk.
//
// What is measured, per cell and repetition:
//   - accepted/s: messages / the time from starting smtp-source until it
//     exits, that is until its last 250 (and QUIT).
//   - e2e/s: messages / the time from starting smtp-source until smtp-sink
//     has counted them all. smtp-sink runs with -c, which prints running
//     counters ("mesg=N") whenever a message's final dot arrives; the
//     harness reads them from a pipe. (smtp-sink -M N is not used: it exits
//     before acknowledging message N.)
//   - accept latency p50/p99: smtp-source reports no per-message times, so
//     after each smtp-source run a small Go client (go-smtp, same sessions,
//     a quarter of the messages, one connection per message like
//     smtp-source) measures the time from sending the final "." to reading
//     the 250: how long a client waits for the message to be made durable.
//   - postern's peak RSS: VmHWM of /proc/PID/status before it is stopped. A
//     fresh postern runs for every cell and repetition, so it is the peak of
//     that cell alone.
//
// Before every measured run a small warm-up batch goes through and is
// delivered, so neither side is measured cold; Postfix runs once per grid
// (plain, DKIM RSA, DKIM Ed25519), warm, as it does in production.
// Medians over BENCH_REPS repetitions are reported; nothing is asserted.
//
// How Postfix is isolated: the harness never runs `postfix start` and never
// touches /etc/postfix or /var/spool/postfix. It writes main.cf and
// master.cf (testdata/bench/*.tmpl) into SCRATCH/postfix/conf, with
// queue_directory SCRATCH/postfix/queue and data_directory
// SCRATCH/postfix/data; `postfix -c SCRATCH/postfix/conf check` creates the
// queue's subdirectories there, and the master daemon is started directly as
// `master -c SCRATCH/postfix/conf` in the foreground, so its PID is the one
// the harness holds. smtpd listens on 127.0.0.1 only, relays everything to
// [127.0.0.3]:SINKPORT and delivers nothing locally. It is stopped with
// SIGTERM to that PID (master passes it on to its children), then the
// harness waits for master's process group (its ID is master's PID: master
// calls setsid) to empty, and SIGKILLs that group if it does not. OpenDKIM
// runs in the foreground (`opendkim -f -x CONF`) with its socket under the
// scratch queue directory, and is stopped by PID too. SCRATCH is made under
// BENCH_DIR (default /var/spool, beside Postfix's usual queue; it must not
// be world-writable, or OpenDKIM refuses its config) and removed at the
// end, after a failure too; SIGINT/SIGTERM of the test stops everything
// first, and refuses to start anything once that teardown has begun.
// Children also get a parent-death signal, a best effort for a harness
// killed with SIGKILL (smtp-sink drops privileges, which clears it; after
// `kill -9` check for leftovers with `ps -ef | grep postern-bench-`).
//
// It needs root (Postfix's master and smtp-sink -u), Postfix, OpenDKIM and
// openssl: `make bench-deps` installs them.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"

	"postern/queue/postgres/pgtest"
	"postern/relay/relaytest"
)

const (
	benchSender    = "alice@bench.test" // smtp-source puts it in From: too, so DKIM signs it
	benchRecipient = "bob@dest.test"
	benchSinkIP    = "127.0.0.3"
	benchHelo      = "client.bench.test"
)

// errBenchSkipped marks the Postfix samples that BENCH_ONLY=postern left out.
var errBenchSkipped = errors.New("skipped (BENCH_ONLY)")

// benchOptions are the environment knobs.
type benchOptions struct {
	reps    int
	quick   bool
	bin     string   // postern binary (BENCH_BIN, else the one TestMain built)
	out     string   // results file
	command string   // how the run was started, for the results file
	dir     string   // scratch parent
	cells   []string // BENCH_CELLS: run only cells whose name contains one of these
	profile string   // BENCH_PROFILE: directory for postern CPU profiles, one per run
	only    string   // BENCH_ONLY=postern: skip Postfix (for profiling; no ratios)
}

// wants reports whether the cell filter keeps the cell.
func (o benchOptions) wants(name string) bool {
	if len(o.cells) == 0 {
		return true
	}
	for _, c := range o.cells {
		if strings.Contains(name, c) {
			return true
		}
	}
	return false
}

func benchOptionsFromEnv(t *testing.T) benchOptions {
	o := benchOptions{reps: 3, bin: binPath, out: "../../bin/bench-results.md", dir: "/var/spool"}
	o.quick = os.Getenv("BENCH_QUICK") == "1"
	if o.quick {
		o.reps = 1
	}
	if v := os.Getenv("BENCH_REPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BENCH_REPS=%q: want a positive integer", v)
		}
		o.reps = n
	}
	for env, p := range map[string]*string{"BENCH_BIN": &o.bin, "BENCH_OUT": &o.out, "BENCH_DIR": &o.dir} {
		if v := os.Getenv(env); v != "" {
			*p = v
		}
	}
	if v := os.Getenv("BENCH_CELLS"); v != "" {
		o.cells = strings.Split(v, ",")
	}
	o.profile = os.Getenv("BENCH_PROFILE")
	o.only = os.Getenv("BENCH_ONLY")
	if o.only != "" && o.only != "postern" {
		t.Fatalf("BENCH_ONLY=%q: the only value is postern", o.only)
	}
	o.command = os.Getenv("BENCH_COMMAND")
	if o.command == "" {
		o.command = "go test -tags bench -run '^TestBenchVsPostfix$' -v ./cmd/postern/"
	}
	var knobs []string
	for _, k := range []string{"BENCH_REPS", "BENCH_QUICK", "BENCH_DIR", "BENCH_CELLS", "BENCH_ONLY"} {
		if v := os.Getenv(k); v != "" {
			knobs = append(knobs, k+"="+v)
		}
	}
	if len(knobs) > 0 {
		o.command = strings.Join(knobs, " ") + " " + o.command
	}
	return o
}

// benchCell is one point of a grid.
type benchCell struct {
	name     string
	size     int // smtp-source -l: body bytes
	sessions int
	msgs     int
	dkim     string // "", "rsa" or "ed25519"
	// pg puts postern's queue in PostgreSQL (a cluster of the bench's
	// own, a new database per run) instead of bbolt.
	pg bool
}

// benchSample is one repetition of one cell on one system.
type benchSample struct {
	accepted, e2e float64 // messages per second
	p50, p99      time.Duration
	rssKiB        int64 // postern only
	// cpu is the CPU time per message of the measured run (the
	// smtp-source run until the sink has every message), of postern and,
	// for a PostgreSQL cell, of the database server's processes; syncs
	// counts fsync and fdatasync calls per message on the whole machine
	// (perf; the sink and the load generator make none). -1: unknown.
	cpu   time.Duration
	dbCPU time.Duration // the same for PostgreSQL's processes; -1: none
	syncs float64
	// pgTop, for a PostgreSQL cell, is where the database's time went:
	// pg_stat_statements' busiest statements over the whole run.
	pgTop string
	err   error
}

func TestBenchVsPostfix(t *testing.T) {
	o := benchOptionsFromEnv(t)
	if os.Geteuid() != 0 {
		t.Fatal("make bench needs root: Postfix's master daemon and smtp-sink -u run only as root")
	}
	for _, p := range []string{"/usr/sbin/smtp-source", "/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/master", "/usr/sbin/postfix", "/usr/sbin/opendkim"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing: run `make bench-deps`", p)
		}
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is missing: run `make bench-deps`")
	}
	e := newBenchEnv(t, o)

	n := func(full, quick int) int {
		if o.quick {
			return quick
		}
		return full
	}
	var plain []benchCell
	for _, size := range []int{4 << 10, 100 << 10} {
		for _, s := range []int{1, 20, 100} {
			m := n(2000, 200)
			if size > 4<<10 {
				m = n(500, 100)
			}
			plain = append(plain, benchCell{name: fmt.Sprintf("%d KiB, %s", size>>10, benchSessionsName(s)), size: size, sessions: s, msgs: m})
		}
	}
	var dkimCells []benchCell
	for _, alg := range []string{"rsa", "ed25519"} {
		for _, s := range []int{1, 20} {
			dkimCells = append(dkimCells, benchCell{name: fmt.Sprintf("DKIM %s, 4 KiB, %s", benchAlgName(alg), benchSessionsName(s)),
				size: 4 << 10, sessions: s, msgs: n(1000, 200), dkim: alg})
		}
	}

	type row struct {
		c               benchCell
		postern, postfx []benchSample
	}
	runGrid := func(cells []benchCell, dkim string) []row {
		cells = slices.DeleteFunc(slices.Clone(cells), func(c benchCell) bool { return !o.wants(c.name) })
		if len(cells) == 0 {
			return nil
		}
		var pf *benchPostfix
		if o.only == "" {
			pf = e.startPostfix(benchPostfixOpts{dkim: dkim})
			defer pf.stop()
		}
		var rows []row
		for _, c := range cells {
			r := row{c: c}
			for rep := 1; rep <= o.reps; rep++ {
				s := e.runPostern(c)
				t.Logf("%-32s rep %d postern: %s", c.name, rep, s)
				r.postern = append(r.postern, s)
				if pf == nil {
					r.postfx = append(r.postfx, benchSample{err: errBenchSkipped})
					continue
				}
				s = e.runPostfix(pf, c)
				t.Logf("%-32s rep %d Postfix: %s", c.name, rep, s)
				r.postfx = append(r.postfx, s)
			}
			rows = append(rows, r)
		}
		return rows
	}

	// The PostgreSQL queue (issue 17): one node, side by side with the
	// bbolt cells above and Postfix, in the same run.
	var pgCells []benchCell
	for _, s := range []int{1, 20} {
		pgCells = append(pgCells, benchCell{name: fmt.Sprintf("PostgreSQL queue, 4 KiB, %s", benchSessionsName(s)),
			size: 4 << 10, sessions: s, msgs: n(2000, 200), pg: true})
	}

	var rows []row
	rows = append(rows, runGrid(append(plain, pgCells...), "")...)
	for _, alg := range []string{"rsa", "ed25519"} {
		var cells []benchCell
		for _, c := range dkimCells {
			if c.dkim == alg {
				cells = append(cells, c)
			}
		}
		rows = append(rows, runGrid(cells, alg)...)
	}

	// The memory cell: postern alone, big messages from many sessions.
	memCell := benchCell{name: "10 MiB, 100 sessions", size: 10 << 20, sessions: 100, msgs: 100}
	if o.quick {
		memCell = benchCell{name: "10 MiB, 20 sessions (quick)", size: 10 << 20, sessions: 20, msgs: 20}
	}
	var mem []benchSample
	for rep := 1; rep <= o.reps && o.wants(memCell.name); rep++ {
		s := e.runPostern(memCell)
		t.Logf("%-32s rep %d postern: %s", memCell.name, rep, s)
		mem = append(mem, s)
	}

	// The report.
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "| cell | postern accepted/s | postern e2e/s | Postfix accepted/s | Postfix e2e/s | accepted ratio | e2e ratio | postern accept p50 / p99 | Postfix accept p50 / p99 | postern peak RSS | postern CPU/msg | Postfix CPU/msg | fsyncs/msg postern / Postfix |\n")
	fmt.Fprintf(&tbl, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		pa, pe, pp50, pp99, prss, perr := benchSummarize(r.postern)
		fa, fe, fp50, fp99, _, ferr := benchSummarize(r.postfx)
		name := r.c.name
		if r.c.dkim != "" {
			name += " (vs Postfix + OpenDKIM)"
		}
		fmt.Fprintf(&tbl, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", name,
			benchRate(pa, perr), benchRate(pe, perr), benchRate(fa, ferr), benchRate(fe, ferr),
			benchRatio(pa, fa, perr, ferr), benchRatio(pe, fe, perr, ferr),
			benchLat(pp50, pp99, perr), benchLat(fp50, fp99, ferr), benchMiB(prss, perr),
			benchCPUPerMsg(r.postern), benchCPUPerMsg(r.postfx), benchSyncs(r.postern), benchSyncs(r.postfx))
	}
	if len(mem) > 0 {
		ma, me, mp50, mp99, mrss, merr := benchSummarize(mem)
		fmt.Fprintf(&tbl, "| %s (postern only) | %s | %s | – | – | – | – | %s | – | %s | %s | – | %s / – |\n", memCell.name,
			benchRate(ma, merr), benchRate(me, merr), benchLat(mp50, mp99, merr), benchMiB(mrss, merr), benchCPUPerMsg(mem), benchSyncs(mem))
	}

	var errs []string
	for _, r := range rows {
		for _, s := range append(append([]benchSample(nil), r.postern...), r.postfx...) {
			if s.err != nil && !errors.Is(s.err, errBenchSkipped) {
				errs = append(errs, fmt.Sprintf("- %s: %v", r.c.name, s.err))
			}
		}
	}
	for _, s := range mem {
		if s.err != nil {
			errs = append(errs, fmt.Sprintf("- %s: %v", memCell.name, s.err))
		}
	}

	for _, r := range rows {
		if !r.c.pg {
			continue
		}
		for i := len(r.postern) - 1; i >= 0; i-- {
			if r.postern[i].pgTop != "" {
				fmt.Fprintf(&tbl, "\nWhere the PostgreSQL queue's time went in %q (pg_stat_statements, the last repetition, warm-up and latency runs included):\n\n%s", r.c.name, r.postern[i].pgTop)
				break
			}
		}
	}
	report := e.header(o, plain, dkimCells, memCell) + tbl.String()
	if len(errs) > 0 {
		report += "\nFailed runs (left out of the medians):\n" + strings.Join(errs, "\n") + "\n"
	}
	fmt.Print("\n" + report)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err == nil {
		err = os.WriteFile(o.out, []byte(report), 0o644)
		if err != nil {
			t.Errorf("writing %s: %v", o.out, err)
		} else {
			fmt.Printf("\nwritten to %s\n", o.out)
		}
	}
	if len(errs) > 0 {
		t.Errorf("%d runs failed:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

func (s benchSample) String() string {
	if s.err != nil {
		return "FAILED: " + s.err.Error()
	}
	out := fmt.Sprintf("accepted %.0f/s, e2e %.0f/s, accept p50 %s p99 %s", s.accepted, s.e2e, benchMS(s.p50), benchMS(s.p99))
	if s.rssKiB > 0 {
		out += fmt.Sprintf(", peak RSS %.1f MiB", float64(s.rssKiB)/1024)
	}
	return out
}

// benchSummarize returns the medians of the successful samples, the largest
// RSS, and an error when none succeeded.
func benchSummarize(ss []benchSample) (acc, e2e float64, p50, p99 time.Duration, rss int64, err error) {
	var a, e []float64
	var l50, l99 []time.Duration
	for _, s := range ss {
		if s.err != nil {
			err = s.err
			continue
		}
		a, e = append(a, s.accepted), append(e, s.e2e)
		l50, l99 = append(l50, s.p50), append(l99, s.p99)
		rss = max(rss, s.rssKiB)
	}
	if len(a) == 0 {
		return 0, 0, 0, 0, 0, err
	}
	return benchMedian(a), benchMedian(e), benchMedian(l50), benchMedian(l99), rss, nil
}

func benchMedian[T float64 | time.Duration](v []T) T {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func benchRate(v float64, err error) string {
	if err != nil {
		return "failed"
	}
	return fmt.Sprintf("%.0f", v)
}

func benchRatio(a, b float64, errA, errB error) string {
	if errA != nil || errB != nil || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func benchLat(p50, p99 time.Duration, err error) string {
	if err != nil {
		return "failed"
	}
	return benchMS(p50) + " / " + benchMS(p99)
}

func benchMS(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func benchMiB(kib int64, err error) string {
	if err != nil || kib == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(kib)/1024)
}

func benchSessionsName(n int) string {
	if n == 1 {
		return "1 session"
	}
	return fmt.Sprintf("%d sessions", n)
}

func benchAlgName(alg string) string {
	if alg == "rsa" {
		return "RSA-2048"
	}
	return "Ed25519"
}

// benchEnv is what lives for the whole run: the scratch directory, the DNS
// server, the sink, the keys, and every process started (to stop them all).
type benchEnv struct {
	t        *testing.T
	o        benchOptions
	scratch  string
	dns      *relaytest.DNS
	sink     *benchSink
	sinkPort int
	seq      int

	posternKeys  map[string]string // alg -> key file made by `postern dkim keygen`
	opendkimKeys map[string]string // alg -> key file made by openssl

	mu       sync.Mutex
	procs    []*benchProc
	closed   bool // set by close: start refuses from then on
	teardown sync.Once
}

func newBenchEnv(t *testing.T, o benchOptions) *benchEnv {
	if fi, err := os.Stat(o.dir); err != nil || fi.Mode().Perm()&0o002 != 0 {
		t.Fatalf("BENCH_DIR %s: must exist and not be world-writable (OpenDKIM refuses configs below such a directory): %v", o.dir, err)
	}
	scratch, err := os.MkdirTemp(o.dir, "postern-bench-")
	if err != nil {
		t.Fatal(err)
	}
	// Postfix's daemons (user postfix) and smtp-sink (nobody) must reach
	// their directories inside.
	os.Chmod(scratch, 0o755)
	e := &benchEnv{t: t, o: o, scratch: scratch, posternKeys: map[string]string{}, opendkimKeys: map[string]string{}}
	t.Cleanup(e.close)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	stopSig := make(chan struct{})
	t.Cleanup(func() { signal.Stop(sig); close(stopSig) })
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\nbench: %v: stopping every process started and removing %s\n", s, scratch)
			e.close()
			os.Exit(1)
		case <-stopSig:
		}
	}()

	e.sinkPort = relaytest.FreePort(t, benchSinkIP)
	e.dns = relaytest.NewDNS(t, relaytest.Zone{
		"dest.test":    {MX: []relaytest.MX{{Pref: 10, Host: "mx.dest.test"}}},
		"mx.dest.test": {A: []string{benchSinkIP}},
	})
	e.dns.SetTTL(300) // a real zone's TTL, so postern's DNS cache behaves as in production
	e.sink = e.startSink()

	keys := filepath.Join(scratch, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{"rsa", "ed25519"} {
		f := filepath.Join(keys, "postern-"+alg+".key")
		if out, err := exec.Command(o.bin, "dkim", "keygen", "--domain", "bench.test", "--selector", "s1",
			"--algorithm", alg, "--out", f).CombinedOutput(); err != nil {
			t.Fatalf("postern dkim keygen: %v\n%s", err, out)
		}
		e.posternKeys[alg] = f
		f = filepath.Join(keys, "opendkim-"+alg+".pem")
		args := []string{"genpkey", "-algorithm", "ed25519", "-out", f}
		if alg == "rsa" {
			args = []string{"genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048", "-out", f}
		}
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl genpkey: %v\n%s", err, out)
		}
		os.Chmod(f, 0o600)
		e.opendkimKeys[alg] = f
	}
	return e
}

// close stops every process still running, newest first, and removes the
// scratch directory. It runs once, from Cleanup or from a signal.
func (e *benchEnv) close() {
	e.teardown.Do(func() {
		// Holding the lock waits for a start in progress; after it, no
		// process can be started behind the teardown's back.
		e.mu.Lock()
		e.closed = true
		procs := slices.Clone(e.procs)
		e.mu.Unlock()
		for _, p := range slices.Backward(procs) {
			p.stop()
		}
		os.RemoveAll(e.scratch)
	})
}

// benchProc is one long-running child process.
type benchProc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	group   bool // the process leads its own process group (Postfix's master)
	stopped sync.Once
}

// start runs cmd and remembers it, so close stops it.
func (e *benchEnv) start(name string, cmd *exec.Cmd, deathSig syscall.Signal, group bool) *benchProc {
	e.t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: deathSig}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		// Interrupted: the signal handler is about to exit the process.
		select {}
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting %s: %v", name, err)
	}
	p := &benchProc{name: name, cmd: cmd, done: make(chan struct{}), group: group}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.procs = append(e.procs, p)
	return p
}

// stop sends SIGTERM to the process's PID, waits, and SIGKILLs it after 30
// seconds. For a group leader it then waits for the group to empty.
func (p *benchProc) stop() {
	p.stopped.Do(func() {
		pid := p.cmd.Process.Pid
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			fmt.Fprintf(os.Stderr, "bench: %s (pid %d) ignored SIGTERM for 30s: SIGKILL\n", p.name, pid)
			p.cmd.Process.Kill()
			<-p.done
		}
		if !p.group {
			return
		}
		// Postfix's master has passed SIGTERM on to its children; give them
		// time to exit, then kill what is left of its group.
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(-pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if syscall.Kill(-pid, 0) == nil {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
}

func (p *benchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// dir makes a new directory in the scratch directory.
func (e *benchEnv) dir(prefix string) string {
	e.seq++
	d := filepath.Join(e.scratch, fmt.Sprintf("%s-%03d", prefix, e.seq))
	if err := os.MkdirAll(d, 0o755); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *benchEnv) render(name, dst string, data any) {
	e.t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "bench", name))
	if err != nil {
		e.t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(dst, b.Bytes(), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// benchSink is smtp-sink with -c: it discards every message and prints
// running counters, which the harness reads to know how many arrived.
type benchSink struct {
	mu      sync.Mutex
	count   int
	waiters []benchSinkWaiter
	exited  chan struct{}
}

type benchSinkWaiter struct {
	target int
	at     chan time.Time
}

func (e *benchEnv) startSink() *benchSink {
	s := &benchSink{exited: make(chan struct{})}
	cmd := exec.Command("/usr/sbin/smtp-sink", "-u", "nobody", "-c",
		fmt.Sprintf("%s:%d", benchSinkIP, e.sinkPort), "1024")
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	e.start("smtp-sink", cmd, syscall.SIGKILL, false)
	go s.read(out)
	// Ready when it accepts connections.
	if err := waitGreeting(fmt.Sprintf("%s:%d", benchSinkIP, e.sinkPort), 10*time.Second, nil); err != nil {
		e.t.Fatalf("smtp-sink: %v\n%s", err, stderr.String())
	}
	return s
}

// read parses "\rsess=N quit=N mesg=N" updates.
func (s *benchSink) read(r io.Reader) {
	defer close(s.exited)
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		_, v, ok := strings.Cut(sc.Text(), "mesg=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		now := time.Now()
		s.mu.Lock()
		s.count = max(s.count, n)
		kept := s.waiters[:0]
		for _, w := range s.waiters {
			if s.count >= w.target {
				w.at <- now
			} else {
				kept = append(kept, w)
			}
		}
		s.waiters = kept
		s.mu.Unlock()
	}
}

// expect registers, before the messages are sent, a wait for n more
// messages than counted now; the channel gets the time the last arrived.
func (s *benchSink) expect(n int) <-chan time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := benchSinkWaiter{target: s.count + n, at: make(chan time.Time, 1)}
	s.waiters = append(s.waiters, w)
	return w.at
}

func (s *benchSink) counted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// benchTarget is a running system under test.
type benchTarget struct {
	name   string
	addr   string
	proc   *benchProc
	logTip string // where its log is, for error messages
	// pids are the processes whose CPU time (theirs, their descendants'
	// and their reaped children's) is the system's.
	pids func() []int
	// dbPids, for a PostgreSQL cell, are the database server's.
	dbPids func() []int
}

// runPostern runs one cell against a fresh postern process.
func (e *benchEnv) runPostern(c benchCell) benchSample {
	dir := e.dir("postern")
	data := map[string]any{
		"Data": filepath.Join(dir, "data"), "Users": filepath.Join(dir, "users"),
		"Listen": freeAddr(e.t), "Resolver": e.dns.Addr(), "SinkPort": e.sinkPort,
		"Selector": "s1", "KeyFile": e.posternKeys[c.dkim], "DSNFile": "",
	}
	var pgProcs func() []int
	var dsn string
	if c.pg {
		dsn = pgtest.DB(e.t)
		benchPGExec(e.t, dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
		dsnFile := filepath.Join(dir, "dsn")
		if err := os.WriteFile(dsnFile, []byte(dsn), 0o600); err != nil {
			e.t.Fatal(err)
		}
		data["DSNFile"] = dsnFile
		pg := pgtest.Shared(e.t)
		pgProcs = func() []int { return []int{pg.PID()} }
	}
	cfg := filepath.Join(dir, "postern.yaml")
	e.render("postern.yaml.tmpl", cfg, data)
	logf, err := os.Create(filepath.Join(dir, "postern.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.o.bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if e.o.profile != "" {
		prof := filepath.Join(e.o.profile, fmt.Sprintf("postern-%03d.pprof", e.seq))
		cmd.Env = append(os.Environ(), "POSTERN_CPUPROFILE="+prof)
		e.t.Logf("CPU profile: %s", prof)
	}
	p := e.start("postern", cmd, syscall.SIGKILL, false)
	defer p.stop()
	tg := benchTarget{name: "postern", addr: data["Listen"].(string), proc: p, logTip: logf.Name(),
		pids: func() []int { return []int{p.cmd.Process.Pid} }, dbPids: pgProcs}
	if err := waitGreeting(tg.addr, 30*time.Second, p.exited); err != nil {
		return benchSample{err: fmt.Errorf("postern did not start: %v (log %s)", err, benchTail(logf.Name()))}
	}
	s := e.measure(tg, c)
	if s.err == nil {
		s.rssKiB = benchVmHWM(p.cmd.Process.Pid)
	}
	if dsn != "" && s.err == nil {
		s.pgTop = benchPGTop(e.t, dsn, c.msgs)
	}
	return s
}

func benchPGExec(t *testing.T, dsn, sql string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// benchPGTop lists the statements the database spent most time on in
// this run's database, per message of the measured run.
func benchPGTop(t *testing.T, dsn string, msgs int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err.Error()
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, mean_exec_time, regexp_replace(query, '\s+', ' ', 'g')
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT 8`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	b.WriteString("| calls | total ms | mean ms | statement |\n|---:|---:|---:|---|\n")
	for rows.Next() {
		var calls int64
		var total, mean float64
		var q string
		if err := rows.Scan(&calls, &total, &mean, &q); err != nil {
			return err.Error()
		}
		if len(q) > 90 {
			q = q[:90] + "…"
		}
		fmt.Fprintf(&b, "| %d | %.0f | %.3f | `%s` |\n", calls, total, mean, strings.ReplaceAll(q, "|", "\\|"))
	}
	return b.String()
}

// benchPostfix is a running Postfix instance (and its OpenDKIM and
// Dovecot, if any).
type benchPostfix struct {
	addr     string
	master   *benchProc
	opendkim *benchProc
	dovecot  *benchProc
	maillog  string
	// With SASL: the submission (STARTTLS) and submissions (implicit TLS)
	// listeners.
	submission, submissions string
}

func (p *benchPostfix) stop() {
	p.master.stop()
	for _, q := range []*benchProc{p.opendkim, p.dovecot} {
		if q != nil {
			q.stop()
		}
	}
}

// benchSASL configures Postfix with submission listeners whose AUTH is
// Dovecot's (the usual pairing): the certificate and key for TLS, and the
// one user with its password, which Dovecot stores in a passwd-file with
// SHA512-CRYPT (Dovecot never caches passwd-file lookups).
type benchSASL struct {
	certFile, keyFile string
	user, password    string
}

// benchPostfixOpts say what a Postfix instance has beyond the plain relay
// to the sink.
type benchPostfixOpts struct {
	dkim string     // OpenDKIM as a milter: "rsa" or "ed25519"
	sasl *benchSASL // submission listeners with Dovecot SASL
	// transport, when set, is the path of a texthash transport map that
	// routes each domain to its own next hop, in place of relayhost.
	transport string
}

// startPostfix writes a Postfix configuration into a scratch directory and
// starts its master daemon (see the comment at the top of this file), with
// what o asks for.
func (e *benchEnv) startPostfix(o benchPostfixOpts) *benchPostfix {
	dkim, sasl := o.dkim, o.sasl
	e.t.Helper()
	dir := e.dir("postfix")
	conf, queue, data := filepath.Join(dir, "conf"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := benchChownPostfix(data); err != nil {
		e.t.Fatal(err)
	}
	pf := &benchPostfix{addr: freeAddr(e.t), maillog: filepath.Join(dir, "maillog")}
	milter := ""
	if dkim != "" {
		sockDir := filepath.Join(queue, "opendkim")
		if err := os.Mkdir(sockDir, 0o755); err != nil {
			e.t.Fatal(err)
		}
		milter = filepath.Join(sockDir, "opendkim.sock")
		alg := "rsa-sha256"
		if dkim == "ed25519" {
			alg = "ed25519-sha256"
		}
		odConf := filepath.Join(dir, "opendkim.conf")
		e.render("opendkim.conf.tmpl", odConf, map[string]any{
			"Selector": "s1", "KeyFile": e.opendkimKeys[dkim], "Algorithm": alg, "Socket": milter})
		var out bytes.Buffer
		cmd := exec.Command("/usr/sbin/opendkim", "-f", "-x", odConf)
		cmd.Stdout, cmd.Stderr = &out, &out
		pf.opendkim = e.start("opendkim", cmd, syscall.SIGKILL, false)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(milter); err == nil {
				break
			}
			if pf.opendkim.exited() || time.Now().After(deadline) {
				e.t.Fatalf("opendkim did not create its socket %s:\n%s", milter, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	sinkHost := benchSinkIP
	mainData := map[string]any{
		"Queue": queue, "Data": data, "SinkHost": sinkHost, "SinkPort": e.sinkPort, "Transport": o.transport,
		"Maillog": pf.maillog, "Milter": milter}
	masterData := map[string]any{"Listen": pf.addr}
	if sasl != nil {
		pf.submission, pf.submissions = freeAddr(e.t), freeAddr(e.t)
		mainData["CertFile"], mainData["KeyFile"] = sasl.certFile, sasl.keyFile
		masterData["Submission"], masterData["Submissions"] = pf.submission, pf.submissions
	}
	e.render("postfix-main.cf.tmpl", filepath.Join(conf, "main.cf"), mainData)
	e.render("postfix-master.cf.tmpl", filepath.Join(conf, "master.cf"), masterData)
	// Creates the queue's subdirectories with their owners and modes.
	if out, err := exec.Command("/usr/sbin/postfix", "-c", conf, "check").CombinedOutput(); err != nil {
		e.t.Fatalf("postfix -c %s check: %v\n%s%s", conf, err, out, benchTail(pf.maillog))
	}
	if sasl != nil {
		pf.dovecot = e.startDovecot(dir, filepath.Join(queue, "private", "auth"), sasl)
	}
	var out bytes.Buffer
	cmd := exec.Command("/usr/lib/postfix/sbin/master", "-c", conf)
	cmd.Stdout, cmd.Stderr = &out, &out
	// SIGTERM, not SIGKILL: master passes it on to its children.
	pf.master = e.start("postfix master", cmd, syscall.SIGTERM, true)
	if err := waitGreeting(pf.addr, 30*time.Second, pf.master.exited); err != nil {
		pf.stop()
		e.t.Fatalf("Postfix did not start: %v\n%s%s", err, out.String(), benchTail(pf.maillog))
	}
	return pf
}

func benchChownPostfix(path string) error {
	out, err := exec.Command("chown", "postfix", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chown postfix %s: %v: %s", path, err, out)
	}
	return nil
}

func (e *benchEnv) runPostfix(pf *benchPostfix, c benchCell) benchSample {
	if pf.master.exited() {
		return benchSample{err: fmt.Errorf("Postfix's master is no longer running (%s)", benchTail(pf.maillog))}
	}
	return e.measure(benchTarget{name: "Postfix", addr: pf.addr, proc: pf.master, logTip: pf.maillog, pids: func() []int {
		pids := []int{pf.master.cmd.Process.Pid}
		for _, p := range []*benchProc{pf.opendkim, pf.dovecot} {
			if p != nil {
				pids = append(pids, p.cmd.Process.Pid)
			}
		}
		return pids
	}}, c)
}

// measure warms tg up, then sends c with smtp-source and times acceptance
// and delivery, then measures accept latency with the Go client.
func (e *benchEnv) measure(tg benchTarget, c benchCell) benchSample {
	fail := func(format string, args ...any) benchSample {
		return benchSample{err: fmt.Errorf("%s: %s (log: %s)", tg.name, fmt.Sprintf(format, args...), benchTail(tg.logTip))}
	}
	e2eTimeout := func(accepted time.Duration) time.Duration { return max(2*time.Minute, 20*accepted) }

	// Warm-up: a few messages through the whole path.
	warm := min(c.msgs, 20)
	arrived := e.sink.expect(warm)
	if _, err := benchSmtpSource(tg.addr, min(c.sessions, 10), warm, min(c.size, 100<<10)); err != nil {
		return fail("warm-up: %v", err)
	}
	select {
	case <-arrived:
	case <-time.After(2 * time.Minute):
		return fail("warm-up: the sink counted %d messages, waiting for more", e.sink.counted())
	}

	s := benchSample{cpu: -1, dbCPU: -1, syncs: -1}
	arrived = e.sink.expect(c.msgs)
	cpu0, db0 := benchCPUTime(tg.pids), benchCPUTime(tg.dbPids)
	syncs := benchStartSyncCount(e.dir("perf"))
	start := time.Now()
	accepted, err := benchSmtpSource(tg.addr, c.sessions, c.msgs, c.size)
	if err != nil {
		syncs()
		return fail("smtp-source: %v", err)
	}
	s.accepted = float64(c.msgs) / accepted.Seconds()
	select {
	case at := <-arrived:
		s.e2e = float64(c.msgs) / at.Sub(start).Seconds()
	case <-time.After(e2eTimeout(accepted)):
		syncs()
		return fail("not all delivered within %s: the sink counted %d", e2eTimeout(accepted), e.sink.counted())
	}
	if n := syncs(); n >= 0 {
		s.syncs = float64(n) / float64(c.msgs)
	}
	if cpu0 >= 0 {
		if cpu1 := benchCPUTime(tg.pids); cpu1 >= 0 {
			s.cpu = (cpu1 - cpu0) / time.Duration(c.msgs)
		}
	}
	if db0 >= 0 {
		if db1 := benchCPUTime(tg.dbPids); db1 >= 0 {
			s.dbCPU = (db1 - db0) / time.Duration(c.msgs)
		}
	}

	// Accept latency with the Go client, then let the queue drain again.
	n := max(c.msgs/4, min(c.msgs, 50))
	arrived = e.sink.expect(n)
	lats, err := benchGoSource(tg.addr, c.sessions, n, c.size)
	if err != nil {
		return fail("latency client: %v", err)
	}
	select {
	case <-arrived:
	case <-time.After(e2eTimeout(time.Minute)):
		return fail("latency run: not all delivered; the sink counted %d", e.sink.counted())
	}
	slices.Sort(lats)
	s.p50, s.p99 = lats[(len(lats)-1)*50/100], lats[(len(lats)-1)*99/100]
	return s
}

// benchSmtpSource runs Postfix's load generator and returns how long it took:
// benchSessionsName parallel connections, one message per connection, msgs in all.
func benchSmtpSource(addr string, sessions, msgs, size int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/sbin/smtp-source", "-s", strconv.Itoa(sessions),
		"-m", strconv.Itoa(msgs), "-l", strconv.Itoa(size), "-f", benchSender, "-t", benchRecipient,
		"-M", benchHelo, addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%v: %s", err, strings.TrimSpace(out.String()))
	}
	return d, nil
}

// benchGoSource sends msgs messages over sessions parallel connections, one
// message per connection as smtp-source does, and returns for each the time
// from the final "." to the 250.
func benchGoSource(addr string, sessions, msgs, size int) ([]time.Duration, error) {
	body := benchMessage(size)
	jobs := make(chan int, msgs)
	for i := range msgs {
		jobs <- i
	}
	close(jobs)
	var (
		mu    sync.Mutex
		lats  []time.Duration
		first error
		wg    sync.WaitGroup
	)
	for range min(sessions, msgs) {
		wg.Go(func() {
			for range jobs {
				d, err := benchSendOne(addr, body)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				if err == nil {
					lats = append(lats, d)
				}
				stop := first != nil
				mu.Unlock()
				if stop {
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return lats, nil
}

func benchSendOne(addr string, msg []byte) (time.Duration, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Hello(benchHelo); err != nil {
		return 0, err
	}
	if err := c.Mail(benchSender, nil); err != nil {
		return 0, err
	}
	if err := c.Rcpt(benchRecipient, nil); err != nil {
		return 0, err
	}
	w, err := c.Data()
	if err != nil {
		return 0, err
	}
	if _, err := w.Write(msg); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := w.Close(); err != nil { // sends "." and reads the reply
		return 0, err
	}
	d := time.Since(start)
	return d, c.Quit()
}

// benchMessage is a message like smtp-source's: a few headers and size
// bytes of body in lines of 80 characters.
func benchMessage(size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nDate: %s\r\nMessage-Id: <%d.bench@%s>\r\nSubject: bench\r\n\r\n",
		benchSender, benchRecipient, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), benchHelo)
	line := strings.Repeat("X", 78) + "\r\n"
	for n := 0; n < size; n += len(line) {
		b.WriteString(line)
	}
	return b.Bytes()
}

// benchVmHWM is the peak resident set size of pid in KiB (0 if unknown).
func benchVmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// benchTail returns the last lines of a log file, for error messages.
func benchTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n" + strings.Join(lines, "\n")
}

// header describes the run: date, machine, disk, versions, command, method.
func (e *benchEnv) header(o benchOptions, plain, dkimCells []benchCell, mem benchCell) string {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("(%s: %v)", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var b strings.Builder
	b.WriteString("# postern vs Postfix on this machine\n\n")
	if o.quick {
		b.WriteString("**BENCH_QUICK=1: one repetition with small counts, a smoke test of the harness, not a measurement.**\n\n")
	}
	fmt.Fprintf(&b, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Command: `%s`\n", o.command)
	fmt.Fprintf(&b, "- Machine: %s cores (nproc), %s, Go %s, %s\n", run("nproc"), cpu, strings.TrimPrefix(runtime.Version(), "go"), run("uname", "-srm"))
	fmt.Fprintf(&b, "- Versions: %s; Postfix %s; %s\n", run(o.bin, "version"), run("/usr/sbin/postconf", "-d", "-h", "mail_version"),
		strings.SplitN(run("/usr/sbin/opendkim", "-V"), "\n", 2)[0])
	fmt.Fprintf(&b, "- Repetitions per cell: %d (medians; peak RSS is the largest)\n", o.reps)
	fmt.Fprintf(&b, "- Messages per run: %s; DKIM cells %d; memory cell %d × %d MiB\n",
		benchCounts(plain), dkimCells[0].msgs, mem.msgs, mem.size>>20)
	fmt.Fprintf(&b, "- Disk of the data and queue directories (%s):\n\n```\n%s\n\n%s\n```\n\n", e.scratch,
		run("findmnt", "-T", e.scratch), run("df", "-h", e.scratch))
	b.WriteString("Both relay `smtp-source` → server → `smtp-sink` on loopback, one connection per message, " +
		"4 KiB or 100 KiB bodies; both answer 250 only after the message is synced to disk. " +
		"accepted/s: until smtp-source's last 250; e2e/s: until smtp-sink has counted every message. " +
		"Accept latency: final \".\" to 250, from a Go client with the same sessions sending a quarter as many messages after each run. " +
		"postern runs fresh per cell and repetition; Postfix (3 instances: plain, + OpenDKIM RSA, + OpenDKIM Ed25519, milter over a unix socket) stays up, warm; " +
		"each run is preceded by a delivered warm-up batch. Postfix uses its defaults except: loopback only, relayhost = the sink, no local delivery, " +
		"no chroot, no reverse DNS lookup of clients, log to a file. See cmd/postern/bench_test.go.\n\n")
	return b.String()
}

func benchCounts(cells []benchCell) string {
	var parts []string
	seen := map[int]bool{}
	for _, c := range cells {
		if !seen[c.size] {
			seen[c.size] = true
			parts = append(parts, fmt.Sprintf("%d (%d KiB)", c.msgs, c.size>>10))
		}
	}
	return strings.Join(parts, ", ")
}

// writeBenchReport prints a benchmark's report (with its failed runs, left
// out of the medians), writes it next to o.out with the given suffix, and
// fails the test if any run failed.
func writeBenchReport(t *testing.T, o benchOptions, suffix, report string, errs []string) {
	if len(errs) > 0 {
		report += "\nFailed runs (left out of the medians):\n" + strings.Join(errs, "\n") + "\n"
	}
	fmt.Print("\n" + report)
	out := strings.TrimSuffix(o.out, ".md") + suffix
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Errorf("writing %s: %v", out, err)
	} else if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		t.Errorf("writing %s: %v", out, err)
	} else {
		fmt.Printf("\nwritten to %s\n", out)
	}
	if len(errs) > 0 {
		t.Errorf("%d runs failed:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

// benchCPUTime is the CPU time used so far by the processes roots() names
// and all their descendants, including the children they have reaped
// (cutime, cstime: Postfix's smtpd and PostgreSQL's backends come and
// go). -1 when /proc cannot tell.
func benchCPUTime(roots func() []int) time.Duration {
	if roots == nil {
		return -1
	}
	parent := map[int]int{}
	ticks := map[int]int64{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and
		// may hold spaces.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		var t int64
		for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[k], 10, 64)
			t += v
		}
		ticks[pid] = t
	}
	in := map[int]bool{}
	for _, r := range roots() {
		in[r] = true
	}
	var total int64
	for pid, t := range ticks {
		for p, hops := pid, 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if in[p] {
				total += t
				break
			}
		}
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(total) * 10 * time.Millisecond
}

// benchStartSyncCount counts fsync and fdatasync calls on the whole
// machine (perf's syscall tracepoints: counting, not tracing, so it costs
// the measured servers nothing) until the returned function is called,
// which returns the count, or -1 without perf.
func benchStartSyncCount(dir string) func() int64 {
	out := filepath.Join(dir, "perf.csv")
	cmd := exec.Command("perf", "stat", "-a", "-x,", "-o", out,
		"-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return func() int64 { return -1 }
	}
	time.Sleep(200 * time.Millisecond) // perf has set its counters up
	return func() int64 {
		// perf prints its counts when its command ends.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		cmd.Wait()
		data, err := os.ReadFile(out)
		if err != nil {
			return -1
		}
		var n int64 = -1
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 || !strings.Contains(f[2], "sys_enter_f") {
				continue
			}
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return -1
			}
			n = max(n, 0) + v
		}
		return n
	}
}

func benchCPUPerMsg(ss []benchSample) string {
	var v, db []time.Duration
	for _, s := range ss {
		if s.err == nil && s.cpu >= 0 {
			v = append(v, s.cpu)
		}
		if s.err == nil && s.dbCPU >= 0 {
			db = append(db, s.dbCPU)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	out := fmt.Sprintf("%d µs", benchMedian(v).Microseconds())
	if len(db) > 0 {
		out += fmt.Sprintf(" + %d µs PostgreSQL", benchMedian(db).Microseconds())
	}
	return out
}

func benchSyncs(ss []benchSample) string {
	var v []float64
	for _, s := range ss {
		if s.err == nil && s.syncs >= 0 {
			v = append(v, s.syncs)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", benchMedian(v))
}

//go:build bench

package main

// The side-by-side benchmark of issue 12 (`make bench`, second part): the
// path applications take. Clients connect to the submission port, say
// STARTTLS (or use implicit TLS on submissions), authenticate with AUTH
// PLAIN as a user whose password is stored with bcrypt-12 (postern) or
// SHA512-CRYPT (Dovecot's passwd-file, the common production setup for
// Postfix), send one 4 KiB message and QUIT: a new connection for every
// message, as PHPMailer, nodemailer without a pool, Django, Rails and
// Python's smtplib used naively do. The same clients also run against the
// trusted relay port (no TLS, no AUTH), and over one authenticated
// connection per client reused for every message.
//
// Two clients: a Go client (crypto/tls and net/textproto, which sets
// TCP_NODELAY), which times each step of the dialogue, and Python's
// smtplib (a process per concurrent client), which does not set
// TCP_NODELAY and so shows any delayed-ACK stall; it times the same steps.
//
// postern runs fresh for every cell and repetition (its credentials cache
// starts empty; a warm-up batch fills it, as a server's first minutes
// would); Postfix, with Dovecot as its SASL server, runs once, warm, with
// the same certificate (ECDSA P-256, as postern makes by default). Every
// message is delivered to the same smtp-sink.
//
// Reported per cell (medians over BENCH_REPS): messages per second (from
// the first connection to the last QUIT), the median time of each step
// (connect and greeting, STARTTLS with its handshake, the EHLO after TLS,
// AUTH, the transaction from MAIL to the 250 after the data), and the CPU
// the server side spent per message: the machine's busy time
// (/proc/stat) during the run minus the client's own (its rusage), so it
// includes the kernel's work on the server's sockets and the delivery to
// the sink, for both systems alike.

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	benchSubUser = "app@bench.test"
	benchSubPass = "a long bench passphrase"
)

// benchPath is how a client reaches a server.
type benchPath string

const (
	pathSubmission  benchPath = "submission"  // STARTTLS + AUTH PLAIN
	pathSubmissions benchPath = "submissions" // implicit TLS + AUTH PLAIN
	pathRelay       benchPath = "relay"       // the trusted relay port: no TLS, no AUTH
)

// benchSubCell is one point of the submission grid.
type benchSubCell struct {
	path    benchPath
	clients int
	client  string // "go" or "python"
	reuse   bool   // one connection per client for all its messages
	msgs    int
}

func (c benchSubCell) name() string {
	conn := "new connection per message"
	if c.reuse {
		conn = "one connection per client"
	}
	cl := "Go client"
	if c.client == "python" {
		cl = "Python smtplib"
	}
	n := "1 client"
	if c.clients > 1 {
		n = fmt.Sprintf("%d clients", c.clients)
	}
	return fmt.Sprintf("%s, %s, %s, %s", c.path, conn, n, cl)
}

// benchSteps are the median durations of one message's steps.
type benchSteps struct {
	Connect, StartTLS, EHLO, Auth, Tx time.Duration
}

// benchSubSample is one repetition of one cell on one system.
type benchSubSample struct {
	rate    float64       // messages per second
	cpu     time.Duration // server-side CPU per message
	steps   benchSteps
	maxStep time.Duration // for the flood cell: the slowest transaction
	err     error
}

// benchSubTarget is where a system listens.
type benchSubTarget struct {
	name                           string
	submission, submissions, relay string
	api                            string // postern's send API (TestBenchAPI)
	config                         string // postern's config file
	logTip                         string // its log, for error messages
}

func (t benchSubTarget) addr(p benchPath) string {
	switch p {
	case pathSubmission:
		return t.submission
	case pathSubmissions:
		return t.submissions
	}
	return t.relay
}

func TestBenchSubmission(t *testing.T) {
	o := benchOptionsFromEnv(t)
	if os.Geteuid() != 0 {
		t.Fatal("make bench needs root: Postfix's master daemon and smtp-sink -u run only as root")
	}
	for _, p := range []string{"/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/master", "/usr/sbin/postfix", "/usr/sbin/dovecot", "/usr/bin/doveadm", "/usr/bin/python3"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing: run `make bench-deps`", p)
		}
	}
	e := newBenchEnv(t, o)
	certFile, keyFile := e.makeCert()

	n := func(full, quick int) int {
		if o.quick {
			return quick
		}
		return full
	}
	var cells []benchSubCell
	for _, client := range []string{"go", "python"} {
		for _, path := range []benchPath{pathSubmission, pathSubmissions, pathRelay} {
			for _, k := range []int{1, 8} {
				cells = append(cells, benchSubCell{path: path, clients: k, client: client, msgs: n(300*k/2+150, 40)})
			}
		}
		cells = append(cells, benchSubCell{path: pathSubmission, clients: 8, client: client, reuse: true, msgs: n(3000, 200)})
	}
	cells = slices.DeleteFunc(cells, func(c benchSubCell) bool { return !o.wants(c.name()) })

	var pf *benchPostfix
	if o.only == "" && len(cells) > 0 {
		pf = e.startPostfix(benchPostfixOpts{sasl: &benchSASL{certFile: certFile, keyFile: keyFile, user: benchSubUser, password: benchSubPass}})
		defer pf.stop()
	}

	type row struct {
		c              benchSubCell
		postern, postf []benchSubSample
	}
	var rows []row
	var firstAuth []time.Duration // postern: the first AUTH of a fresh instance
	for _, c := range cells {
		r := row{c: c}
		for rep := 1; rep <= o.reps; rep++ {
			tg, stop, first := e.startPosternSubmission(certFile, keyFile)
			if first > 0 {
				firstAuth = append(firstAuth, first)
			}
			s := e.runSubmission(tg, c)
			stop()
			t.Logf("%-70s rep %d postern: %s", c.name(), rep, s)
			r.postern = append(r.postern, s)
			if pf == nil {
				r.postf = append(r.postf, benchSubSample{err: errBenchSkipped})
				continue
			}
			ptg := benchSubTarget{name: "Postfix", submission: pf.submission, submissions: pf.submissions, relay: pf.addr, logTip: pf.maillog}
			s = e.runSubmission(ptg, c)
			t.Logf("%-70s rep %d Postfix + Dovecot: %s", c.name(), rep, s)
			r.postf = append(r.postf, s)
		}
		rows = append(rows, r)
	}

	// The AUTH flood: 200 clients sending wrong passwords over implicit
	// TLS while one authenticated session sends message after message.
	var flood []benchSubSample
	floodName := "200 concurrent wrong-password AUTH, one authenticated session sending"
	for rep := 1; rep <= o.reps && o.wants(floodName); rep++ {
		tg, stop, _ := e.startPosternSubmission(certFile, keyFile)
		s := e.runFlood(tg, 200, time.Duration(n(15, 3))*time.Second)
		stop()
		t.Logf("%s rep %d postern: %s", floodName, rep, s)
		flood = append(flood, s)
	}

	// The report.
	var b strings.Builder
	b.WriteString(e.subHeader(o))
	b.WriteString("| cell | postern msg/s | Postfix + Dovecot msg/s | ratio | postern steps: connect / STARTTLS / EHLO after TLS / AUTH / transaction | Postfix + Dovecot steps | postern CPU/msg | Postfix + Dovecot CPU/msg |\n")
	b.WriteString("|---|---:|---:|---:|---|---|---:|---:|\n")
	var errs []string
	for _, r := range rows {
		ps, perr := benchSubSummarize(r.postern)
		fs, ferr := benchSubSummarize(r.postf)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.c.name(),
			benchRate(ps.rate, perr), benchRate(fs.rate, ferr), benchRatio(ps.rate, fs.rate, perr, ferr),
			benchStepsString(ps.steps, r.c.path, perr), benchStepsString(fs.steps, r.c.path, ferr),
			benchCPU(ps.cpu, perr), benchCPU(fs.cpu, ferr))
		for _, s := range append(slices.Clone(r.postern), r.postf...) {
			if s.err != nil && !errors.Is(s.err, errBenchSkipped) {
				errs = append(errs, fmt.Sprintf("- %s: %v", r.c.name(), s.err))
			}
		}
	}
	if len(firstAuth) > 0 {
		fmt.Fprintf(&b, "\npostern's first AUTH after start (a full bcrypt-12 check, the credentials cache still empty): median %s over %d fresh instances.\n",
			benchMS(benchMedian(firstAuth)), len(firstAuth))
	}
	if len(flood) > 0 {
		fs, ferr := benchSubSummarize(flood)
		slowest := time.Duration(0)
		for _, s := range flood {
			slowest = max(slowest, s.maxStep)
		}
		if ferr != nil {
			fmt.Fprintf(&b, "\n%s: failed (%v)\n", floodName, ferr)
		} else {
			fmt.Fprintf(&b, "\n%s (postern): the session's messages took %s (median) and %s at the slowest, from MAIL to the 250; %.0f messages/s.\n",
				floodName, benchMS(fs.steps.Tx), benchMS(slowest), fs.rate)
		}
		for _, s := range flood {
			if s.err != nil {
				errs = append(errs, fmt.Sprintf("- %s: %v", floodName, s.err))
			}
		}
	}
	writeBenchReport(t, o, "-submission.md", b.String(), errs)
}

func (s benchSubSample) String() string {
	if s.err != nil {
		return "FAILED: " + s.err.Error()
	}
	return fmt.Sprintf("%.0f msg/s, CPU %s/msg, steps %s", s.rate, benchMS(s.cpu), benchStepsString(s.steps, pathSubmission, nil))
}

func benchSubSummarize(ss []benchSubSample) (benchSubSample, error) {
	var ok []benchSubSample
	var err error
	for _, s := range ss {
		if s.err != nil {
			err = s.err
			continue
		}
		ok = append(ok, s)
	}
	if len(ok) == 0 {
		return benchSubSample{}, err
	}
	pick := func(f func(benchSubSample) time.Duration) time.Duration {
		var v []time.Duration
		for _, s := range ok {
			v = append(v, f(s))
		}
		return benchMedian(v)
	}
	var rates []float64
	for _, s := range ok {
		rates = append(rates, s.rate)
	}
	return benchSubSample{
		rate: benchMedian(rates),
		cpu:  pick(func(s benchSubSample) time.Duration { return s.cpu }),
		steps: benchSteps{
			Connect:  pick(func(s benchSubSample) time.Duration { return s.steps.Connect }),
			StartTLS: pick(func(s benchSubSample) time.Duration { return s.steps.StartTLS }),
			EHLO:     pick(func(s benchSubSample) time.Duration { return s.steps.EHLO }),
			Auth:     pick(func(s benchSubSample) time.Duration { return s.steps.Auth }),
			Tx:       pick(func(s benchSubSample) time.Duration { return s.steps.Tx }),
		},
	}, nil
}

func benchStepsString(st benchSteps, p benchPath, err error) string {
	if err != nil {
		return "failed"
	}
	dash := func(d time.Duration, applies bool) string {
		if !applies || d == 0 {
			return "–"
		}
		return benchMS(d)
	}
	return strings.Join([]string{
		dash(st.Connect, true), dash(st.StartTLS, p != pathRelay), dash(st.EHLO, p == pathSubmission),
		dash(st.Auth, p != pathRelay), dash(st.Tx, true),
	}, " / ")
}

func benchCPU(d time.Duration, err error) string {
	if err != nil || d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// makeCert makes the one certificate both systems serve: ECDSA P-256,
// self-signed, as postern makes when none is configured.
func (e *benchEnv) makeCert() (certFile, keyFile string) {
	dir := e.dir("tls")
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", keyFile, "-out", certFile, "-days", "2", "-subj", "/CN=mail.bench.test",
		"-addext", "subjectAltName=DNS:mail.bench.test").CombinedOutput()
	if err != nil {
		e.t.Fatalf("openssl req: %v\n%s", err, out)
	}
	// Postfix's smtpd (user postfix) reads the key.
	os.Chmod(keyFile, 0o644)
	return certFile, keyFile
}

// startDovecot runs Dovecot as Postfix's authentication server, with its
// auth listener at socket (inside Postfix's queue) and one user.
func (e *benchEnv) startDovecot(dir, socket string, sasl *benchSASL) *benchProc {
	e.t.Helper()
	base := filepath.Join(dir, "dovecot")
	for _, d := range []string{base, filepath.Join(base, "run"), filepath.Join(base, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	hash, err := exec.Command("/usr/bin/doveadm", "pw", "-s", "SHA512-CRYPT", "-p", sasl.password).Output()
	if err != nil {
		e.t.Fatalf("doveadm pw: %v", err)
	}
	passwd := filepath.Join(base, "passwd")
	if err := os.WriteFile(passwd, []byte(sasl.user+":"+strings.TrimSpace(string(hash))+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	conf := filepath.Join(base, "dovecot.conf")
	e.render("dovecot.conf.tmpl", conf, map[string]any{"Base": base, "Passwd": passwd, "Socket": socket})
	var out strings.Builder
	cmd := exec.Command("/usr/sbin/dovecot", "-F", "-c", conf)
	cmd.Stdout, cmd.Stderr = &out, &out
	p := e.start("dovecot", cmd, syscall.SIGTERM, true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			return p
		}
		if p.exited() || time.Now().After(deadline) {
			e.t.Fatalf("dovecot did not create %s:\n%s%s", socket, out.String(), benchTail(filepath.Join(base, "dovecot.log")))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startPosternSubmission starts a fresh postern with its three listeners
// and the one user (added with `postern user add`: bcrypt-12), and times
// the first AUTH it ever answers (a full bcrypt check: the cache is
// empty). stop stops it.
func (e *benchEnv) startPosternSubmission(certFile, keyFile string) (benchSubTarget, func(), time.Duration) {
	e.t.Helper()
	dir := e.dir("postern-sub")
	tg := benchSubTarget{name: "postern", submission: freeAddr(e.t), submissions: freeAddr(e.t), relay: freeAddr(e.t), api: freeAddr(e.t)}
	data := map[string]any{
		"Data": filepath.Join(dir, "data"), "Users": filepath.Join(dir, "users"),
		"Submission": tg.submission, "Submissions": tg.submissions, "Relay": tg.relay, "API": tg.api,
		"CertFile": certFile, "KeyFile": keyFile,
		"Resolver": e.dns.Addr(), "SinkPort": e.sinkPort,
	}
	cfg := filepath.Join(dir, "postern.yaml")
	tg.config = cfg
	e.render("postern-submission.yaml.tmpl", cfg, data)
	// The messages' From is benchSender, at the same domain.
	add := exec.Command(e.o.bin, "user", "add", benchSubUser, "--allow", "@bench.test", "--config", cfg)
	add.Stdin = strings.NewReader(benchSubPass + "\n")
	if out, err := add.CombinedOutput(); err != nil {
		e.t.Fatalf("postern user add: %v\n%s", err, out)
	}
	logf, err := os.Create(filepath.Join(dir, "postern.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e.o.bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if e.o.profile != "" {
		prof := filepath.Join(e.o.profile, fmt.Sprintf("postern-sub-%03d.pprof", e.seq))
		cmd.Env = append(os.Environ(), "POSTERN_CPUPROFILE="+prof)
	}
	p := e.start("postern", cmd, syscall.SIGKILL, false)
	tg.logTip = logf.Name()
	stop := func() { p.stop(); logf.Close() }
	if err := benchWaitGreeting(tg.relay, 30*time.Second, p.exited); err != nil {
		stop()
		e.t.Fatalf("postern did not start: %v (log %s)", err, benchTail(logf.Name()))
	}
	st, err := benchGoSend(tg.submission, pathSubmission, benchMessage(4<<10), nil)
	if err != nil {
		e.t.Logf("postern's first AUTH: %v (log %s)", err, benchTail(logf.Name()))
		return tg, stop, 0
	}
	return tg, stop, st.Auth
}

// runSubmission warms tg up, then runs c and waits for the sink to count
// every message.
func (e *benchEnv) runSubmission(tg benchSubTarget, c benchSubCell) benchSubSample {
	fail := func(format string, args ...any) benchSubSample {
		return benchSubSample{err: fmt.Errorf("%s: %s (log: %s)", tg.name, fmt.Sprintf(format, args...), benchTail(tg.logTip))}
	}
	addr := tg.addr(c.path)
	// Warm-up: one message per client through the whole path (for
	// postern, this fills the credentials cache, as the first minutes of
	// a server would).
	return e.measureRun(fail, c.clients, c.msgs,
		func() (benchRun, error) {
			return e.runSubClients(addr, benchSubCell{path: c.path, clients: c.clients, client: "go", msgs: c.clients})
		},
		func() (benchRun, error) { return e.runSubClients(addr, c) })
}

// measureRun runs warm (whose clients messages the sink must count first),
// then run (msgs messages), and returns the rate, the median steps and
// the server's CPU per message once the sink has counted them all.
func (e *benchEnv) measureRun(fail func(format string, args ...any) benchSubSample, clients, msgs int, warm, run func() (benchRun, error)) benchSubSample {
	arrived := e.sink.expect(clients)
	if _, err := warm(); err != nil {
		return fail("warm-up: %v", err)
	}
	select {
	case <-arrived:
	case <-time.After(2 * time.Minute):
		return fail("warm-up: the sink counted %d", e.sink.counted())
	}

	arrived = e.sink.expect(msgs)
	busy0 := benchBusy()
	res, err := run()
	if err != nil {
		return fail("%v", err)
	}
	busy := benchBusy() - busy0
	select {
	case <-arrived:
	case <-time.After(5 * time.Minute):
		return fail("not all delivered: the sink counted %d", e.sink.counted())
	}
	s := benchSubSample{rate: float64(msgs) / res.wall.Seconds(), steps: res.medians()}
	if server := busy - res.clientCPU; server > 0 {
		s.cpu = server / time.Duration(msgs)
	}
	return s
}

// benchRun is what one run of clients measured.
type benchRun struct {
	wall      time.Duration
	clientCPU time.Duration
	steps     []benchSteps // one per message
}

func (r benchRun) medians() benchSteps {
	pick := func(f func(benchSteps) time.Duration) time.Duration {
		var v []time.Duration
		for _, s := range r.steps {
			if d := f(s); d > 0 {
				v = append(v, d)
			}
		}
		if len(v) == 0 {
			return 0
		}
		return benchMedian(v)
	}
	return benchSteps{
		Connect:  pick(func(s benchSteps) time.Duration { return s.Connect }),
		StartTLS: pick(func(s benchSteps) time.Duration { return s.StartTLS }),
		EHLO:     pick(func(s benchSteps) time.Duration { return s.EHLO }),
		Auth:     pick(func(s benchSteps) time.Duration { return s.Auth }),
		Tx:       pick(func(s benchSteps) time.Duration { return s.Tx }),
	}
}

// runSubClients runs c's clients against addr.
func (e *benchEnv) runSubClients(addr string, c benchSubCell) (benchRun, error) {
	if c.client == "python" {
		return benchPython(addr, c)
	}
	body := benchMessage(4 << 10)
	return benchClients(benchSplit(c.msgs, c.clients), func(k int) ([]benchSteps, error) {
		if c.reuse {
			return benchGoReuse(addr, c.path, body, k)
		}
		var steps []benchSteps
		for range k {
			st, err := benchGoSend(addr, c.path, body, nil)
			if err != nil {
				return steps, err
			}
			steps = append(steps, st)
		}
		return steps, nil
	})
}

// benchClients runs one goroutine per entry of per, each sending its
// number of messages with send, and times them together: the wall time
// from the first start to the last end, and this process's CPU.
func benchClients(per []int, send func(k int) ([]benchSteps, error)) (benchRun, error) {
	var (
		mu    sync.Mutex
		run   benchRun
		first error
		wg    sync.WaitGroup
	)
	cpu0 := benchSelfCPU()
	start := time.Now()
	for _, k := range per {
		wg.Go(func() {
			steps, err := send(k)
			mu.Lock()
			defer mu.Unlock()
			run.steps = append(run.steps, steps...)
			if err != nil && first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	run.wall = time.Since(start)
	run.clientCPU = benchSelfCPU() - cpu0
	return run, first
}

// benchSplit divides n messages among k clients.
func benchSplit(n, k int) []int {
	out := make([]int, k)
	for i := range out {
		out[i] = n / k
		if i < n%k {
			out[i]++
		}
	}
	return out
}

// benchConn is the Go client's connection: textproto over TCP or TLS.
type benchConn struct {
	raw net.Conn
	tp  *textproto.Conn
}

func (c *benchConn) cmd(expect int, format string, args ...any) error {
	id, err := c.tp.Cmd(format, args...)
	if err != nil {
		return err
	}
	c.tp.StartResponse(id)
	defer c.tp.EndResponse(id)
	_, _, err = c.tp.ReadResponse(expect)
	return err
}

var benchTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "mail.bench.test"}

// benchGoDial connects and runs the prelude of path (greeting, EHLO,
// STARTTLS or implicit TLS, EHLO, AUTH PLAIN), timing each step into st.
func benchGoDial(addr string, path benchPath, st *benchSteps, password string) (*benchConn, error) {
	t := time.Now()
	raw, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(time.Minute))
	c := &benchConn{raw: raw}
	if path == pathSubmissions {
		tc := tls.Client(raw, benchTLS)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		st.StartTLS = time.Since(t)
		c.tp = textproto.NewConn(tc)
	} else {
		c.tp = textproto.NewConn(raw)
	}
	if _, _, err := c.tp.ReadResponse(220); err != nil {
		raw.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	st.Connect = time.Since(t) - st.StartTLS
	if err := c.cmd(250, "EHLO %s", benchHelo); err != nil {
		raw.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if path == pathSubmission {
		t = time.Now()
		if err := c.cmd(220, "STARTTLS"); err != nil {
			raw.Close()
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		tc := tls.Client(raw, benchTLS)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		st.StartTLS = time.Since(t)
		c.tp = textproto.NewConn(tc)
		t = time.Now()
		if err := c.cmd(250, "EHLO %s", benchHelo); err != nil {
			raw.Close()
			return nil, fmt.Errorf("EHLO after STARTTLS: %w", err)
		}
		st.EHLO = time.Since(t)
	}
	if path != pathRelay {
		t = time.Now()
		resp := base64.StdEncoding.EncodeToString([]byte("\x00" + benchSubUser + "\x00" + password))
		if err := c.cmd(235, "AUTH PLAIN %s", resp); err != nil {
			raw.Close()
			return nil, fmt.Errorf("AUTH: %w", err)
		}
		st.Auth = time.Since(t)
	}
	return c, nil
}

// tx runs one transaction and returns its time, MAIL to the 250.
func (c *benchConn) tx(body []byte) (time.Duration, error) {
	t := time.Now()
	if err := c.cmd(250, "MAIL FROM:<%s>", benchSubUser); err != nil {
		return 0, fmt.Errorf("MAIL: %w", err)
	}
	if err := c.cmd(250, "RCPT TO:<%s>", benchRecipient); err != nil {
		return 0, fmt.Errorf("RCPT: %w", err)
	}
	if err := c.cmd(354, "DATA"); err != nil {
		return 0, fmt.Errorf("DATA: %w", err)
	}
	w := c.tp.DotWriter()
	w.Write(body)
	if err := w.Close(); err != nil {
		return 0, err
	}
	if _, _, err := c.tp.ReadResponse(250); err != nil {
		return 0, fmt.Errorf("end of data: %w", err)
	}
	return time.Since(t), nil
}

func (c *benchConn) quit() {
	c.cmd(221, "QUIT")
	c.raw.Close()
}

// benchGoSend sends one message over a new connection.
func benchGoSend(addr string, path benchPath, body []byte, pw *string) (benchSteps, error) {
	var st benchSteps
	password := benchSubPass
	if pw != nil {
		password = *pw
	}
	c, err := benchGoDial(addr, path, &st, password)
	if err != nil {
		return st, err
	}
	defer c.quit()
	st.Tx, err = c.tx(body)
	return st, err
}

// benchGoReuse sends n messages over one authenticated connection.
func benchGoReuse(addr string, path benchPath, body []byte, n int) ([]benchSteps, error) {
	var first benchSteps
	c, err := benchGoDial(addr, path, &first, benchSubPass)
	if err != nil {
		return nil, err
	}
	defer c.quit()
	steps := make([]benchSteps, 0, n)
	for i := range n {
		c.raw.SetDeadline(time.Now().Add(time.Minute))
		d, err := c.tx(body)
		if err != nil {
			return steps, err
		}
		st := benchSteps{Tx: d}
		if i == 0 {
			st.Connect, st.StartTLS, st.EHLO, st.Auth = first.Connect, first.StartTLS, first.EHLO, first.Auth
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// benchPythonClient is the smtplib client: one process per concurrent
// client, each sending its share and timing each step in milliseconds.
const benchPythonClient = `
import json, multiprocessing, smtplib, ssl, sys, time
a = json.loads(sys.argv[1])
# One TLS context per client process, made once, as an application keeps
# one: ssl.create_default_context() loads the system's CA bundle, about
# 20 ms of the client's CPU, which a context per connection would add to
# every message (and that would measure Python, not the server).
_ctx = None
def ctx():
    global _ctx
    if _ctx is None:
        _ctx = ssl.create_default_context()
        _ctx.check_hostname = False
        _ctx.verify_mode = ssl.CERT_NONE
    return _ctx
def client(n):
    host, port = a["addr"].rsplit(":", 1)
    out = []
    s = None
    for i in range(n):
        st = {}
        if s is None:
            t = time.perf_counter()
            if a["path"] == "submissions":
                s = smtplib.SMTP_SSL(host, int(port), context=ctx(), timeout=60)
                st["starttls"] = (time.perf_counter() - t) * 1000
            else:
                s = smtplib.SMTP(host, int(port), timeout=60)
                st["connect"] = (time.perf_counter() - t) * 1000
            s.ehlo("client.bench.test")
            if a["path"] == "submission":
                t = time.perf_counter()
                s.starttls(context=ctx())
                st["starttls"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                s.ehlo("client.bench.test")
                st["ehlo"] = (time.perf_counter() - t) * 1000
            if a["path"] != "relay":
                t = time.perf_counter()
                s.user, s.password = a["user"], a["password"]
                s.auth("PLAIN", s.auth_plain)
                st["auth"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        s.sendmail(a["from"], [a["to"]], a["msg"].encode())
        st["tx"] = (time.perf_counter() - t) * 1000
        out.append(st)
        if not a["reuse"]:
            s.quit()
            s = None
    if s is not None:
        s.quit()
    return out
if __name__ == "__main__":
    with multiprocessing.Pool(len(a["per"])) as p:
        res = p.map(client, a["per"])
    print(json.dumps([st for r in res for st in r]))
`

// benchPython runs the smtplib client and times it from outside: the
// wall time is from its first connection to its last QUIT, taken from the
// time the workers start (the interpreter's start-up is left out by
// subtracting what the client reports), and its CPU from its rusage.
func benchPython(addr string, c benchSubCell) (benchRun, error) {
	args, _ := json.Marshal(map[string]any{
		"addr": addr, "path": string(c.path), "user": benchSubUser, "password": benchSubPass,
		"from": benchSubUser, "to": benchRecipient, "msg": string(benchMessage(4 << 10)),
		"reuse": c.reuse, "per": benchSplit(c.msgs, c.clients),
	})
	// The interpreter's start-up and the pool's are timed apart with an
	// empty run, then taken out of the wall time.
	empty, _ := json.Marshal(map[string]any{"addr": addr, "path": "relay", "user": "", "password": "", "from": "",
		"to": "", "msg": "", "reuse": false, "per": make([]int, c.clients)})
	t := time.Now()
	if out, err := exec.Command("/usr/bin/python3", "-c", benchPythonClient, string(empty)).CombinedOutput(); err != nil {
		return benchRun{}, fmt.Errorf("smtplib start-up: %v: %s", err, out)
	}
	startup := time.Since(t)

	cmd := exec.Command("/usr/bin/python3", "-c", benchPythonClient, string(args))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t = time.Now()
	out, err := cmd.Output()
	wall := time.Since(t) - startup
	if err != nil {
		return benchRun{}, fmt.Errorf("smtplib: %v: %s", err, stderr.String())
	}
	var raw []map[string]float64
	if err := json.Unmarshal(out, &raw); err != nil {
		return benchRun{}, fmt.Errorf("smtplib printed %q: %v", out, err)
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	run := benchRun{wall: max(wall, time.Millisecond), clientCPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	for _, r := range raw {
		run.steps = append(run.steps, benchSteps{Connect: ms(r["connect"]), StartTLS: ms(r["starttls"]), EHLO: ms(r["ehlo"]), Auth: ms(r["auth"]), Tx: ms(r["tx"])})
	}
	return run, nil
}

// runFlood: clients goroutines send AUTH with a wrong password over new
// implicit-TLS connections for d, while one session, authenticated before
// the flood, sends one message after another; its transaction times are
// what the cell reports.
func (e *benchEnv) runFlood(tg benchSubTarget, clients int, d time.Duration) benchSubSample {
	body := benchMessage(4 << 10)
	var st benchSteps
	sess, err := benchGoDial(tg.submission, pathSubmission, &st, benchSubPass)
	if err != nil {
		return benchSubSample{err: fmt.Errorf("the session: %v", err)}
	}
	defer sess.quit()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wrong := "not the password"
	for range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var st benchSteps
				c, err := benchGoDial(tg.submissions, pathSubmissions, &st, wrong)
				if err == nil {
					c.quit()
				}
			}
		})
	}
	var lats []time.Duration
	sent := 0
	start := time.Now()
	for time.Since(start) < d {
		sess.raw.SetDeadline(time.Now().Add(time.Minute))
		lat, err := sess.tx(body)
		if err != nil {
			close(stop)
			wg.Wait()
			return benchSubSample{err: fmt.Errorf("the session's message %d: %v", sent+1, err)}
		}
		lats = append(lats, lat)
		sent++
	}
	wall := time.Since(start)
	close(stop)
	wg.Wait()
	slices.Sort(lats)
	return benchSubSample{rate: float64(sent) / wall.Seconds(), steps: benchSteps{Tx: lats[len(lats)/2]}, maxStep: lats[len(lats)-1]}
}

// benchBusy is the machine's busy CPU time so far (/proc/stat: every
// state but idle and iowait).
func benchBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		busy += n
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(busy) * 10 * time.Millisecond
}

// benchSelfCPU is this process's CPU time so far.
func benchSelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// subHeader describes the submission run.
func (e *benchEnv) subHeader(o benchOptions) string {
	var b strings.Builder
	b.WriteString("# Authenticated submission: postern vs Postfix + Dovecot on this machine\n\n")
	if o.quick {
		b.WriteString("**BENCH_QUICK=1: one repetition with small counts, a smoke test of the harness, not a measurement.**\n\n")
	}
	fmt.Fprintf(&b, "- Date: %s\n- Command: `%s`\n- Repetitions per cell: %d (medians)\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), o.command, o.reps)
	ver, _ := exec.Command("/usr/sbin/dovecot", "--version").Output()
	pv, _ := exec.Command("/usr/sbin/postconf", "-d", "-h", "mail_version").Output()
	fmt.Fprintf(&b, "- Versions: Postfix %s, Dovecot %s; postern's user hashed with bcrypt cost 12, Dovecot's with SHA512-CRYPT (passwd-file)\n",
		strings.TrimSpace(string(pv)), strings.TrimSpace(string(ver)))
	b.WriteString("- 4 KiB messages; TLS with one ECDSA P-256 certificate for both; AUTH PLAIN; every message delivered to smtp-sink.\n")
	b.WriteString("- Steps (medians): connect = TCP and greeting; STARTTLS = the command and the handshake (on submissions: the handshake); " +
		"EHLO after TLS; AUTH; transaction = MAIL to the 250 after the data. With one connection per client, the prelude is counted once per client.\n")
	b.WriteString("- CPU/msg: the machine's busy time during the run, minus the client's own CPU, per message: the server, its kernel work and the delivery to the sink.\n\n")
	return b.String()
}

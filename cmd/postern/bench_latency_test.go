//go:build bench

package main

// The side-by-side benchmark of issue 13 (`make bench`, third part):
// delivery to MX hosts that are far away. 5,000 messages of 4 KiB are
// relayed to recipients at one or fifty domains, each domain's MX a
// toxiproxy proxy (Shopify's toxiproxy, the usual latency proxy; `tc
// netem` is not available on these machines) that adds 25 ms (or 50 ms)
// in each direction, all forwarding to one counting forwarder in this
// process and from there to the one smtp-sink. postern delivers by MX
// through the benchmark's DNS server; Postfix (its defaults) routes each
// domain to its proxy with transport_maps.
//
// Reported per cell (medians over BENCH_REPS): the drain rate, from the
// start of the submissions to the sink's count of the last message, and the
// round trips per message: the counting forwarder counts, on every
// connection, each burst of data the client sends after the server has
// answered, that is each time the client waits for the server; divided by
// the messages, it is what latency multiplies (connection set-up and QUIT
// included, spread over the messages of a reused connection).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// benchLatCell is one point of the latency grid.
type benchLatCell struct {
	domains int
	rtt     time.Duration // round trip added by the proxies
	msgs    int
}

func (c benchLatCell) name() string {
	d := "1 domain"
	if c.domains > 1 {
		d = fmt.Sprintf("%d domains", c.domains)
	}
	return fmt.Sprintf("%s, %d ms round trip", d, c.rtt.Milliseconds())
}

type benchLatSample struct {
	drain  float64 // messages per second
	rtPerM float64 // client round trips per message
	err    error
}

func TestBenchLatency(t *testing.T) {
	o := benchOptionsFromEnv(t)
	if os.Geteuid() != 0 {
		t.Fatal("make bench needs root: Postfix's master daemon and smtp-sink -u run only as root")
	}
	toxi := os.Getenv("BENCH_TOXIPROXY")
	if toxi == "" {
		toxi = "../../bin/tools/toxiproxy-server"
	}
	if _, err := os.Stat(toxi); err != nil {
		t.Fatalf("toxiproxy's server (%s) is missing: run `make bench-deps`", toxi)
	}
	e := newBenchEnv(t, o)
	msgs := 5000
	if o.quick {
		msgs = 300
	}
	cells := []benchLatCell{
		{domains: 50, rtt: 50 * time.Millisecond, msgs: msgs},
		{domains: 1, rtt: 50 * time.Millisecond, msgs: msgs},
		{domains: 50, rtt: 100 * time.Millisecond, msgs: msgs},
	}
	cells = slices.DeleteFunc(cells, func(c benchLatCell) bool { return !o.wants(c.name()) })
	if len(cells) == 0 {
		return
	}

	fwd := e.startCountingForwarder()
	tp := e.startToxiproxy(toxi)
	const maxDomains = 50
	mxPort := relaytest.FreePort(t, benchLatIPs(maxDomains)...)
	for i := 1; i <= maxDomains; i++ {
		dom, ip := benchLatDomain(i), benchLatIP(i)
		e.dns.AddMX(dom, relaytest.MX{Pref: 10, Host: "mx." + dom})
		e.dns.SetA("mx."+dom, ip)
		tp.create(fmt.Sprintf("mx%d", i), fmt.Sprintf("%s:%d", ip, mxPort), fwd.addr)
	}
	transport := filepath.Join(e.dir("transport"), "transport")
	var tb strings.Builder
	for i := 1; i <= maxDomains; i++ {
		fmt.Fprintf(&tb, "%s smtp:[%s]:%d\n", benchLatDomain(i), benchLatIP(i), mxPort)
	}
	if err := os.WriteFile(transport, []byte(tb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var pf *benchPostfix
	if o.only == "" {
		pf = e.startPostfix(benchPostfixOpts{transport: transport})
		defer pf.stop()
	}

	type row struct {
		c              benchLatCell
		postern, postf []benchLatSample
	}
	var rows []row
	for _, c := range cells {
		tp.latency(maxDomains, c.rtt/2)
		r := row{c: c}
		for rep := 1; rep <= o.reps; rep++ {
			s := e.runLatencyPostern(c, fwd, mxPort)
			t.Logf("%-32s rep %d postern: %s", c.name(), rep, s)
			r.postern = append(r.postern, s)
			if pf == nil {
				r.postf = append(r.postf, benchLatSample{err: errBenchSkipped})
				continue
			}
			s = e.runLatency(benchTarget{name: "Postfix", addr: pf.addr, proc: pf.master, logTip: pf.maillog}, c, fwd)
			t.Logf("%-32s rep %d Postfix: %s", c.name(), rep, s)
			r.postf = append(r.postf, s)
		}
		rows = append(rows, r)
	}

	var b strings.Builder
	b.WriteString("# Delivery to far MX hosts: postern vs Postfix on this machine\n\n")
	if o.quick {
		b.WriteString("**BENCH_QUICK=1: one repetition with small counts, a smoke test of the harness, not a measurement.**\n\n")
	}
	fmt.Fprintf(&b, "- Date: %s\n- Command: `%s`\n- Repetitions per cell: %d (medians)\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), o.command, o.reps)
	fmt.Fprintf(&b, "- %d messages of 4 KiB per run, relayed by 20 sessions, to recipients spread evenly over the domains; each domain's MX is a toxiproxy proxy with half the round trip added each way, all in front of one smtp-sink. Postfix: defaults, each domain routed to its proxy with transport_maps.\n", cells[0].msgs)
	b.WriteString("- drain/s: messages / (start of submission → the sink's last message). Round trips per message: the client's waits for the server, counted on every connection by a forwarder between the proxies and the sink, over the messages.\n\n")
	b.WriteString("| cell | postern drain/s | Postfix drain/s | ratio | postern round trips/msg | Postfix round trips/msg |\n|---|---:|---:|---:|---:|---:|\n")
	var errs []string
	for _, r := range rows {
		p, perr := benchLatSummarize(r.postern)
		f, ferr := benchLatSummarize(r.postf)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.c.name(), benchRate(p.drain, perr), benchRate(f.drain, ferr),
			benchRatio(p.drain, f.drain, perr, ferr), benchRT(p.rtPerM, perr), benchRT(f.rtPerM, ferr))
		for _, s := range append(slices.Clone(r.postern), r.postf...) {
			if s.err != nil && !errorsIsSkipped(s.err) {
				errs = append(errs, fmt.Sprintf("- %s: %v", r.c.name(), s.err))
			}
		}
	}
	if len(errs) > 0 {
		b.WriteString("\nFailed runs (left out of the medians):\n" + strings.Join(errs, "\n") + "\n")
	}
	report := b.String()
	fmt.Print("\n" + report)
	out := strings.TrimSuffix(o.out, ".md") + "-latency.md"
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		t.Errorf("writing %s: %v", out, err)
	} else {
		fmt.Printf("\nwritten to %s\n", out)
	}
	if len(errs) > 0 {
		t.Errorf("%d runs failed:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

func errorsIsSkipped(err error) bool { return err == errBenchSkipped }

func (s benchLatSample) String() string {
	if s.err != nil {
		return "FAILED: " + s.err.Error()
	}
	return fmt.Sprintf("drain %.0f/s, %.2f round trips per message", s.drain, s.rtPerM)
}

func benchLatSummarize(ss []benchLatSample) (benchLatSample, error) {
	var d, rt []float64
	var err error
	for _, s := range ss {
		if s.err != nil {
			err = s.err
			continue
		}
		d, rt = append(d, s.drain), append(rt, s.rtPerM)
	}
	if len(d) == 0 {
		return benchLatSample{}, err
	}
	return benchLatSample{drain: benchMedian(d), rtPerM: benchMedian(rt)}, nil
}

func benchRT(v float64, err error) string {
	if err != nil {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

func benchLatDomain(i int) string { return fmt.Sprintf("d%d.lat.test", i) }
func benchLatIP(i int) string     { return fmt.Sprintf("127.0.5.%d", i) }

func benchLatIPs(n int) []string {
	var ips []string
	for i := 1; i <= n; i++ {
		ips = append(ips, benchLatIP(i))
	}
	return ips
}

// runLatencyPostern runs one cell against a fresh postern delivering by MX
// on mxPort.
func (e *benchEnv) runLatencyPostern(c benchLatCell, fwd *benchForwarder, mxPort int) benchLatSample {
	dir := e.dir("postern-lat")
	data := map[string]any{
		"Data": filepath.Join(dir, "data"), "Users": filepath.Join(dir, "users"),
		"Listen": freeAddr(e.t), "Resolver": e.dns.Addr(), "SinkPort": mxPort,
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
		cmd.Env = append(os.Environ(), "POSTERN_CPUPROFILE="+filepath.Join(e.o.profile, fmt.Sprintf("postern-lat-%03d.pprof", e.seq)))
	}
	p := e.start("postern", cmd, syscall.SIGKILL, false)
	defer p.stop()
	tg := benchTarget{name: "postern", addr: data["Listen"].(string), proc: p, logTip: logf.Name()}
	if err := waitGreeting(tg.addr, 30*time.Second, p.exited); err != nil {
		return benchLatSample{err: fmt.Errorf("postern did not start: %v (log %s)", err, benchTail(logf.Name()))}
	}
	return e.runLatency(tg, c, fwd)
}

// runLatency submits c's messages to tg with 20 sessions, recipients spread
// over the cell's domains, and waits for the sink.
func (e *benchEnv) runLatency(tg benchTarget, c benchLatCell, fwd *benchForwarder) benchLatSample {
	fail := func(format string, args ...any) benchLatSample {
		return benchLatSample{err: fmt.Errorf("%s: %s (log: %s)", tg.name, fmt.Sprintf(format, args...), benchTail(tg.logTip))}
	}
	body := benchMessage(4 << 10)
	// Warm-up: one message per domain, through the proxies.
	arrived := e.sink.expect(c.domains)
	if err := benchSubmitSpread(tg.addr, 10, c.domains, c.domains, body); err != nil {
		return fail("warm-up: %v", err)
	}
	select {
	case <-arrived:
	case <-time.After(5 * time.Minute):
		return fail("warm-up: the sink counted %d", e.sink.counted())
	}
	fwd.reset()
	arrived = e.sink.expect(c.msgs)
	start := time.Now()
	if err := benchSubmitSpread(tg.addr, 20, c.msgs, c.domains, body); err != nil {
		return fail("submission: %v", err)
	}
	select {
	case at := <-arrived:
		s := benchLatSample{drain: float64(c.msgs) / at.Sub(start).Seconds()}
		// Connections still open (reused ones) have counted what they
		// carried so far: enough, as their last messages are counted.
		s.rtPerM = float64(fwd.waits.Load()) / float64(c.msgs)
		return s
	case <-time.After(30 * time.Minute):
		return fail("not all delivered: the sink counted %d", e.sink.counted())
	}
}

// benchSubmitSpread submits n messages over sessions connections, one
// message per connection, to recipients at domains 1..domains in turn.
func benchSubmitSpread(addr string, sessions, n, domains int, body []byte) error {
	jobs := make(chan int, n)
	for i := range n {
		jobs <- i
	}
	close(jobs)
	var first atomic.Value
	var wg sync.WaitGroup
	for range min(sessions, n) {
		wg.Go(func() {
			for i := range jobs {
				if first.Load() != nil {
					return
				}
				rcpt := fmt.Sprintf("u%d@%s", i, benchLatDomain(i%domains+1))
				if err := benchRelayOne(addr, rcpt, body); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return err
	}
	return nil
}

// benchRelayOne sends one message through a relay port.
func benchRelayOne(addr, rcpt string, body []byte) error {
	var st benchSteps
	c, err := benchGoDial(addr, pathRelay, &st, "")
	if err != nil {
		return err
	}
	defer c.quit()
	if err := c.cmd(250, "MAIL FROM:<%s>", benchSender); err != nil {
		return err
	}
	if err := c.cmd(250, "RCPT TO:<%s>", rcpt); err != nil {
		return err
	}
	if err := c.cmd(354, "DATA"); err != nil {
		return err
	}
	w := c.tp.DotWriter()
	w.Write(body)
	if err := w.Close(); err != nil {
		return err
	}
	_, _, err = c.tp.ReadResponse(250)
	return err
}

// benchForwarder forwards every connection to the sink and counts the
// client's waits: each burst of client data that follows server data.
type benchForwarder struct {
	addr  string
	waits atomic.Int64
}

func (f *benchForwarder) reset() { f.waits.Store(0) }

func (e *benchEnv) startCountingForwarder() *benchForwarder {
	ln, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ln.Close() })
	f := &benchForwarder{addr: ln.Addr().String()}
	sink := fmt.Sprintf("%s:%d", benchSinkIP, e.sinkPort)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c, sink)
		}
	}()
	return f
}

func (f *benchForwarder) serve(client net.Conn, sink string) {
	defer client.Close()
	server, err := net.Dial("tcp", sink)
	if err != nil {
		return
	}
	defer server.Close()
	// last is who sent data last: 0 nobody, 1 the server, 2 the client.
	var mu sync.Mutex
	last := 0
	mark := func(who int) {
		mu.Lock()
		if who == 2 && last == 1 {
			f.waits.Add(1)
		}
		last = who
		mu.Unlock()
	}
	copyMark := func(dst, src net.Conn, who int) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				mark(who)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	done := make(chan struct{})
	go func() { copyMark(server, client, 2); close(done) }()
	copyMark(client, server, 1)
	<-done
}

// benchToxiproxy is a running toxiproxy server and its HTTP API.
type benchToxiproxy struct {
	e   *benchEnv
	api string
}

func (e *benchEnv) startToxiproxy(bin string) *benchToxiproxy {
	addr := freeAddr(e.t)
	host, port, _ := net.SplitHostPort(addr)
	var out bytes.Buffer
	cmd := exec.Command(bin, "-host", host, "-port", port)
	cmd.Stdout, cmd.Stderr = &out, &out
	p := e.start("toxiproxy", cmd, syscall.SIGKILL, false)
	tp := &benchToxiproxy{e: e, api: "http://" + addr}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(tp.api + "/version")
		if err == nil {
			resp.Body.Close()
			return tp
		}
		if p.exited() || time.Now().After(deadline) {
			e.t.Fatalf("toxiproxy did not start: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (tp *benchToxiproxy) post(path string, v any) {
	b, _ := json.Marshal(v)
	resp, err := http.Post(tp.api+path, "application/json", bytes.NewReader(b))
	if err != nil {
		tp.e.t.Fatalf("toxiproxy %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(resp.Body)
		tp.e.t.Fatalf("toxiproxy %s: %s: %s", path, resp.Status, msg)
	}
}

func (tp *benchToxiproxy) create(name, listen, upstream string) {
	tp.post("/proxies", map[string]any{"name": name, "listen": listen, "upstream": upstream, "enabled": true})
}

// latency sets the latency toxic of the first n proxies to d in each
// direction (replacing an earlier one).
func (tp *benchToxiproxy) latency(n int, d time.Duration) {
	for i := 1; i <= n; i++ {
		for _, stream := range []string{"upstream", "downstream"} {
			name := fmt.Sprintf("mx%d", i)
			req, _ := http.NewRequest(http.MethodDelete, fmt.Sprintf("%s/proxies/%s/toxics/lat_%s", tp.api, name, stream), nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			tp.post("/proxies/"+name+"/toxics", map[string]any{"name": "lat_" + stream, "type": "latency", "stream": stream,
				"attributes": map[string]any{"latency": d.Milliseconds()}})
		}
	}
}

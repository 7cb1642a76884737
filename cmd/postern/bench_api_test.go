//go:build bench

package main

// The send API's benchmark (`make bench`, issue 15): applications that post
// each message over HTTP (POST /v1/messages, JSON, 4 KiB of text) with an
// application key, side by side with the same postern's SMTP submission
// (STARTTLS + AUTH PLAIN with the same key, a new connection per message,
// as most SMTP libraries do) — the path those applications would take
// instead. Every message is DKIM-less, queued durably and delivered to the
// benchmark's smtp-sink before a cell ends. HTTP clients are Go's
// net/http, with keep-alive (an HTTP client library's default) and without
// (a new connection per request).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

type benchAPICell struct {
	name      string
	clients   int
	msgs      int
	keepAlive bool
	smtp      bool // SMTP submission with the key instead of HTTP
}

func TestBenchAPI(t *testing.T) {
	o := benchOptionsFromEnv(t)
	if os.Geteuid() != 0 {
		t.Fatal("make bench needs root: smtp-sink -u runs only as root")
	}
	e := newBenchEnv(t, o)
	certFile, keyFile := e.makeCert()
	n := func(full, quick int) int {
		if o.quick {
			return quick
		}
		return full
	}
	var cells []benchAPICell
	for _, k := range []int{1, 20} {
		cells = append(cells,
			benchAPICell{name: fmt.Sprintf("HTTP API, keep-alive, %d client(s)", k), clients: k, keepAlive: true, msgs: n(1000*k/4+500, 40)},
			benchAPICell{name: fmt.Sprintf("HTTP API, new connection per message, %d client(s)", k), clients: k, msgs: n(1000*k/4+500, 40)},
			benchAPICell{name: fmt.Sprintf("SMTP submission (STARTTLS + AUTH with the key), new connection per message, %d client(s)", k), clients: k, smtp: true, msgs: n(300*k/2+150, 40)},
		)
	}
	cells = slices.DeleteFunc(cells, func(c benchAPICell) bool { return !o.wants(c.name) })

	type row struct {
		c  benchAPICell
		ss []benchSubSample
	}
	var rows []row
	for _, c := range cells {
		r := row{c: c}
		for rep := 1; rep <= o.reps; rep++ {
			tg, stop, _ := e.startPosternSubmission(certFile, keyFile)
			s := e.runAPI(tg, c)
			stop()
			t.Logf("%-90s rep %d: %s", c.name, rep, s)
			r.ss = append(r.ss, s)
		}
		rows = append(rows, r)
	}

	var b strings.Builder
	b.WriteString(e.subHeader(o))
	b.WriteString("| cell (postern, 4 KiB, queued and delivered) | msg/s | median request (HTTP) or transaction (SMTP) | server CPU/msg |\n|---|---:|---:|---:|\n")
	var errs []string
	for _, r := range rows {
		s, err := benchSubSummarize(r.ss)
		lat := "–"
		if err == nil {
			lat = benchMS(s.steps.Tx)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.c.name, benchRate(s.rate, err), lat, benchCPU(s.cpu, err))
		for _, s := range r.ss {
			if s.err != nil {
				errs = append(errs, fmt.Sprintf("- %s: %v", r.c.name, s.err))
			}
		}
	}
	writeBenchReport(t, o, "-api.md", b.String(), errs)
}

// runAPI makes an application key, warms up with one message per client,
// then runs the cell and waits until the sink has counted every message.
func (e *benchEnv) runAPI(tg benchSubTarget, c benchAPICell) benchSubSample {
	fail := func(format string, args ...any) benchSubSample {
		return benchSubSample{err: fmt.Errorf("%s (log: %s)", fmt.Sprintf(format, args...), benchTail(tg.logTip))}
	}
	out, err := exec.Command(e.o.bin, "user", "key", "add", benchSubUser, "--label", "bench", "--config", tg.config).CombinedOutput()
	if err != nil {
		return fail("user key add: %v: %s", err, out)
	}
	key := lastLine(string(out))
	text := strings.Repeat(strings.Repeat("X", 78)+"\n", 4<<10/80)
	req, _ := json.Marshal(map[string]any{"from": benchSender, "to": []string{benchRecipient}, "subject": "bench", "text": text})

	send := func(cl *http.Client) (time.Duration, error) {
		t := time.Now()
		r, err := http.NewRequest("POST", "http://"+tg.api+"/v1/messages", bytes.NewReader(req))
		if err != nil {
			return 0, err
		}
		r.Header.Set("Authorization", "Bearer "+key)
		r.Header.Set("Content-Type", "application/json")
		resp, err := cl.Do(r)
		if err != nil {
			return 0, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return 0, fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return time.Since(t), nil
	}
	run := func(msgs int) (benchRun, error) {
		return benchClients(benchSplit(msgs, c.clients), func(k int) ([]benchSteps, error) {
			cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: !c.keepAlive, MaxIdleConnsPerHost: 1}, Timeout: time.Minute}
			defer cl.CloseIdleConnections()
			var steps []benchSteps
			for range k {
				var st benchSteps
				var err error
				if c.smtp {
					st, err = benchGoSend(tg.submission, pathSubmission, benchMessage(4<<10), &key)
				} else {
					st.Tx, err = send(cl)
				}
				if err != nil {
					return steps, err
				}
				steps = append(steps, st)
			}
			return steps, nil
		})
	}
	return e.measureRun(fail, c.clients, c.msgs,
		func() (benchRun, error) { return run(c.clients) },
		func() (benchRun, error) { return run(c.msgs) })
}

package main

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestNoStallAfterSTARTTLS: the EHLO that follows STARTTLS is answered at
// once for a client that does not set TCP_NODELAY (Python's smtplib, what
// many applications submit with). Without the server's prompt
// acknowledgement of the client's TLS Finished (session.Logout), the
// client's EHLO waited for the kernel's delayed-ACK timer, whose minimum
// on Linux is 40 ms (TCP_DELACK_MIN), on every connection.
//
// This is a timing test of a different kind from the speed figures that
// belong in make bench: it checks that a 40 ms kernel timer is not on the
// path, so it compares the median of several connections with half that
// timer, not with how fast the machine is.
func TestNoStallAfterSTARTTLS(t *testing.T) {
	t.Parallel()
	in := newInstance(t, newWorld(t).config())
	in.start()
	host, port, _ := strings.Cut(in.cfg.Submission, ":")
	script := `
import smtplib, ssl, sys, time, json
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the built-in self-signed certificate
ms = []
for _ in range(7):
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
    s.ehlo("python.test")
    s.starttls(context=ctx)
    t = time.perf_counter()
    code, _ = s.ehlo("python.test")
    ms.append((time.perf_counter() - t) * 1000)
    assert code == 250, code
    s.quit()
print(json.dumps(ms))
`
	out, err := exec.Command("python3", "-c", script, host, port).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	var ms []float64
	if err := json.Unmarshal(out, &ms); err != nil || len(ms) != 7 {
		t.Fatalf("smtplib printed %q: %v", out, err)
	}
	slices.Sort(ms)
	median := time.Duration(ms[len(ms)/2] * float64(time.Millisecond))
	t.Logf("EHLO after STARTTLS, 7 connections: %v ms (median %v)", ms, median)
	if median >= 20*time.Millisecond {
		t.Errorf("EHLO after STARTTLS took %v (median of 7): the client's EHLO waits for a delayed ACK", median)
	}
}

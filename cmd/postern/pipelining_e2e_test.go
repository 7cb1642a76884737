package main

// Round trips of delivery, seen from the MX (issue 13): postern pipelines
// MAIL and RCPT and sends the message as BDAT LAST to a server that offers
// PIPELINING and CHUNKING, and MAIL, RCPT and DATA together to one that
// offers PIPELINING alone: two round trips per message on a reused
// connection either way.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"postern/relay/relaytest"
)

// transactionFlights returns, for every transaction a receiver saw, the
// commands it took grouped by flight (what arrived before the receiver
// answered), and how many transactions each connection carried.
func transactionFlights(cmds []relaytest.Command) (txs [][][]string, perConn map[int]int) {
	perConn = map[int]int{}
	type key struct{ conn, flight int }
	var cur [][]string
	var last key
	curConn := 0
	flush := func() {
		if cur != nil {
			txs = append(txs, cur)
		}
		cur = nil
	}
	for _, c := range cmds {
		verb, _, _ := strings.Cut(c.Line, " ")
		verb = strings.ToUpper(verb)
		if c.Conn != curConn || verb == "MAIL" {
			flush()
			curConn = c.Conn
		}
		if verb == "MAIL" {
			perConn[c.Conn]++
			cur = [][]string{}
			last = key{}
		}
		if cur == nil || verb == "QUIT" || verb == "NOOP" {
			continue
		}
		if k := (key{c.Conn, c.Flight}); k != last {
			cur = append(cur, nil)
			last = k
		}
		cur[len(cur)-1] = append(cur[len(cur)-1], verb)
	}
	flush()
	return txs, perConn
}

func TestDeliveryRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		hide []string
		want string
	}{
		{"pipelining and chunking", nil, "[[MAIL RCPT RCPT] [BDAT]]"},
		{"pipelining", []string{"CHUNKING"}, "[[MAIL RCPT RCPT DATA] [.]]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.mx("dest.test", "127.0.2.2")
			rcv := w.receiver("127.0.2.2", relaytest.WithoutExtensions(tt.hide...))
			in := newInstance(t, w.config())
			in.start()
			const n = 4
			for i := range n {
				msg := strings.Replace(swaksData, "Subject: e2e", fmt.Sprintf("Subject: round trips %d", i), 1)
				out, err := swaks(t, "--server", in.cfg.Relay, "--from", "app@example.test",
					"--to", "bob@dest.test,carol@dest.test", "--data", msg)
				if err != nil {
					t.Fatalf("swaks: %v\n%s", err, out)
				}
				// One at a time, so that each reuses the connection the
				// previous one parked.
				if _, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), i+1); err != nil {
					t.Fatalf("%v\n%s", err, in.logs.String())
				}
			}
			txs, perConn := transactionFlights(rcv.Commands())
			if len(txs) != n {
				t.Fatalf("%d transactions, want %d: %v", len(txs), n, txs)
			}
			for i, tx := range txs {
				if got := fmt.Sprint(tx); got != tt.want {
					t.Errorf("transaction %d: flights %s, want %s", i, got, tt.want)
				}
			}
			reused := 0
			for _, k := range perConn {
				reused += k - 1
			}
			if reused == 0 {
				t.Errorf("no connection carried two transactions: %v", perConn)
			}
			t.Logf("%s: %d round trips per message, %d of %d messages on a reused connection",
				tt.name, len(txs[len(txs)-1]), reused, n)
		})
	}
}

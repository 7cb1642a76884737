package smtpclient_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"

	"postern/relay/relaytest"
	"postern/relay/smtpclient"
)

// waitLimit bounds every wait of these tests; no test relies on it
// passing.
const waitLimit = 10 * time.Second

var testOpts = smtpclient.Options{Hostname: "client.test", CommandTimeout: waitLimit, DataTimeout: waitLimit}

// connect opens a client on addr past its greeting and EHLO.
func connect(t *testing.T, addr string) *smtpclient.Client {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := smtpclient.New(raw, testOpts)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	if err := c.Greet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// body is a message in memory.
type body string

func (b body) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(b))), nil }

const msg = "Subject: hello\r\n\r\nline one\r\n.line with a dot\r\n"

func tx(rcpts ...string) *smtpclient.Tx {
	t := &smtpclient.Tx{From: "a@client.test", Body: body(msg), Size: int64(len(msg))}
	for _, r := range rcpts {
		t.Rcpts = append(t.Rcpts, smtpclient.Rcpt{Addr: r})
	}
	return t
}

// send runs tx and fails the test unless every recipient was delivered.
func send(t *testing.T, c *smtpclient.Client, tx *smtpclient.Tx) *smtpclient.Result {
	t.Helper()
	res, err := c.Send(context.Background(), tx)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res.Rcpts {
		if !r.Delivered() {
			t.Fatalf("recipient %d: %+v (%v)", i, r.Reply, r.Err)
		}
	}
	return res
}

// flights groups the commands of one connection by flight, leaving out
// those of its prelude (before the first MAIL).
func flights(cmds []relaytest.Command, conn int) [][]string {
	var out [][]string
	last, started := -1, false
	for _, c := range cmds {
		if c.Conn != conn {
			continue
		}
		verb, _, _ := strings.Cut(c.Line, " ")
		started = started || verb == "MAIL"
		if !started {
			continue
		}
		if c.Flight != last {
			out = append(out, nil)
			last = c.Flight
		}
		out[len(out)-1] = append(out[len(out)-1], verb)
	}
	return out
}

// TestRoundTrips sends two messages to two recipients each on one
// connection, to servers that offer PIPELINING and CHUNKING, one of them,
// or neither, and checks from the receiver's command log which commands
// arrived together: the round trips a message costs on a reused
// connection.
func TestRoundTrips(t *testing.T) {
	for _, tt := range []struct {
		name string
		hide []string
		want [][]string // per message
	}{
		{"pipelining and chunking", nil, [][]string{{"MAIL", "RCPT", "RCPT"}, {"BDAT"}}},
		{"pipelining", []string{"CHUNKING"}, [][]string{{"MAIL", "RCPT", "RCPT", "DATA"}, {"."}}},
		{"chunking", []string{"PIPELINING"}, [][]string{{"MAIL"}, {"RCPT"}, {"RCPT"}, {"BDAT"}}},
		{"neither", []string{"PIPELINING", "CHUNKING"}, [][]string{{"MAIL"}, {"RCPT"}, {"RCPT"}, {"DATA"}, {"."}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithoutExtensions(tt.hide...))
			c := connect(t, r.Addr())
			send(t, c, tx("b@x.test", "c@x.test"))
			if !c.Reusable() {
				t.Fatal("connection not reusable after a delivered message")
			}
			send(t, c, tx("d@x.test", "e@x.test"))
			got := flights(r.Commands(), 1)
			want := append(slices.Clone(tt.want), tt.want...)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("flights %v, want %v", got, want)
			}
			t.Logf("%s: %d round trips per message on a reused connection", tt.name, len(tt.want))
			msgs := r.Messages()
			if len(msgs) != 2 || string(msgs[1].Data) != msg || !slices.Equal(msgs[1].To, []string{"d@x.test", "e@x.test"}) {
				t.Fatalf("received %+v", msgs)
			}
			if msgs[0].Opts.Size != int64(len(msg)) || msgs[0].Opts.Body != smtp.Body8BitMIME {
				t.Errorf("MAIL parameters %+v", msgs[0].Opts)
			}
		})
	}
}

// TestChunks: a message larger than one BDAT chunk arrives whole, in
// several chunks, the last one LAST. (They go back to back, but the
// receiver answers the first before the rest has arrived, so its flights
// do not show it.)
func TestChunks(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0")
	c := connect(t, r.Addr())
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 700) + "\r\n.\r\nend\r\n"
	m := tx("b@x.test")
	m.Body, m.Size = body(big), int64(len(big))
	send(t, c, m)
	msgs := r.Messages()
	if len(msgs) != 1 || string(msgs[0].Data) != big {
		t.Fatalf("received %d messages, the first %d bytes, want %d", len(msgs), len(msgs[0].Data), len(big))
	}
	var bdat []string
	for _, cmd := range r.Commands() {
		if strings.HasPrefix(cmd.Line, "BDAT") {
			bdat = append(bdat, cmd.Line)
		}
	}
	if len(bdat) < 2 || !strings.HasSuffix(bdat[len(bdat)-1], " LAST") || strings.HasSuffix(bdat[0], " LAST") {
		t.Errorf("BDAT commands %q", bdat)
	}
}

// TestTooManyRecipients: a server that takes 2 recipients per transaction
// and says so only by 452 4.5.3 gets the rest in further transactions at
// once, on the same connection; one that says so with LIMITS RCPTMAX
// never sees a third RCPT in a transaction.
func TestTooManyRecipients(t *testing.T) {
	rcpts := []string{"r1@x.test", "r2@x.test", "r3@x.test", "r4@x.test", "r5@x.test"}
	for _, tt := range []struct {
		name string
		hide []string
		rcpt int // RCPT commands expected
	}{
		{"452", []string{"LIMITS"}, 5 + 3 + 1},
		{"RCPTMAX", nil, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithoutExtensions(tt.hide...),
				relaytest.WithServer(func(s *smtp.Server) { s.MaxRecipients = 2 }))
			c := connect(t, r.Addr())
			res := send(t, c, tx(rcpts...))
			if res.Transactions != 3 || len(res.Replies) != 3 {
				t.Errorf("%d transactions, %d replies, want 3", res.Transactions, len(res.Replies))
			}
			for i, re := range res.Replies {
				if re == nil || re.Code != 250 || re.Command != smtpclient.CmdEOD {
					t.Errorf("transaction %d ended with %v", i, re)
				}
			}
			var got []string
			for _, m := range r.Messages() {
				got = append(got, strings.Join(m.To, ","))
			}
			if want := []string{"r1@x.test,r2@x.test", "r3@x.test,r4@x.test", "r5@x.test"}; !slices.Equal(got, want) {
				t.Errorf("transactions %q, want %q", got, want)
			}
			n := 0
			for _, cmd := range r.Commands() {
				if strings.HasPrefix(cmd.Line, "RCPT") {
					n++
				}
			}
			if n != tt.rcpt {
				t.Errorf("%d RCPT commands, want %d", n, tt.rcpt)
			}
			if !c.Reusable() {
				t.Error("connection not reusable")
			}
		})
	}
}

// TestRcptMaxBatchRefused: with LIMITS RCPTMAX, a batch whose every RCPT
// is refused leaves its transaction open without a message; the client
// RSETs and the next batch's recipients are still delivered, not given up
// as if the connection were spoilt.
func TestRcptMaxBatchRefused(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithServer(func(s *smtp.Server) { s.MaxRecipients = 2 }))
	r.FailRcpt("bad1@x.test", 550, "5.1.1 no such user")
	r.FailRcpt("bad2@x.test", 550, "5.1.1 no such user")
	c := connect(t, r.Addr())
	res, err := c.Send(context.Background(), tx("bad1@x.test", "bad2@x.test", "good@x.test"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{550, 550, 250} {
		rr := res.Rcpts[i]
		code := 0
		if rr.Reply != nil {
			code = rr.Reply.Code
		}
		if rr.Err != nil || code != want {
			t.Errorf("recipient %d: reply %d, err %v, want %d", i, code, rr.Err, want)
		}
	}
	if msgs := r.Messages(); len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "good@x.test" {
		t.Errorf("delivered %+v, want one message to good@x.test", msgs)
	}
}

// TestRefusals: each recipient gets its own typed reply; a refused MAIL is
// Send's error and leaves the connection in step for the next message;
// with every RCPT refused no content is sent and the transaction stays
// open, so the connection is not reused.
func TestRefusals(t *testing.T) {
	for _, hide := range [][]string{nil, {"CHUNKING"}, {"PIPELINING", "CHUNKING"}} {
		t.Run(strings.Join(hide, "+"), func(t *testing.T) {
			r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithoutExtensions(hide...))
			r.FailRcpt("bad@x.test", 550, "5.1.1 no such user")
			r.FailRcpt("full@x.test", 452, "4.2.2 mailbox full")
			c := connect(t, r.Addr())
			ctx := context.Background()

			res, err := c.Send(ctx, tx("bad@x.test", "ok@x.test", "full@x.test"))
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"550 5.1.1 no such user", "250 2.0.0 ", "452 4.2.2 mailbox full"}
			for i, rr := range res.Rcpts {
				if rr.Reply == nil || !strings.HasPrefix(rr.Reply.String(), want[i]) {
					t.Errorf("recipient %d: %v, %v; want %q", i, rr.Reply, rr.Err, want[i])
				}
			}
			if res.Rcpts[0].Reply.Command != smtpclient.CmdRCPT || res.Rcpts[1].Reply.Command != smtpclient.CmdEOD ||
				!res.Rcpts[1].Delivered() || res.Rcpts[0].Delivered() || res.Rcpts[2].Reply.Permanent() {
				t.Errorf("results %+v", res.Rcpts)
			}

			r.FailNext(relaytest.CmdMAIL, 451, "4.3.0 not now", 1)
			_, err = c.Send(ctx, tx("ok@x.test"))
			var re *smtpclient.Error
			if !errors.As(err, &re) || re.Code != 451 || re.Command != smtpclient.CmdMAIL {
				t.Fatalf("refused MAIL: %v", err)
			}
			if !c.Reusable() {
				t.Fatal("a refused MAIL left the connection unusable")
			}
			send(t, c, tx("ok@x.test"))

			res, err = c.Send(ctx, tx("bad@x.test"))
			if err != nil || res.Rcpts[0].Reply.Code != 550 || res.Replies[0] != res.Rcpts[0].Reply {
				t.Fatalf("every RCPT refused: %+v, %v", res, err)
			}
			if c.Reusable() {
				t.Error("reusable with a transaction left open")
			}
			if n := len(r.Messages()); n != 2 {
				t.Errorf("%d messages, want 2", n)
			}
			// The last transaction, with no recipient, sent no content.
			cmds := r.Commands()
			if last := cmds[len(cmds)-1].Line; !strings.HasPrefix(last, "RCPT") && last != "DATA" {
				t.Errorf("last command %q, want the refused RCPT (or DATA when pipelining)", last)
			}
		})
	}
}

// script runs a fake server on loopback that greets, answers EHLO with ext
// and then runs serve on the connection; it returns the address.
func script(t *testing.T, ext string, serve func(tp *textproto.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(waitLimit))
		tp := textproto.NewConn(nc)
		tp.PrintfLine("220 fake ESMTP")
		line, _ := tp.ReadLine()
		if strings.HasPrefix(line, "EHLO") {
			tp.PrintfLine("%s", ext)
		}
		serve(tp)
	}()
	return l.Addr().String()
}

// TestDATAWithoutRecipients: RFC 2920 §3.1. A server that answers the
// pipelined DATA with 354 although it refused every RCPT gets no content
// and no final dot: the client closes the connection.
func TestDATAWithoutRecipients(t *testing.T) {
	got := make(chan string, 1)
	addr := script(t, "250-fake\r\n250 PIPELINING", func(tp *textproto.Conn) {
		for _, rep := range []string{"250 ok", "550 5.1.1 no", "354 go ahead"} {
			tp.ReadLine()
			tp.PrintfLine("%s", rep)
		}
		rest, err := io.ReadAll(tp.R)
		got <- fmt.Sprintf("%q %v", rest, err)
	})
	c := connect(t, addr)
	res, err := c.Send(context.Background(), tx("b@x.test"))
	if err != nil || res.Rcpts[0].Reply.Code != 550 {
		t.Fatalf("%+v, %v", res, err)
	}
	if c.Reusable() {
		t.Error("connection still usable")
	}
	if s := <-got; s != `"" <nil>` {
		t.Errorf("after the 354 the server read %s, want nothing and EOF", s)
	}
}

// TestSTARTTLSInjection: CVE-2011-0411. A reply that arrives with the 220
// to STARTTLS, before the handshake, is refused.
func TestSTARTTLSInjection(t *testing.T) {
	addr := script(t, "250-fake\r\n250 STARTTLS", func(tp *textproto.Conn) {
		tp.ReadLine()
		tp.W.WriteString("220 go ahead\r\n250 injected\r\n")
		tp.W.Flush()
		io.Copy(io.Discard, tp.R)
	})
	c := connect(t, addr)
	if !c.Ext().StartTLS {
		t.Fatal("STARTTLS not seen")
	}
	err := c.StartTLS(context.Background(), nil)
	if !errors.Is(err, smtpclient.ErrTLS) || !strings.Contains(err.Error(), "unexpected data") {
		t.Fatalf("got %v", err)
	}
}

// TestHELOFallback: a server that refuses EHLO gets HELO, and is sent
// nothing but plain SMTP.
func TestHELOFallback(t *testing.T) {
	addr := script(t, "502 5.5.1 what", func(tp *textproto.Conn) {
		line, _ := tp.ReadLine()
		if !strings.HasPrefix(line, "HELO client.test") {
			tp.PrintfLine("500 want HELO, got %s", line)
			return
		}
		tp.PrintfLine("250 hi")
		line, _ = tp.ReadLine()
		tp.PrintfLine("250 got %s", line)
	})
	c := connect(t, addr)
	if c.Ext().ESMTP || c.Ext().Pipelining {
		t.Errorf("extensions after HELO: %+v", c.Ext())
	}
	if err := c.Noop(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestDeadlines: a server that stops answering fails the command after
// CommandTimeout; a context that ends closes the connection at once.
func TestDeadlines(t *testing.T) {
	hang := func(tp *textproto.Conn) { io.Copy(io.Discard, tp.R) }
	addr := script(t, "250 fake", hang)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOpts
	opts.CommandTimeout = 50 * time.Millisecond
	c := smtpclient.New(raw, opts)
	defer c.Close()
	ctx := context.Background()
	if err := c.Greet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(ctx, tx("b@x.test"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %v, want a timeout", err)
	}

	addr = script(t, "250 fake", hang)
	c = connect(t, addr)
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := c.Send(cctx, tx("b@x.test")); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if c.Reusable() {
		t.Error("cancelled connection still usable")
	}
}

// brokenBody fails after some content.
type brokenBody struct{}

func (brokenBody) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("Subject: cut\r\n\r\nthe first part"),
		iotest.ErrReader(errors.New("disk on fire")))), nil
}

// TestBodyError: a message that cannot be read to its end is never
// delivered cut short, by DATA or BDAT: the connection is closed before
// the end of the content.
func TestBodyError(t *testing.T) {
	for _, hide := range [][]string{nil, {"CHUNKING"}} {
		r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithoutExtensions(hide...))
		c := connect(t, r.Addr())
		m := tx("b@x.test")
		m.Body = brokenBody{}
		res, err := c.Send(context.Background(), m)
		if err != nil || !errors.Is(res.Rcpts[0].Err, smtpclient.ErrBody) || !strings.Contains(res.Rcpts[0].Err.Error(), "disk on fire") {
			t.Fatalf("%v: %+v, %v", hide, res, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		if err := r.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		if n := len(r.Messages()); n != 0 {
			t.Fatalf("%v: %d cut-short messages delivered", hide, n)
		}
	}
}

// TestDSNParameters: the DSN parameters reach a server that offers DSN,
// xtext-encoded, and decode to what was given.
func TestDSNParameters(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithServer(func(s *smtp.Server) { s.EnableDSN = true }))
	c := connect(t, r.Addr())
	m := tx("b@x.test")
	m.Ret, m.EnvID = "HDRS", "id+1=2"
	m.Rcpts[0].Notify = []string{"SUCCESS", "FAILURE"}
	m.Rcpts[0].ORcptType, m.Rcpts[0].ORcptValue = "rfc822", "Orig+x@y.test"
	send(t, c, m)
	got := r.Messages()[0]
	if got.Opts.Return != smtp.DSNReturnHeaders || got.Opts.EnvelopeID != "id+1=2" ||
		got.RcptOpts[0].OriginalRecipient != "Orig+x@y.test" || len(got.RcptOpts[0].Notify) != 2 {
		t.Errorf("received %+v %+v", got.Opts, got.RcptOpts)
	}
}

// TestREQUIRETLS: MAIL carries REQUIRETLS over TLS to a server that offers
// it; in plain text Send refuses and sends nothing.
func TestREQUIRETLS(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithSTARTTLS("mx.test"),
		relaytest.WithServer(func(s *smtp.Server) { s.EnableREQUIRETLS = true }))
	plain := connect(t, r.Addr())
	m := tx("b@x.test")
	m.RequireTLS = true
	if _, err := plain.Send(context.Background(), m); !errors.Is(err, smtpclient.ErrNoREQUIRETLS) {
		t.Fatalf("in plain text: %v, want ErrNoREQUIRETLS", err)
	}
	if n := len(r.Messages()); n != 0 {
		t.Fatalf("%d messages sent in plain text", n)
	}
	c := connect(t, r.Addr())
	if err := c.StartTLS(context.Background(), &tls.Config{ServerName: "mx.test", RootCAs: r.CertPool()}); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cs, ok := c.ConnectionState(); !ok || len(cs.PeerCertificates) == 0 {
		t.Errorf("ConnectionState after STARTTLS: %v, %v", cs, ok)
	}
	send(t, c, m)
	if got := r.Messages(); len(got) != 1 || !got[0].Opts.RequireTLS || !got[0].TLS {
		t.Errorf("received %+v, want one message with REQUIRETLS over TLS", got)
	}
}

// TestAuth: PLAIN and LOGIN against a server that checks them.
func TestAuth(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0", relaytest.WithAuth("u", "p w"))
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		c := connect(t, r.Addr())
		if !c.Ext().SupportsAuth(mech) {
			t.Fatalf("%s not offered: %+v", mech, c.Ext())
		}
		if err := c.Auth(context.Background(), mech, "u", "wrong"); err == nil {
			t.Errorf("%s: a wrong password was accepted", mech)
		} else if re, ok := errors.AsType[*smtpclient.Error](err); !ok || re.Code != 535 {
			t.Errorf("%s: %v", mech, err)
		}
		c = connect(t, r.Addr())
		if err := c.Auth(context.Background(), mech, "u", "p w"); err != nil {
			t.Errorf("%s: %v", mech, err)
		}
		send(t, c, tx("b@x.test"))
	}
}

// TestMailMax: a server that allows one transaction per connection
// (LIMITS MAILMAX=1) makes the connection unusable after it.
func TestMailMax(t *testing.T) {
	addr := script(t, "250-fake\r\n250-PIPELINING\r\n250 LIMITS MAILMAX=1", func(tp *textproto.Conn) {
		for _, rep := range []string{"250 ok", "250 ok", "354 go"} {
			tp.ReadLine()
			tp.PrintfLine("%s", rep)
		}
		tp.ReadDotBytes()
		tp.PrintfLine("250 2.0.0 queued")
		io.Copy(io.Discard, tp.R)
	})
	c := connect(t, addr)
	send(t, c, tx("b@x.test"))
	if c.Reusable() {
		t.Error("reusable past MAILMAX")
	}
}

// TestBadLine: an address with a line break is refused before anything
// is sent.
func TestBadLine(t *testing.T) {
	r := relaytest.NewReceiver(t, "127.0.0.2:0")
	c := connect(t, r.Addr())
	res, err := c.Send(context.Background(), tx("b@x.test>\r\nRCPT TO:<evil@x.test", "ok@x.test"))
	if err != nil || !errors.Is(res.Rcpts[0].Err, smtpclient.ErrBadLine) || !res.Rcpts[1].Delivered() {
		t.Fatalf("%+v, %v", res, err)
	}
	for _, cmd := range r.Commands() {
		if strings.Contains(cmd.Line, "evil") {
			t.Fatalf("sent %q", cmd.Line)
		}
	}
	m := tx("b@x.test")
	m.From = "a@x.test>\nRSET"
	res, err = c.Send(context.Background(), m)
	if err != nil || !errors.Is(res.Rcpts[0].Err, smtpclient.ErrBadLine) || res.Transactions != 0 {
		t.Fatalf("bad sender: %+v, %v", res, err)
	}
	send(t, c, tx("b@x.test"))
}

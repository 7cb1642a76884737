package outbound_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue"
	"postern/relay/outbound"
	"postern/relay/relaytest"
)

const (
	shUser = "app@provider.test"
	shPass = "pw-5ecret with spaces"
)

// passwordFile writes pw into a file and returns its path.
func passwordFile(t *testing.T, pw string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// smarthost builds a smarthost named name for r, at "localhost:port" so
// that the certificate is checked for a host name, with the receiver's
// pool as roots.
func (e *env) smarthost(name string, r *relaytest.Receiver, cfg outbound.SmarthostConfig, log *zap.Logger) *outbound.Smarthost {
	e.t.Helper()
	cfg.Name = name
	if cfg.Address == "" {
		cfg.Address = net.JoinHostPort("localhost", strconv.Itoa(r.Port()))
	}
	h, err := outbound.NewSmarthost(cfg, outbound.Options{Hostname: "postern.test", RootCAs: r.CertPool(), Logger: log})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { h.Close() })
	return h
}

// smarthostReceiver starts a receiver on 127.0.0.1 (what localhost
// reaches) with a certificate for localhost.
func (e *env) smarthostReceiver(opts ...relaytest.ReceiverOption) *relaytest.Receiver {
	e.t.Helper()
	r := relaytest.NewReceiver(e.t, "127.0.0.1:0", opts...)
	e.rx[r.Addr()] = r
	return r
}

func TestSmarthostSTARTTLSAuth(t *testing.T) {
	tlsAuth := []relaytest.ReceiverOption{relaytest.WithSTARTTLS("localhost"), relaytest.WithAuth(shUser, shPass)}
	mta := func(r *relaytest.Receiver) string {
		return "localhost (smarthost provider)"
	}
	for _, tt := range []struct {
		name     string
		rx       []relaytest.ReceiverOption
		cfg      outbound.SmarthostConfig
		noRoots  bool
		want     queue.Outcome
		reply    string // prefix of the reply
		auths    []relaytest.AuthAttempt
		received bool
	}{
		{
			name: "right password over verified STARTTLS",
			rx:   tlsAuth,
			cfg:  outbound.SmarthostConfig{Username: shUser},
			want: queue.Delivered, reply: "250 ",
			auths:    []relaytest.AuthAttempt{{Mech: "PLAIN", Username: shUser, Password: shPass, TLS: true, OK: true}},
			received: true,
		},
		{
			name: "wrong password is temporary",
			rx:   []relaytest.ReceiverOption{relaytest.WithSTARTTLS("localhost"), relaytest.WithAuth(shUser, "another")},
			cfg:  outbound.SmarthostConfig{Username: shUser},
			want: queue.Temporary, reply: "535 5.7.8 ",
			auths: []relaytest.AuthAttempt{{Mech: "PLAIN", Username: shUser, Password: shPass, TLS: true, OK: false}},
		},
		{
			name:    "untrusted certificate: no password sent",
			rx:      tlsAuth,
			cfg:     outbound.SmarthostConfig{Username: shUser},
			noRoots: true,
			want:    queue.Temporary, reply: "451 4.7.5 ",
		},
		{
			name: "certificate for another name: no password sent",
			rx:   []relaytest.ReceiverOption{relaytest.WithSTARTTLS("other.test"), relaytest.WithAuth(shUser, shPass)},
			cfg:  outbound.SmarthostConfig{Username: shUser},
			want: queue.Temporary, reply: "451 4.7.5 ",
		},
		{
			name:    "verification off still encrypts",
			rx:      tlsAuth,
			cfg:     outbound.SmarthostConfig{Username: shUser, InsecureSkipVerify: true},
			noRoots: true,
			want:    queue.Delivered, reply: "250 ",
			auths:    []relaytest.AuthAttempt{{Mech: "PLAIN", Username: shUser, Password: shPass, TLS: true, OK: true}},
			received: true,
		},
		{
			name: "STARTTLS not offered: no password sent",
			rx:   []relaytest.ReceiverOption{relaytest.WithAuth(shUser, shPass)},
			cfg:  outbound.SmarthostConfig{Username: shUser},
			want: queue.Temporary, reply: "451 4.7.10 STARTTLS required",
		},
		{
			name: "implicit TLS",
			rx:   []relaytest.ReceiverOption{relaytest.WithImplicitTLS("localhost"), relaytest.WithAuth(shUser, shPass)},
			cfg:  outbound.SmarthostConfig{Username: shUser, TLS: outbound.ImplicitTLS},
			want: queue.Delivered, reply: "250 ",
			auths:    []relaytest.AuthAttempt{{Mech: "PLAIN", Username: shUser, Password: shPass, TLS: true, OK: true}},
			received: true,
		},
		{
			name: "AUTH required but no username configured: 530 is temporary",
			rx:   tlsAuth,
			cfg:  outbound.SmarthostConfig{},
			want: queue.Temporary, reply: "530 5.7.0 ",
		},
		{
			name: "no TLS, no AUTH",
			cfg:  outbound.SmarthostConfig{TLS: outbound.NoTLS},
			want: queue.Delivered, reply: "250 ",
			received: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.smarthostReceiver(tt.rx...)
			core, logs := observer.New(zap.DebugLevel)
			cfg := tt.cfg
			if cfg.Username != "" {
				cfg.PasswordFile = passwordFile(t, shPass)
			}
			h := e.smarthost("provider", r, cfg, zap.New(core))
			if tt.noRoots {
				var err error
				h, err = outbound.NewSmarthost(outbound.SmarthostConfig{
					Name: "provider", Address: net.JoinHostPort("localhost", strconv.Itoa(r.Port())),
					InsecureSkipVerify: cfg.InsecureSkipVerify, Username: cfg.Username, PasswordFile: cfg.PasswordFile,
				}, outbound.Options{Hostname: "postern.test", Logger: zap.New(core)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { h.Close() })
			}
			d := e.delivery("example.test", "b@example.test")
			got := h.Deliver(context.Background(), d)
			check(t, got, want{tt.want, tt.reply, mta(r)})
			if a := r.Auths(); !slices.Equal(a, tt.auths) {
				t.Errorf("the smarthost saw AUTH %+v, want %+v", a, tt.auths)
			}
			msgs := r.Messages()
			if tt.received != (len(msgs) == 1) {
				t.Fatalf("the smarthost got %d messages, want received=%v", len(msgs), tt.received)
			}
			if tt.received {
				m := msgs[0]
				if m.From != "a@sender.test" || !slices.Equal(m.To, []string{"b@example.test"}) || string(m.Data) != msgText {
					t.Errorf("message = %q -> %q %q", m.From, m.To, m.Data)
				}
				if tt.auths != nil && m.AuthUser != shUser {
					t.Errorf("message sent as %q, want %q", m.AuthUser, shUser)
				}
			}
			// The password never reaches the log, whatever happened.
			for _, entry := range logs.AllUntimed() {
				if line := fmt.Sprint(entry.Message, entry.ContextMap()); strings.Contains(line, "5ecret") {
					t.Errorf("password in a log line: %s", line)
				}
			}
			lines := logs.FilterMessage("delivery attempt").AllUntimed()
			if len(lines) != 1 || lines[0].ContextMap()["smarthost"] != "provider" {
				t.Errorf("attempt log lines: %v", logs.AllUntimed())
			}
		})
	}
}

func TestNewSmarthostErrors(t *testing.T) {
	t.Setenv("POSTERN_TEST_SH_PW", "from-env")
	t.Setenv("POSTERN_TEST_SH_EMPTY", "")
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\nsecond line\n"), 0o600)
	for _, tt := range []struct {
		name string
		cfg  outbound.SmarthostConfig
		want error  // for errors.Is; nil with wantMsg means any error
		msg  string // substring of the error; "" means success
	}{
		{"file", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordFile: passwordFile(t, "pw")}, nil, ""},
		{"env", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordEnv: "POSTERN_TEST_SH_PW"}, nil, ""},
		{"no username needs no password", outbound.SmarthostConfig{Address: "h:25", TLS: outbound.NoTLS}, nil, ""},
		{"missing file", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordFile: "/nonexistent/pw"}, os.ErrNotExist, "password_file"},
		{"empty first line", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordFile: empty}, outbound.ErrNoPassword, "first line is empty"},
		{"unset env", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordEnv: "POSTERN_TEST_SH_UNSET"}, outbound.ErrNoPassword, "POSTERN_TEST_SH_UNSET is not set"},
		{"empty env", outbound.SmarthostConfig{Address: "h:587", Username: "u", PasswordEnv: "POSTERN_TEST_SH_EMPTY"}, outbound.ErrNoPassword, "not set"},
		{"neither", outbound.SmarthostConfig{Address: "h:587", Username: "u"}, outbound.ErrNoPassword, ""},
		{"password in clear", outbound.SmarthostConfig{Address: "h:25", TLS: outbound.NoTLS, Username: "u", PasswordEnv: "POSTERN_TEST_SH_PW"}, outbound.ErrClearPassword, "tls none"},
		{"bad address", outbound.SmarthostConfig{Address: "h"}, nil, "not host:port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Name = "sh"
			_, err := outbound.NewSmarthost(tt.cfg, outbound.Options{})
			success := tt.want == nil && tt.msg == ""
			switch {
			case success && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case !success && err == nil:
				t.Fatal("no error")
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("error %v is not %v", err, tt.want)
			case !success && (!strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), `"sh"`)):
				t.Errorf("error %q lacks %q or the smarthost's name", err, tt.msg)
			}
			if err != nil && strings.Contains(err.Error(), "from-env") {
				t.Errorf("error quotes the password: %v", err)
			}
		})
	}
}

func TestFailover(t *testing.T) {
	for _, tt := range []struct {
		name string
		// first sets up the first smarthost's failure; nil leaves it down.
		first    func(r *relaytest.Receiver)
		want     queue.Outcome
		reply    string
		bySecond bool
	}{
		{name: "first down", first: nil, want: queue.Delivered, reply: "250 ", bySecond: true},
		{name: "421 greeting", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdConnect, 421, "4.3.2 closing", 1) },
			want: queue.Delivered, reply: "250 ", bySecond: true},
		{name: "451 to MAIL", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdMAIL, 451, "4.3.0 later", 1) },
			want: queue.Delivered, reply: "250 ", bySecond: true},
		{name: "451 to every RCPT", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdRCPT, 451, "4.3.0 later", -1) },
			want: queue.Delivered, reply: "250 ", bySecond: true},
		{name: "451 after the data", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdDATA, 451, "4.3.0 later", 1) },
			want: queue.Delivered, reply: "250 ", bySecond: true},
		{name: "550 to RCPT is final", first: func(r *relaytest.Receiver) { r.FailRcpt("b@example.test", 550, "5.1.1 no such user") },
			want: queue.Permanent, reply: "550 5.1.1 no such user"},
		{name: "554 to MAIL is final", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdMAIL, 554, "5.7.1 go away", 1) },
			want: queue.Permanent, reply: "554 5.7.1 go away"},
		{name: "554 after the data is final", first: func(r *relaytest.Receiver) { r.FailNext(relaytest.CmdDATA, 554, "5.6.0 bad content", 1) },
			want: queue.Permanent, reply: "554 5.6.0 bad content"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			second := e.receiver("127.0.0.3")
			var first *relaytest.Receiver
			if tt.first != nil {
				first = e.receiver("127.0.0.2")
				tt.first(first)
			}
			mk := func(name, ip string) *outbound.Smarthost {
				h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
					Name: name, Address: net.JoinHostPort(ip, strconv.Itoa(e.port)), TLS: outbound.NoTLS,
				}, outbound.Options{Hostname: "postern.test"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { h.Close() })
				return h
			}
			f := outbound.Failover{mk("one", "127.0.0.2"), mk("two", "127.0.0.3")}
			got := f.Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
			mta := "127.0.0.2 (smarthost one)"
			if tt.bySecond {
				mta = "127.0.0.3 (smarthost two)"
			}
			check(t, got, want{tt.want, tt.reply, mta})
			if n := len(second.Messages()); (n == 1) != tt.bySecond {
				t.Errorf("second smarthost got %d messages", n)
			}
			if first != nil && len(first.Messages()) != 0 {
				t.Errorf("first smarthost took the message too")
			}
		})
	}
}

// TestFailoverNoReplyAfterDot: once the final dot has gone out to a
// smarthost, it may hold the message even if no reply came: the next
// smarthost is not tried (a duplicate is worse than a delay), and the
// recipient is deferred.
func TestFailoverNoReplyAfterDot(t *testing.T) {
	e := newEnv(t)
	second := e.receiver("127.0.0.3")
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(e.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := ln.Accept(); err == nil {
			fakeMX(c, false, true)
		}
	}()
	var f outbound.Failover
	for _, hp := range [][2]string{{"one", "127.0.0.2"}, {"two", "127.0.0.3"}} {
		h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
			Name: hp[0], Address: net.JoinHostPort(hp[1], strconv.Itoa(e.port)), TLS: outbound.NoTLS,
		}, outbound.Options{Hostname: "postern.test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		f = append(f, h)
	}
	got := f.Deliver(context.Background(), e.delivery("example.test", "b@example.test"))
	check(t, got, want{queue.Temporary, "", "127.0.0.2 (smarthost one)"})
	if n := len(second.Messages()); n != 0 {
		t.Errorf("the second smarthost got %d messages after the first may have taken it", n)
	}
	<-served
}

// TestFailoverAllDown: every smarthost failing leaves the recipients
// Temporary with the last one's words.
func TestFailoverAllDown(t *testing.T) {
	e := newEnv(t)
	r := e.receiver("127.0.0.3")
	r.FailNext(relaytest.CmdMAIL, 452, "4.3.1 disk full", -1)
	var f outbound.Failover
	for i, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
			Name: fmt.Sprint("sh", i), Address: net.JoinHostPort(ip, strconv.Itoa(e.port)), TLS: outbound.NoTLS,
		}, outbound.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		f = append(f, h)
	}
	got := f.Deliver(context.Background(), e.delivery("example.test", "b@example.test", "c@example.test"))
	check(t, got, want{queue.Temporary, "452 4.3.1 disk full", "127.0.0.3 (smarthost sh1)"},
		want{queue.Temporary, "452 4.3.1 disk full", "127.0.0.3 (smarthost sh1)"})
}

// TestDSNPassThrough: RET, ENVID, NOTIFY and ORCPT reach a server that
// offers DSN, which then reports (RemoteDSN); one that does not gets none.
func TestDSNPassThrough(t *testing.T) {
	enable := relaytest.WithServer(func(s *smtp.Server) { s.EnableDSN = true })
	for _, tt := range []struct {
		name      string
		offer     bool
		dsn       []queue.RcptDSN
		remoteDSN []bool
	}{
		{"offered", true, []queue.RcptDSN{{Notify: []string{"SUCCESS", "FAILURE"}, ORcpt: "rfc822;Orig@x.test"}, {}}, []bool{true, true}},
		{"not offered", false, []queue.RcptDSN{{Notify: []string{"SUCCESS"}}, {}}, []bool{false, false}},
		{"malformed left out", true, []queue.RcptDSN{{Notify: []string{"NEVER", "SUCCESS"}}, {ORcpt: "x400;whatever"}}, []bool{false, false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var opts []relaytest.ReceiverOption
			if tt.offer {
				opts = append(opts, enable)
			}
			r := e.receiver("127.0.0.2", opts...)
			e.mx("example.test", 10, "mx1.example.test", "127.0.0.2")
			d := e.delivery("example.test", "b@example.test", "c@example.test")
			d.Ret, d.EnvID, d.DSN = "HDRS", "env+1", tt.dsn
			got := e.deliverer(outbound.Options{}).Deliver(context.Background(), d)
			for i, g := range got {
				if g.Outcome != queue.Delivered || g.RemoteDSN != tt.remoteDSN[i] {
					t.Errorf("result %d = %+v, want delivered with RemoteDSN %v", i, g, tt.remoteDSN[i])
				}
			}
			m := r.Messages()[0]
			if !tt.offer {
				if m.Opts.Return != "" || m.Opts.EnvelopeID != "" || len(m.RcptOpts[0].Notify) != 0 {
					t.Errorf("DSN parameters sent to a server without DSN: %+v %+v", m.Opts, m.RcptOpts)
				}
				return
			}
			if m.Opts.Return != smtp.DSNReturnHeaders || m.Opts.EnvelopeID != "env+1" {
				t.Errorf("MAIL options = %+v", m.Opts)
			}
			if tt.remoteDSN[0] {
				o := m.RcptOpts[0]
				if !slices.Equal(o.Notify, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) ||
					o.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || o.OriginalRecipient != "Orig@x.test" {
					t.Errorf("RCPT options = %+v", o)
				}
			} else if o := m.RcptOpts[0]; len(o.Notify) != 0 {
				t.Errorf("malformed NOTIFY was sent: %+v", o)
			}
		})
	}
}

// TestSmarthostREQUIRETLS: a REQUIRETLS message goes to a smarthost only
// over verified TLS and only when it offers REQUIRETLS, and then carries
// it in MAIL (RFC 8689); otherwise it fails for good with 5.7.30 and the
// smarthost gets nothing.
func TestSmarthostREQUIRETLS(t *testing.T) {
	offers := relaytest.WithServer(func(s *smtp.Server) { s.EnableREQUIRETLS = true })
	for _, tt := range []struct {
		name  string
		rx    []relaytest.ReceiverOption
		cfg   outbound.SmarthostConfig
		want  queue.Outcome
		reply string
	}{
		{"verified TLS, REQUIRETLS offered", []relaytest.ReceiverOption{relaytest.WithSTARTTLS("localhost"), offers}, outbound.SmarthostConfig{}, queue.Delivered, "250 "},
		{"REQUIRETLS not offered", []relaytest.ReceiverOption{relaytest.WithSTARTTLS("localhost")}, outbound.SmarthostConfig{}, queue.Permanent, "550 5.7.30 REQUIRETLS support required: localhost does not offer REQUIRETLS"},
		{"certificate not verified", []relaytest.ReceiverOption{relaytest.WithSTARTTLS("localhost"), offers}, outbound.SmarthostConfig{InsecureSkipVerify: true}, queue.Permanent, "550 5.7.30 REQUIRETLS support required: localhost is configured without certificate verification"},
		{"no TLS", []relaytest.ReceiverOption{offers}, outbound.SmarthostConfig{TLS: outbound.NoTLS}, queue.Permanent, "550 5.7.30 REQUIRETLS support required: localhost is configured without TLS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.smarthostReceiver(tt.rx...)
			h := e.smarthost("provider", r, tt.cfg, nil)
			d := e.delivery("example.org", "b@example.org")
			d.RequireTLS = true
			got := h.Deliver(context.Background(), d)
			if len(got) != 1 || got[0].Outcome != tt.want || !strings.HasPrefix(got[0].Reply.String(), tt.reply) {
				t.Fatalf("got %+v, want %v %q", got, tt.want, tt.reply)
			}
			msgs := r.Messages()
			if tt.want != queue.Delivered {
				if len(msgs) != 0 {
					t.Errorf("the smarthost got %d messages", len(msgs))
				}
				return
			}
			if len(msgs) != 1 || !msgs[0].TLS || !msgs[0].Opts.RequireTLS {
				t.Errorf("delivered %+v; want one message over TLS with REQUIRETLS", msgs)
			}
		})
	}
}

package auth

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// recorder is an authenticate function that records its calls.
type recorder struct {
	calls []string
	err   error
}

func (r *recorder) auth(u, p string) error {
	r.calls = append(r.calls, u+"/"+p)
	return r.err
}

type step struct {
	resp      []byte // nil: no (initial) response
	challenge string
	done      bool
	err       error
}

func runSteps(t *testing.T, srv sasl.Server, steps []step) {
	t.Helper()
	for i, st := range steps {
		ch, done, err := srv.Next(st.resp)
		if string(ch) != st.challenge || done != st.done || !errors.Is(err, st.err) {
			t.Fatalf("step %d: Next(%q) = %q, %v, %v; want %q, %v, %v",
				i, st.resp, ch, done, err, st.challenge, st.done, st.err)
		}
	}
}

func TestLoginServer(t *testing.T) {
	errBad := errors.New("bad")
	tests := []struct {
		desc    string
		authErr error
		steps   []step
		calls   string
	}{
		{"without initial response", nil, []step{
			{nil, "Username:", false, nil},
			{[]byte("alice"), "Password:", false, nil},
			{[]byte("pw"), "", true, nil},
			{[]byte("more"), "", true, sasl.ErrUnexpectedClientResponse},
		}, "alice/pw"},
		{"with initial response", nil, []step{
			{[]byte("alice"), "Password:", false, nil},
			{[]byte("pw"), "", true, nil},
		}, "alice/pw"},
		{"empty initial response is an empty user name", nil, []step{
			{[]byte{}, "Password:", false, nil},
			{[]byte("pw"), "", true, nil},
		}, "/pw"},
		{"authentication fails", errBad, []step{
			{[]byte("alice"), "Password:", false, nil},
			{[]byte("pw"), "", true, errBad},
		}, "alice/pw"},
		{"nil responses read as empty", nil, []step{
			{nil, "Username:", false, nil},
			{nil, "Password:", false, nil},
			{nil, "", true, nil},
		}, "/"},
		{"user name too long", nil, []step{
			{[]byte(strings.Repeat("u", MaxNameLen+1)), "", true, ErrMalformedResponse},
			{[]byte("pw"), "", true, sasl.ErrUnexpectedClientResponse},
		}, ""},
		{"password too long", nil, []step{
			{[]byte("alice"), "Password:", false, nil},
			{[]byte(strings.Repeat("p", 1025)), "", true, ErrMalformedResponse},
		}, ""},
		{"longest password passes to authenticate", nil, []step{
			{[]byte("a"), "Password:", false, nil},
			{[]byte(strings.Repeat("p", 1024)), "", true, nil},
		}, "a/" + strings.Repeat("p", 1024)},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := &recorder{err: tc.authErr}
			runSteps(t, NewLoginServer(r.auth), tc.steps)
			if got := strings.Join(r.calls, ","); got != tc.calls {
				t.Errorf("authenticate calls = %q, want %q", got, tc.calls)
			}
		})
	}
}

// TestLoginServerWithGoSASLClient runs go-sasl's LOGIN client, which sends
// the user name as initial response and expects exactly "Password:".
func TestLoginServerWithGoSASLClient(t *testing.T) {
	r := &recorder{}
	c := sasl.NewLoginClient("alice", "pw")
	srv := NewLoginServer(r.auth)
	_, ir, _ := c.Start()
	ch, done, err := srv.Next(ir)
	for !done && err == nil {
		var resp []byte
		if resp, err = c.Next(ch); err != nil {
			t.Fatal(err)
		}
		ch, done, err = srv.Next(resp)
	}
	if err != nil || len(r.calls) != 1 || r.calls[0] != "alice/pw" {
		t.Errorf("err %v, calls %q", err, r.calls)
	}
}

func TestPlainServer(t *testing.T) {
	tests := []struct {
		desc  string
		steps []step
		calls string
	}{
		{"no authzid", []step{{[]byte("\x00alice\x00pw"), "", true, nil}}, "alice/pw"},
		{"same authzid", []step{{[]byte("alice\x00alice\x00pw"), "", true, nil}}, "alice/pw"},
		{"authzid differs in case only", []step{{[]byte("ALICE\x00alice\x00pw"), "", true, nil}}, "alice/pw"},
		{"no initial response", []step{
			{nil, "", false, nil},
			{[]byte("\x00alice\x00pw"), "", true, nil},
		}, "alice/pw"},
		{"other authzid refused before the password is checked", []step{
			{[]byte("bob\x00alice\x00pw"), "", true, ErrAuthzidMismatch},
		}, ""},
		{"two fields", []step{{[]byte("alice\x00pw"), "", true, ErrMalformedResponse}}, ""},
		{"four fields", []step{{[]byte("\x00alice\x00pw\x00x"), "", true, ErrMalformedResponse}}, ""},
		{"too long", []step{{[]byte("\x00alice\x00" + strings.Repeat("p", 2000)), "", true, ErrMalformedResponse}}, ""},
		{"response after done", []step{
			{[]byte("\x00alice\x00pw"), "", true, nil},
			{[]byte("\x00alice\x00pw"), "", true, sasl.ErrUnexpectedClientResponse},
		}, "alice/pw"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := &recorder{}
			runSteps(t, NewPlainServer(r.auth), tc.steps)
			if got := strings.Join(r.calls, ","); got != tc.calls {
				t.Errorf("authenticate calls = %q, want %q", got, tc.calls)
			}
		})
	}
}

func TestStoreSASL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	s, _, _ := newTestStore(t, path)
	ctx := context.Background()

	var got *User
	srv, err := s.SASL(ctx, sasl.Plain, func(u *User) { got = u })
	if err != nil {
		t.Fatal(err)
	}
	if _, done, err := srv.Next([]byte("\x00alice@example.test\x00pw")); !done || err != nil || got == nil || got.Name != "alice@example.test" {
		t.Errorf("PLAIN: done %v err %v user %v", done, err, got)
	}

	got = nil
	srv, _ = s.SASL(ctx, sasl.Login, func(u *User) { got = u })
	srv.Next([]byte("alice@example.test"))
	if _, _, err := srv.Next([]byte("wrong")); !errors.Is(err, ErrInvalidCredentials) || got != nil {
		t.Errorf("LOGIN wrong password: err %v user %v", err, got)
	}

	if _, err := s.SASL(ctx, "CRAM-MD5", nil); !errors.Is(err, ErrUnknownMechanism) {
		t.Errorf("CRAM-MD5: %v", err)
	}
}

// TestSMTPWire runs the SASL servers inside a real go-smtp server and
// speaks the protocol over TCP, to check the exact prompts on the wire.
func TestSMTPWire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	Add(path, "alice@example.test", "pw", nil)
	store, _, _ := newTestStore(t, path)

	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &wireSession{store: store}, nil
	}))
	srv.Domain = "mx.example.test"
	srv.AllowInsecureAuth = true // loopback test only
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	dialogs := []struct {
		desc string
		// Lines alternate: what we send, the reply prefix we expect.
		script []string
	}{
		{"LOGIN without initial response", []string{
			"AUTH LOGIN", "334 VXNlcm5hbWU6",
			b64("alice@example.test"), "334 UGFzc3dvcmQ6",
			b64("pw"), "235 ",
			"MAIL FROM:<alice@example.test>", "250 ",
		}},
		{"LOGIN with initial response", []string{
			"AUTH LOGIN " + b64("alice@example.test"), "334 UGFzc3dvcmQ6",
			b64("pw"), "235 ",
		}},
		{"LOGIN wrong password", []string{
			"AUTH LOGIN " + b64("alice@example.test"), "334 UGFzc3dvcmQ6",
			b64("nope"), "535 5.7.8",
		}},
		{"PLAIN", []string{
			"AUTH PLAIN " + b64("\x00alice@example.test\x00pw"), "235 ",
			"MAIL FROM:<mallory@example.test>", "553 ",
		}},
		{"PLAIN proxy authorization", []string{
			"AUTH PLAIN " + b64("bob@example.test\x00alice@example.test\x00pw"), "535 5.7.8",
		}},
	}
	for _, d := range dialogs {
		t.Run(d.desc, func(t *testing.T) {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			readReply := func() string {
				t.Helper()
				var last string
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("read: %v", err)
					}
					last = strings.TrimRight(line, "\r\n")
					if len(last) < 4 || last[3] != '-' {
						return last
					}
				}
			}
			readReply() // greeting
			io.WriteString(c, "EHLO client.example.test\r\n")
			readReply()
			for i := 0; i < len(d.script); i += 2 {
				io.WriteString(c, d.script[i]+"\r\n")
				if got := readReply(); !strings.HasPrefix(got, d.script[i+1]) {
					t.Fatalf("after %q: got %q, want %q...", d.script[i], got, d.script[i+1])
				}
			}
		})
	}
}

// wireSession is the least a session needs to use Store.SASL: the mapping
// of errors to replies is the SMTP layer's, sketched here.
type wireSession struct {
	store *Store
	user  *User
}

func (s *wireSession) AuthMechanisms() []string { return Mechanisms }

func (s *wireSession) Auth(mech string) (sasl.Server, error) {
	srv, err := s.store.SASL(context.Background(), mech, func(u *User) { s.user = u })
	if err != nil {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return saslErrMap{srv}, nil
}

type saslErrMap struct{ sasl.Server }

func (m saslErrMap) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := m.Server.Next(resp)
	switch {
	case errors.Is(err, ErrInvalidCredentials), errors.Is(err, ErrAuthzidMismatch):
		err = smtp.ErrAuthFailed
	case err != nil:
		err = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed"}
	}
	return ch, done, err
}

func (s *wireSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == nil || !s.user.MaySendAs(from) {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Not your address"}
	}
	return nil
}
func (s *wireSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *wireSession) Data(io.Reader) error                 { return nil }
func (s *wireSession) Reset()                               {}
func (s *wireSession) Logout() error                        { return nil }

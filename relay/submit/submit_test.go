package submit

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"postern/auth"
	"postern/queue"
	"postern/queue/message"
	"postern/relay/status"
)

// memQueue keeps the one message it is given, as stored.
type memQueue struct {
	env  *queue.Envelope
	data string
}

func (q *memQueue) EnqueuePrefixed(_ context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	p, err := prefix()
	if err != nil {
		return "", err
	}
	q.env, q.data = env, string(p)+string(b)
	return "0000000000000001", nil
}

type fixedSigner string

func (s fixedSigner) Sign(msg io.Reader) ([]byte, error) {
	io.Copy(io.Discard, msg)
	if s == "" {
		return nil, errors.New("key broken")
	}
	return []byte(s), nil
}

func submitString(t *testing.T, p *Pipeline, o *Origin, msg string) (*memQueue, string, int64, error) {
	t.Helper()
	q := p.opts.Queue.(*memQueue)
	env := &queue.Envelope{From: "alice@example.test", Rcpts: []string{"bob@example.org"}}
	id, size, err := p.Submit(context.Background(), env, o, bufio.NewReader(strings.NewReader(msg)))
	return q, id, size, err
}

// TestSubmit: the whole pipeline on one message: header rules, Received
// for a network client and for a local user, the signature before it all,
// and the size as stored.
func TestSubmit(t *testing.T) {
	alice := auth.NewUser("alice", []auth.Pattern{auth.MustParsePattern("alice@example.test")})
	for _, tt := range []struct {
		name     string
		o        *Origin
		received string
	}{
		{"network", &Origin{IP: netip.MustParseAddr("192.0.2.7"), Helo: "client.test", Protocol: "ESMTPA", User: alice, CheckHeaderFrom: true},
			"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (postern) with ESMTPA\r\n\tfor <bob@example.org>;\r\n\t"},
		{"IPv6", &Origin{IP: netip.MustParseAddr("2001:db8::1"), Helo: "x(y)", Protocol: "ESMTP"},
			"Received: from x_y_ ([IPv6:2001:db8::1])\r\n\tby mx.test (postern) with ESMTP\r\n\tfor <bob@example.org>;\r\n\t"},
		{"local user", &Origin{UID: 1000, UserName: "alice"},
			"Received: by mx.test (postern, from userid 1000 alice)\r\n\tfor <bob@example.org>;\r\n\t"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{Hostname: "mx.test", Queue: &memQueue{}, FixHeaders: true,
				Signer: func() Signer { return fixedSigner("DKIM-Signature: x\r\n") }})
			q, id, size, err := submitString(t, p, tt.o, "From: alice@example.test\r\nBcc: hidden@example.org\r\nDate: x\r\n\r\nbody\r\n")
			if err != nil || id != "0000000000000001" {
				t.Fatalf("Submit: %q, %v", id, err)
			}
			if !strings.HasPrefix(q.data, tt.received) {
				t.Errorf("message starts %q, want the Received field %q", q.data, tt.received)
			}
			rest := q.data[strings.Index(q.data, "DKIM-Signature"):]
			want := "DKIM-Signature: x\r\nMessage-ID: <"
			if !strings.HasPrefix(rest, want) || strings.Contains(q.data, "Bcc") || !strings.HasSuffix(q.data, "From: alice@example.test\r\nDate: x\r\n\r\nbody\r\n") {
				t.Errorf("stored %q", q.data)
			}
			if size != int64(len(q.data)) {
				t.Errorf("size %d, stored %d bytes", size, len(q.data))
			}
			if id := q.env.MessageID; !strings.HasPrefix(id, "<") || !strings.Contains(q.data, "Message-ID: "+id+"\r\n") {
				t.Errorf("envelope's MessageID %q is not the one added", id)
			}
		})
	}
}

// TestSubmitRefusals: each refusal is the status a source replies with,
// and nothing is queued.
func TestSubmitRefusals(t *testing.T) {
	alice := auth.NewUser("alice", []auth.Pattern{auth.MustParsePattern("alice@example.test")})
	for _, tt := range []struct {
		name   string
		signer Signer
		o      *Origin
		msg    string
		want   *status.Error
	}{
		{"loop", nil, &Origin{}, strings.Repeat("Received: x\r\n", 3) + "\r\nbody\r\n", ErrMailLoop},
		{"someone else's From", nil, &Origin{User: alice, CheckHeaderFrom: true}, "From: ceo@example.test\r\n\r\nbody\r\n", ErrHeaderFrom},
		{"header too large", nil, &Origin{}, "X: " + strings.Repeat("a", MaxHeaderBytes) + "\r\n\r\n", ErrHeaderSize},
		{"signing fails", fixedSigner(""), &Origin{}, "From: alice@example.test\r\n\r\nbody\r\n", status.Internal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Options{Hostname: "mx.test", Queue: &memQueue{}, MaxReceived: 2, FixHeaders: true})
			if tt.signer != nil {
				p.opts.Signer = func() Signer { return tt.signer }
			}
			q, _, _, err := submitString(t, p, tt.o, tt.msg)
			if st := status.From(err); st == nil || st.Code != tt.want.Code || st.Message != tt.want.Message {
				t.Errorf("err %v, want %v", err, tt.want)
			}
			if q.env != nil {
				t.Error("a refused message was queued")
			}
		})
	}
	// Without the check, someone else's From passes (a service account's
	// listener).
	p := New(Options{Hostname: "mx.test", Queue: &memQueue{}})
	if _, _, _, err := submitString(t, p, &Origin{User: alice}, "From: ceo@example.test\r\n\r\nbody\r\n"); err != nil {
		t.Errorf("From check off: %v", err)
	}
}

// seeingSigner records what it signs, and signs only when sign says so.
type seeingSigner struct {
	sign bool
	saw  *string
}

func (s seeingSigner) Sign(msg io.Reader) ([]byte, error) {
	b, _ := io.ReadAll(msg)
	*s.saw = string(b)
	return []byte("DKIM-Signature: x\r\n"), nil
}

func (s seeingSigner) Signs(*message.Header) bool { return s.sign }

// TestSubmitDowngradesBeforeSigning: a message to be signed is signed and
// queued in its 7-bit form (RFC 6152 §3), so that delivery never has to
// convert a signed message; a message no key signs, and a 7-bit one, are
// queued as they came.
func TestSubmitDowngradesBeforeSigning(t *testing.T) {
	const eight = "From: alice@example.test\r\nDate: x\r\nMessage-ID: <a@b>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
	const seven = "From: alice@example.test\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\nplain\r\n"
	for _, tt := range []struct {
		name     string
		sign     bool
		in, tail string
	}{
		{"signed 8-bit", true, eight, "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"},
		{"unsigned 8-bit", false, eight, "Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n"},
		{"signed 7-bit", true, seven, seven},
		{"signed 8-bit, longer than a buffer", true, eight + strings.Repeat("x\r\n", 20000),
			"caf=C3=A9\r\n" + strings.Repeat("x\r\n", 20000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var saw string
			p := New(Options{Hostname: "mx.test", Queue: &memQueue{}, FixHeaders: true,
				Signer: func() Signer { return seeingSigner{tt.sign, &saw} }})
			q, _, size, err := submitString(t, p, &Origin{UID: 1}, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(q.data, tt.tail) || !strings.HasSuffix(saw, tt.tail) {
				t.Errorf("queued %q\nsigned %q\nwant both to end %q", q.data, saw, tt.tail)
			}
			if size != int64(len(q.data)) {
				t.Errorf("size %d, stored %d bytes", size, len(q.data))
			}
		})
	}
}

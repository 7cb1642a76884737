package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/emersion/go-sasl"
)

// SASL errors, for errors.Is. The SMTP layer maps them to replies: go-smtp
// sends any other error's text to the client with 454 4.7.0.
var (
	// ErrMalformedResponse is a client response that breaks the mechanism's
	// syntax or length bounds. It says nothing about any user.
	ErrMalformedResponse = errors.New("malformed SASL response")
	// ErrAuthzidMismatch is an AUTH PLAIN authorization identity that
	// differs from the authentication identity: we do not support acting on
	// behalf of another user (proxy authorization, RFC 4616 §2).
	ErrAuthzidMismatch = errors.New("authorization identity differs from user name")
	// ErrUnknownMechanism is returned by Store.SASL for a mechanism other
	// than Mechanisms.
	ErrUnknownMechanism = errors.New("unsupported SASL mechanism")
)

// Mechanisms are the SASL mechanisms Store.SASL serves, in the order to
// advertise them. Both send the password in clear, so the SMTP layer offers
// them only under TLS.
var Mechanisms = []string{sasl.Plain, sasl.Login}

// maxSASLPasswordLen bounds a password on the wire. Passwords longer than
// MaxPasswordLen fail authentication anyway; this bound only stops a client
// from making us hold or hash arbitrary amounts of data, with room to spare
// so that an over-long password is an ordinary failed attempt, padded like
// any other, rather than a distinguishable syntax error.
const maxSASLPasswordLen = 1024

// loginServer implements the LOGIN mechanism (draft-murchison-sasl-login):
// the server prompts "Username:", then "Password:", each answer being one
// client response. An initial response (AUTH LOGIN <base64 username>) is the
// user name and skips the first prompt.
type loginServer struct {
	step         int // 0: start, 1: want username, 2: want password, 3: done
	username     string
	authenticate func(username, password string) error
}

// NewLoginServer returns a SASL server for the LOGIN mechanism, which
// go-sasl lacks. authenticate is called once, with the user name and the
// password; its error ends the exchange and is returned from Next.
// Responses longer than MaxNameLen (user name) or 1024 bytes (password)
// fail with ErrMalformedResponse.
func NewLoginServer(authenticate func(username, password string) error) sasl.Server {
	return &loginServer{authenticate: authenticate}
}

func (a *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch a.step {
	case 0:
		if response == nil {
			a.step = 1
			return []byte("Username:"), false, nil
		}
		// An initial response is the user name.
		a.step = 1
		return a.Next(response)
	case 1:
		if len(response) > MaxNameLen {
			a.step = 3
			return nil, true, fmt.Errorf("%w: user name longer than %d bytes", ErrMalformedResponse, MaxNameLen)
		}
		a.username = string(response)
		a.step = 2
		return []byte("Password:"), false, nil
	case 2:
		a.step = 3
		if len(response) > maxSASLPasswordLen {
			return nil, true, fmt.Errorf("%w: password longer than %d bytes", ErrMalformedResponse, maxSASLPasswordLen)
		}
		return nil, true, a.authenticate(a.username, string(response))
	default:
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
}

// NewPlainServer returns a SASL server for the PLAIN mechanism (RFC 4616)
// that refuses proxy authorization: an authorization identity, when given,
// must name the authenticating user (ASCII case aside, as user names do),
// otherwise the exchange fails with ErrAuthzidMismatch before any password
// is checked. authenticate is called with the user name and the password;
// its error is returned unchanged. A response that is not three
// NUL-separated fields, or is too long, fails with ErrMalformedResponse.
func NewPlainServer(authenticate func(username, password string) error) sasl.Server {
	a := &plainServer{}
	a.inner = sasl.NewPlainServer(func(identity, username, password string) error {
		a.called = true
		if identity != "" && !equalFoldASCII(identity, username) {
			return ErrAuthzidMismatch
		}
		return authenticate(username, password)
	})
	return a
}

// plainServer wraps go-sasl's PLAIN server to bound the response and to give
// its syntax errors (not exported) our sentinel.
type plainServer struct {
	inner  sasl.Server
	called bool // the callback ran: an error is the callback's, not syntax
}

func (a *plainServer) Next(response []byte) ([]byte, bool, error) {
	// authzid NUL authcid NUL passwd
	if len(response) > 2*MaxNameLen+2+maxSASLPasswordLen {
		return nil, true, fmt.Errorf("%w: PLAIN response too long", ErrMalformedResponse)
	}
	ch, done, err := a.inner.Next(response)
	if err != nil {
		// go-sasl says done=false on some errors; an error ends the
		// exchange either way.
		done = true
		if !a.called {
			err = fmt.Errorf("%w: %v", ErrMalformedResponse, err)
		}
	}
	return ch, done, err
}

// SASL returns a SASL server for mech (one of Mechanisms) that
// authenticates against s; it is what the SMTP session's Auth method
// returns. On success it calls onSuccess (if not nil) with the user before
// the exchange reports done. A failure is ErrInvalidCredentials, ErrAuthzidMismatch or
// ErrMalformedResponse.
func (s *Store) SASL(ctx context.Context, mech string, onSuccess func(*User)) (sasl.Server, error) {
	check := func(username, password string) error {
		u, err := s.Authenticate(ctx, username, password)
		if err != nil {
			return err
		}
		if onSuccess != nil {
			onSuccess(u)
		}
		return nil
	}
	switch mech {
	case sasl.Plain:
		return NewPlainServer(check), nil
	case sasl.Login:
		return NewLoginServer(check), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownMechanism, mech)
}

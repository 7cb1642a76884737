package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Options configure a Client. Zero durations mean no deadline: callers
// pass RFC 5321 §4.5.3.2's values (relay/outbound's defaults).
type Options struct {
	// Hostname is the name given in EHLO and HELO.
	Hostname string
	// CommandTimeout bounds the wait for each reply, the greeting
	// included, and each write of commands; also a TLS handshake.
	CommandTimeout time.Duration
	// DataTimeout bounds sending the content of a message and, apart,
	// the wait for the reply to it.
	DataTimeout time.Duration
}

// Client is the client side of one SMTP connection. It is not safe for
// concurrent use: one transaction at a time, as SMTP itself.
type Client struct {
	// raw is the TCP connection: closing it ends any read or write in
	// progress, which is how a context that ends stops a method.
	raw  net.Conn
	nc   net.Conn // raw, or TLS over it
	br   *bufio.Reader
	bw   *bufio.Writer
	opts Options

	ext     Extensions
	tls     bool
	greeted bool
	// broken: the connection is closed or out of step (an I/O error, a
	// malformed reply, 421, content cut off): nothing more may be sent.
	broken bool
	// open: a MAIL was accepted and its transaction has not ended.
	open  bool
	mails int // MAIL commands accepted on this connection
}

// New returns a Client on the TCP connection raw. It sends and reads
// nothing: call ImplicitTLS when the server speaks TLS from the first byte,
// then Greet.
func New(raw net.Conn, opts Options) *Client {
	return &Client{
		raw:  raw,
		nc:   raw,
		br:   bufio.NewReaderSize(raw, 4096),
		bw:   bufio.NewWriterSize(raw, 4096),
		opts: opts,
	}
}

// Errors of the client's own, for errors.Is.
var (
	// ErrTLS: STARTTLS was refused, the TLS handshake failed, or the
	// server sent data after its go-ahead (see StartTLS).
	ErrTLS = errors.New("smtpclient: TLS failed")
	// ErrBody: the message could not be read. Nothing of it was sent if
	// it could not be opened; otherwise the connection was closed before
	// the content ended, so the server drops what it got.
	ErrBody = errors.New("smtpclient: cannot read the message")
	// ErrClosed: the connection was closed or left out of step by an
	// earlier failure.
	ErrClosed = errors.New("smtpclient: connection closed")
	// ErrMailMax: the server's LIMITS MAILMAX transactions were used on
	// this connection.
	ErrMailMax = errors.New("smtpclient: the server's MAILMAX was reached on this connection")
	// ErrNoSMTPUTF8: a transaction needs SMTPUTF8 and the server does not
	// offer it.
	ErrNoSMTPUTF8 = errors.New("smtpclient: the server does not offer SMTPUTF8")
	// ErrNoREQUIRETLS: a transaction asks for REQUIRETLS and the
	// connection is not TLS or the server does not offer it.
	ErrNoREQUIRETLS = errors.New("smtpclient: the server does not offer REQUIRETLS over TLS")
	// ErrBadLine: an address or parameter with a line break or a
	// character that SMTP cannot carry.
	ErrBadLine = errors.New("smtpclient: line break or control character in a command")
)

// Options are the options the client was made with.
func (c *Client) Options() Options { return c.opts }

// Ext is what the server offered in its last EHLO reply.
func (c *Client) Ext() Extensions { return c.ext }

// TLS reports whether the connection is encrypted.
func (c *Client) TLS() bool { return c.tls }

// ConnectionState is the TLS state of the connection, ok false when it is
// not TLS: what a TLS policy checks after the handshake.
func (c *Client) ConnectionState() (cs tls.ConnectionState, ok bool) {
	if tc, isTLS := c.nc.(*tls.Conn); isTLS {
		return tc.ConnectionState(), true
	}
	return cs, false
}

// Addrs are the local and remote addresses of the connection.
func (c *Client) Addrs() (local, remote net.Addr) { return c.raw.LocalAddr(), c.raw.RemoteAddr() }

// Reusable reports whether the connection may carry another transaction:
// nothing broke it, no transaction is left open, and the server's
// MAILMAX, if any, is not used up.
func (c *Client) Reusable() bool {
	return !c.broken && !c.open && (c.ext.MailMax == 0 || c.mails < c.ext.MailMax)
}

// Close closes the connection at once.
func (c *Client) Close() error {
	c.broken = true
	return c.raw.Close()
}

// abort closes the connection in the middle of something: the server
// drops an unfinished transaction (RFC 5321 §3.8).
func (c *Client) abort() { c.Close() }

// watch closes the connection when ctx ends, until the returned function
// is called; that function reports whether the connection is still open.
func (c *Client) watch(ctx context.Context) func() bool {
	// Only the connection is touched from the other goroutine; the
	// returned function marks the client broken.
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	return func() bool {
		if !stop() {
			c.broken = true
			return false
		}
		return true
	}
}

// ioErr marks the connection broken after err, an I/O error or a
// malformed reply, and puts ctx's error first once ctx has ended: the
// errors of a cancelled method are the effects of closing its connection.
func (c *Client) ioErr(ctx context.Context, err error) error {
	c.broken = true
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// do runs f with the connection watched for ctx, and returns its error,
// an *Error as it is and any other error through ioErr.
func (c *Client) do(ctx context.Context, f func() error) error {
	if c.broken {
		return ErrClosed
	}
	alive := c.watch(ctx)
	err := f()
	if !alive() && err == nil {
		err = net.ErrClosed
	}
	if err == nil {
		return nil
	}
	if re, ok := errors.AsType[*Error](err); ok {
		if re.Code == 421 {
			// RFC 5321 §3.8: the server is closing the connection.
			c.broken = true
		}
		return err
	}
	return c.ioErr(ctx, err)
}

func deadline(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// write queues one command line; flush sends what is queued.
func (c *Client) write(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return ErrBadLine
	}
	c.bw.WriteString(line)
	_, err := c.bw.WriteString("\r\n")
	return err
}

func (c *Client) flush() error {
	c.nc.SetWriteDeadline(deadline(c.opts.CommandTimeout))
	return c.bw.Flush()
}

// read reads the next reply, as the answer to command, waiting at most
// timeout.
func (c *Client) read(command string, timeout time.Duration) (*Error, error) {
	c.nc.SetReadDeadline(deadline(timeout))
	return readReply(c.br, command)
}

// cmd sends line and reads its reply.
func (c *Client) cmd(command, line string) (*Error, error) {
	if err := c.write(line); err != nil {
		return nil, err
	}
	if err := c.flush(); err != nil {
		return nil, err
	}
	return c.read(command, c.opts.CommandTimeout)
}

// ImplicitTLS runs the TLS handshake at once, for a server that speaks
// TLS from the first byte (RFC 8314 §3.3). Its error wraps ErrTLS.
func (c *Client) ImplicitTLS(ctx context.Context, cfg *tls.Config) error {
	return c.do(ctx, func() error { return c.handshake(ctx, cfg) })
}

func (c *Client) handshake(ctx context.Context, cfg *tls.Config) error {
	tc := tls.Client(c.nc, cfg)
	tc.SetDeadline(deadline(c.opts.CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.broken = true
		return fmt.Errorf("%w: %w", ErrTLS, err)
	}
	tc.SetDeadline(time.Time{})
	c.nc, c.tls = tc, true
	c.br.Reset(tc)
	c.bw.Reset(tc)
	return nil
}

// Greet reads the server's greeting. Anything but 220 is an *Error
// answering CmdConnect.
func (c *Client) Greet(ctx context.Context) error {
	return c.do(ctx, func() error {
		re, err := c.read(CmdConnect, c.opts.CommandTimeout)
		if err != nil {
			return err
		}
		if re.Code != 220 {
			return re
		}
		c.greeted = true
		return nil
	})
}

// Hello sends EHLO and records the extensions offered (Ext). A server that
// refuses EHLO with a 5xx gets HELO instead, and offers nothing (RFC 5321
// §4.1.4 lets a client fall back so). A refusal is an *Error answering
// CmdEHLO.
func (c *Client) Hello(ctx context.Context) error {
	return c.do(ctx, func() error {
		re, err := c.cmd(CmdEHLO, "EHLO "+c.opts.Hostname)
		if err != nil {
			return err
		}
		if re.OK() {
			c.ext = ParseEHLO(re.Text)
			return nil
		}
		if re.Code/100 != 5 {
			return re
		}
		re, err = c.cmd(CmdEHLO, "HELO "+c.opts.Hostname)
		if err != nil {
			return err
		}
		if !re.OK() {
			return re
		}
		c.ext = Extensions{}
		return nil
	})
}

// StartTLS upgrades the connection (RFC 3207); call Hello again after it,
// as §4.2 requires: the extensions offered before TLS are forgotten. A
// refusal, a failed handshake, and data that arrived after the server's
// 220 go-ahead all wrap ErrTLS: that data came in plain text, where an
// attacker may have injected it (the STARTTLS command injection of
// CVE-2011-0411), so the client refuses to go on. Other errors are I/O
// errors.
func (c *Client) StartTLS(ctx context.Context, cfg *tls.Config) error {
	return c.do(ctx, func() error {
		re, err := c.cmd(CmdSTARTTLS, "STARTTLS")
		if err != nil {
			return err
		}
		if re.Code != 220 {
			return fmt.Errorf("%w: %w", ErrTLS, re)
		}
		if c.br.Buffered() > 0 {
			c.broken = true
			return fmt.Errorf("%w: unexpected data after the STARTTLS reply", ErrTLS)
		}
		c.ext = Extensions{}
		return c.handshake(ctx, cfg)
	})
}

// Auth authenticates with mech, PLAIN (RFC 4616) or LOGIN, over whatever
// the connection is: the caller decides whether it may send a password
// without TLS. A refusal is an *Error answering CmdAUTH.
func (c *Client) Auth(ctx context.Context, mech, username, password string) error {
	b64 := base64.StdEncoding.EncodeToString
	return c.do(ctx, func() error {
		var steps []string
		switch strings.ToUpper(mech) {
		case "PLAIN":
			steps = []string{"AUTH PLAIN " + b64([]byte("\x00"+username+"\x00"+password))}
		case "LOGIN":
			// draft-murchison-sasl-login: two prompts, "Username:" and
			// "Password:", answered in base64.
			steps = []string{"AUTH LOGIN", b64([]byte(username)), b64([]byte(password))}
		default:
			return fmt.Errorf("smtpclient: unsupported AUTH mechanism %q", mech)
		}
		for i, s := range steps {
			re, err := c.cmd(CmdAUTH, s)
			if err != nil {
				return err
			}
			last := i == len(steps)-1
			switch {
			case re.Code == 235:
				return nil
			case re.Code == 334 && !last:
			default:
				if re.Code == 334 {
					// The server wants more than the mechanism has:
					// cancel the exchange (RFC 4954 §4).
					if re2, err := c.cmd(CmdAUTH, "*"); err != nil {
						return err
					} else {
						return re2
					}
				}
				return re
			}
		}
		return nil
	})
}

// Noop sends NOOP and waits at most timeout (and CommandTimeout) for its
// 250: a check that a parked connection is alive. Any failure leaves the
// connection unusable.
func (c *Client) Noop(ctx context.Context, timeout time.Duration) error {
	if c.opts.CommandTimeout > 0 && c.opts.CommandTimeout < timeout {
		timeout = c.opts.CommandTimeout
	}
	err := c.do(ctx, func() error {
		if err := c.write("NOOP"); err != nil {
			return err
		}
		if err := c.flush(); err != nil {
			return err
		}
		re, err := c.read(CmdNOOP, timeout)
		if err != nil {
			return err
		}
		if !re.OK() {
			return re
		}
		return nil
	})
	if err != nil {
		c.broken = true
	}
	return err
}

// Quit sends QUIT, when the connection is in a state to, waits at most
// timeout for the reply, and closes the connection whatever happens.
func (c *Client) Quit(timeout time.Duration) {
	if !c.broken {
		c.nc.SetDeadline(deadline(timeout))
		if c.write("QUIT") == nil && c.bw.Flush() == nil {
			readReply(c.br, "QUIT")
		}
	}
	c.Close()
}

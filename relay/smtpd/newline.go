package smtpd

import (
	"errors"
	"io"

	"postern/relay/status"
)

// SMTP smuggling (CVE-2023-51764, -51765, -51766) makes two servers read
// one DATA differently: the sender thinks "<LF>.<LF>" (or "<CR>.<CR>", ...)
// is message text, a receiver thinks it ends the message, and what follows
// becomes a second, forged transaction. postern closes it from both sides:
//
//   - what ends DATA: go-smtp's reader (data.go, v0.25.1) ends the message
//     only at "<CR><LF>.<CR><LF>" (or "." CRLF at its very start, which is
//     the same line boundary, RFC 5321 §4.1.1.4). A bare LF never starts a
//     line for it, and a CR starts one only when an LF follows. It also
//     removes the first dot of every line that starts with one
//     (transparency, §4.5.2), and with it a CR that follows the dot when
//     that CR is not followed by LF: "<CR><LF>.<CR>X" reaches the session as
//     "<CR><LF>X". That is the one bare CR the session cannot see; it never
//     reaches a message either, so it cannot be smuggled on.
//   - what postern passes on: every bare CR or LF the session sees is
//     refused (bareNewlineGuard) or turned into CRLF (message.CRLFReader), so
//     nothing postern stores, and so nothing it sends, has one; go-smtp's
//     client then dot-stuffs every line, so no receiver can find an end of
//     data inside it.

// errBareNewline is a bare CR or LF in DATA from a client that may not
// send one: Postfix's smtpd_forbid_bare_newline reply (RFC 5321 §2.3.8:
// CR and LF only as CRLF; RFC 3463 §3.6 X.5.2 syntax error). The session
// closes the connection after it.
var errBareNewline = status.New(521, 5, 2, "Error: bare <CR> or <LF> received (only <CR><LF> ends a line)")

var errBareFound = errors.New("bare CR or LF in DATA")

// bareNewlineGuard passes data through until the first CR not followed by
// LF or LF not preceded by CR, and fails there with errBareFound.
type bareNewlineGuard struct {
	r   io.Reader
	cr  bool // the last byte passed was a CR
	err error
}

func (g *bareNewlineGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	for i := 0; i < n; i++ {
		c := p[i]
		if g.cr != (c == '\n') {
			g.err = errBareFound
			return i, g.err
		}
		g.cr = c == '\r'
	}
	if err == io.EOF && g.cr {
		g.err = errBareFound
		return n, g.err
	}
	return n, err
}

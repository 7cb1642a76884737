package outbound

import (
	"bytes"
	"io"
)

// DATA content, fast. go-smtp's client hands out net/textproto's
// DotWriter, which encodes one byte at a time through bufio's WriteByte: on
// 100 KiB messages it was a fifth of postern's CPU. stuffData does the same
// encoding a line at a time, with bytes.IndexByte, into large writes on the
// connection itself.
//
// The DotWriter still ends the content, so that go-smtp's DataCommand keeps
// its state and reads the reply as usual: stuffData holds back a final
// CRLF, and the caller writes it through the DotWriter, whose Close then
// adds just ".\r\n" (textproto documents that Close adds the final line;
// content ending at the start of a line needs no other CRLF). Content that
// does not end with a line break is ended by Close with "\r\n.\r\n", as the
// DotWriter alone would.

// stuffBufSize is the size of the writes stuffData makes.
const stuffBufSize = 32 << 10

// stuffData copies src to dst encoded as SMTP DATA content (RFC 5321
// §4.5.2): a line starting with "." gets another "." before it, and a line
// feed without a carriage return becomes CRLF, as textproto.DotWriter does.
// It does not write the terminating ".\r\n", and it holds back the end of
// the content for the DotWriter: tail is "\r\n" when the content ended
// with a line break, "\r" when it ended with a lone CR, else empty. On a
// write
// error the connection has an incomplete message on it and must be
// dropped.
func stuffData(dst io.Writer, src io.Reader) (tail []byte, err error) {
	in := make([]byte, stuffBufSize)
	out := make([]byte, 0, stuffBufSize+stuffBufSize/2)
	// atLineStart: the next input byte starts a line; cr: the last input
	// byte was a CR (its LF may come in the next read).
	atLineStart, cr := true, false
	flush := func(keep int) error {
		// Writes all of out except its last keep bytes, which move to
		// the front.
		if n := len(out) - keep; n > 0 {
			if _, err := dst.Write(out[:n]); err != nil {
				return err
			}
			out = append(out[:0], out[n:]...)
		}
		return nil
	}
	for {
		n, rerr := src.Read(in)
		p := in[:n]
		for len(p) > 0 {
			if atLineStart && p[0] == '.' {
				out = append(out, '.')
			}
			atLineStart = false
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				out = append(out, p...)
				cr = p[len(p)-1] == '\r'
				break
			}
			// A line break: the bytes before it, then CRLF whether or
			// not the line had its CR.
			line := p[:i]
			switch {
			case len(line) > 0 && line[len(line)-1] == '\r':
				out = append(out, p[:i+1]...)
			case len(line) == 0 && cr:
				out = append(out, '\n') // the CR came in the last read
			default:
				out = append(out, line...)
				out = append(out, '\r', '\n')
			}
			cr, atLineStart = false, true
			p = p[i+1:]
		}
		if len(out) >= stuffBufSize {
			// Keep two bytes back: they may be the final CRLF.
			if err := flush(2); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	keep := 0
	switch {
	case atLineStart && bytes.HasSuffix(out, []byte("\r\n")):
		keep = 2
	case cr:
		// A final CR without its LF: through the DotWriter it gets
		// the LF, as it would have.
		keep = 1
	}
	if err := flush(keep); err != nil {
		return nil, err
	}
	return out, nil
}

package relay

import (
	"bufio"
	"io"
)

// crlfReader turns every bare LF and bare CR into CRLF and leaves CRLF
// alone. Mail on the wire must use CRLF line ends (RFC 5321 §2.3.8), and a
// message postern relays must never contain a bare CR or LF: some receivers
// treat those as line ends, which is what SMTP smuggling exploits.
type crlfReader struct {
	r       *bufio.Reader
	pending []byte // output produced but not yet returned
	cr      bool   // the last byte read was a CR
	buf     [2]byte
}

func newCRLFReader(r io.Reader) *crlfReader {
	return &crlfReader{r: bufio.NewReaderSize(r, 32<<10)}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.pending) > 0 {
			m := copy(p[n:], c.pending)
			c.pending = c.pending[m:]
			n += m
			continue
		}
		b, err := c.r.ReadByte()
		if err != nil {
			if c.cr { // a bare CR at the very end: its CR is already out
				c.cr = false
				p[n] = '\n'
				n++
				// Return err with this LF: bufio.Reader reports an
				// error only once, so reading on would lose it.
			}
			return n, err
		}
		switch {
		case b == '\n' && c.cr:
			c.cr = false
			p[n] = '\n'
			n++
		case b == '\n':
			c.buf = [2]byte{'\r', '\n'}
			c.pending = c.buf[1:2]
			p[n] = '\r'
			n++
		case c.cr: // bare CR followed by something else
			c.cr = false
			if err := c.r.UnreadByte(); err != nil {
				return n, err
			}
			p[n] = '\n'
			n++
		case b == '\r':
			c.cr = true
			p[n] = '\r'
			n++
		default:
			p[n] = b
			n++
		}
	}
	return n, nil
}

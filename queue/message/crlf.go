package message

import (
	"bytes"
	"io"
	"sync"
)

// CRLFReader turns every bare LF and bare CR into CRLF and leaves CRLF
// alone. It is postern's one line-end fixer: the inbound server reads
// messages through it (from clients allowed bare line ends), delivery
// sends every stored message through it before dot-stuffing, and the DSN
// composer quotes originals through it. Mail on the wire must use CRLF line ends (RFC 5321 §2.3.8), and a
// message postern relays must never contain a bare CR or LF: some receivers
// treat those as line ends, which is what SMTP smuggling exploits.
//
// It works on chunks, not bytes: the trusted relay listener, where legacy
// programs send bare LF, is also where the bulk of the mail comes in, so
// this is on the hot path of every message from it.
type CRLFReader struct {
	r   io.Reader
	in  []byte // raw chunk read from r
	out []byte // converted bytes not returned yet (a view into obuf)
	buf []byte // backing store of out: at most twice a chunk
	cr  bool   // the last raw byte was a CR
	err error  // from r, returned once out is drained
}

const crlfChunk = 16 << 10

// crlfReaders keeps CRLFReaders (48 KiB of buffers each) for reuse, one
// per message being received or sent.
var crlfReaders = sync.Pool{New: func() any {
	return &CRLFReader{in: make([]byte, crlfChunk), buf: make([]byte, 0, 2*crlfChunk+1)}
}}

// NewCRLFReader returns a CRLFReader over r. Release gives its buffers
// back for the next one; a reader never released is left to the garbage
// collector.
func NewCRLFReader(r io.Reader) *CRLFReader {
	c := crlfReaders.Get().(*CRLFReader)
	c.r = r
	return c
}

// Release returns c's buffers to the pool. c must not be used after.
func (c *CRLFReader) Release() {
	*c = CRLFReader{in: c.in, buf: c.buf[:0]}
	crlfReaders.Put(c)
}

func (c *CRLFReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.in)
		c.out = c.convert(c.in[:n])
		if err != nil {
			if err == io.EOF && c.cr {
				// A bare CR at the very end: its CR is already out.
				c.out = append(c.out, '\n')
				c.cr = false
			}
			c.err = err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// convert rewrites one chunk into c.buf. A CR at the end of a chunk is
// settled by the first byte of the next one. Lines already ending in CRLF,
// nearly all of them, are copied whole: two IndexByte scans a line instead
// of a decision a byte.
func (c *CRLFReader) convert(chunk []byte) []byte {
	out := c.buf[:0]
	for len(chunk) > 0 {
		if c.cr {
			c.cr = false
			out = append(out, '\n') // the CR's LF, or the one a bare CR lacks
			if chunk[0] == '\n' {
				chunk = chunk[1:]
				continue
			}
		}
		lf := bytes.IndexByte(chunk, '\n')
		line := chunk
		if lf >= 0 {
			line = chunk[:lf]
		}
		if cr := bytes.IndexByte(line, '\r'); cr >= 0 && cr != lf-1 {
			// A CR that does not end this line (or that ends the
			// chunk): settled on the next round.
			out = append(out, chunk[:cr+1]...)
			c.cr = true
			chunk = chunk[cr+1:]
			continue
		}
		switch {
		case lf < 0:
			out = append(out, chunk...)
			return out
		case lf > 0 && chunk[lf-1] == '\r':
			out = append(out, chunk[:lf+1]...)
		default: // a bare LF
			out = append(out, line...)
			out = append(out, '\r', '\n')
		}
		chunk = chunk[lf+1:]
	}
	return out
}

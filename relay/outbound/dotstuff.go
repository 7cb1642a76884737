package outbound

import (
	"bytes"
	"io"

	"postern/queue/message"
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

// sendData copies a stored message to dst as SMTP DATA content: its line
// ends made CRLF by postern's one line-end fixer (message.CRLFReader: the
// queue holds CRLF-only messages, and this keeps a damaged one from
// putting a bare CR or LF on the wire, where a receiver could read a
// different end of data), then dot-stuffed by stuffData. See stuffData for
// tail and errors.
func sendData(dst io.Writer, body io.Reader) (tail []byte, err error) {
	cr := message.NewCRLFReader(body)
	defer cr.Release()
	return stuffData(dst, cr)
}

// stuffData copies src, whose line ends are all CRLF, to dst encoded as
// SMTP DATA content (RFC 5321 §4.5.2): a line starting with "." gets
// another "." before it, as textproto.DotWriter does. It does not write
// the terminating ".\r\n", and it holds back the end of the content for
// the DotWriter: tail is "\r\n" when the content ended with a line break,
// else empty. On a write error the connection has an incomplete message on
// it and must be dropped.
func stuffData(dst io.Writer, src io.Reader) (tail []byte, err error) {
	in := make([]byte, stuffBufSize)
	out := make([]byte, 0, stuffBufSize+stuffBufSize/2)
	// atLineStart: the next input byte starts a line.
	atLineStart := true
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
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				out = append(out, p...)
				atLineStart = false
				break
			}
			out = append(out, p[:i+1]...)
			atLineStart = true
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
	if atLineStart && bytes.HasSuffix(out, []byte("\r\n")) {
		keep = 2
	}
	if err := flush(keep); err != nil {
		return nil, err
	}
	return out, nil
}

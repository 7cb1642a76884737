package smtpclient

import (
	"bytes"
	"io"
)

// DATA content, fast. net/textproto's DotWriter (go-smtp's, before this
// package) encodes one byte at a time through bufio's WriteByte: on 100 KiB
// messages it was a fifth of postern's CPU. stuffData does the same
// encoding a line at a time, with bytes.IndexByte, into large writes.

// stuffBufSize is the size of the writes stuffData makes.
const stuffBufSize = 32 << 10

// writeData writes src, whose line ends are all CRLF, to dst as SMTP DATA
// content with its terminator: dot-stuffed by stuffData, then the final
// line break and ".\r\n" (the line break is added to content that lacks
// one, as textproto.DotWriter does). On an error the connection has an
// incomplete message on it and must be closed, never ended with the dot.
func writeData(dst io.Writer, src io.Reader) error {
	if _, err := stuffData(dst, src); err != nil {
		return err
	}
	// stuffData held back a final CRLF, or the content had none: either
	// way the end is CRLF, then the dot.
	_, err := io.WriteString(dst, "\r\n.\r\n")
	return err
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

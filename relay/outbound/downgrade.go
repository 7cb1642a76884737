package outbound

import (
	"bufio"
	"bytes"
	"io"

	"postern/queue"
	"postern/queue/message"
	"postern/relay/status"
)

// 7-bit downgrade (RFC 6152 §3). A server that does not offer 8BITMIME
// must not get 8-bit content, so before the transaction the message is
// read once through message.To7Bit, to learn whether it needs converting,
// whether it can be, and its converted size (for SIZE); then the
// transaction reads it converted. That costs a second read of the message,
// only for such servers, and means a refusal comes before MAIL: the
// connection stays clean and the next MX (which may offer 8BITMIME) is
// tried.
//
// A message with a DKIM signature is not converted: that would break the
// signature. The submission pipeline converts a message it signs before
// signing it (relay/submit), so only a message signed elsewhere (or one
// whose conversion was impossible there) meets this refusal.

// Local statuses of the downgrade: RFC 3463 X.6.3 "Conversion required
// but not supported". Permanent: the message will not change, though
// another MX of the domain may still take it as it is.
var (
	errUnconvertible = status.New(554, 6, 3,
		"the server does not offer 8BITMIME and the message has 8-bit content that cannot be converted (8-bit header, or a part that may not be encoded)")
	errSignedEightBit = status.New(554, 6, 3,
		"the server does not offer 8BITMIME and the message is DKIM-signed with 8-bit content: converting it would break the signature")
)

// downgrade returns the body to send d with to a server without 8BITMIME:
// d.Body itself when it is 7-bit, or its conversion. A failure to read is
// left for the transaction to report.
func (c *client) downgrade(d *queue.Delivery) (queue.Body, error) {
	rc, err := d.Body.Open()
	if err != nil {
		return d.Body, nil
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 32<<10)
	h, err := message.ReadHeader(br, 1<<20)
	if err != nil {
		// A header section that cannot be read (over 1 MiB, say): part
		// of it is consumed, so what follows could not be judged whole;
		// such a message does not go to a server without 8BITMIME.
		return nil, errUnconvertible
	}
	signed := h.Count("DKIM-Signature") > 0
	br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(h.Raw), br), 32<<10)
	var n countWriter
	conv, err := message.To7Bit(&n, br)
	switch {
	case err != nil:
		return d.Body, nil
	case conv.Unconvertible:
		return nil, errUnconvertible
	case !conv.Changed:
		return d.Body, nil
	case signed:
		return nil, errSignedEightBit
	}
	return downgraded{orig: d.Body, size: int64(n)}, nil
}

// downgraded is a message converted to 7 bits as it is read.
type downgraded struct {
	orig queue.Body
	size int64
}

func (b downgraded) Size() int64 { return b.size }

func (b downgraded) Open() (io.ReadCloser, error) {
	rc, err := b.orig.Open()
	if err != nil {
		return nil, err
	}
	r, _ := message.Reader7Bit(rc)
	return closeBoth{r, rc}, nil
}

// closeBoth reads from the conversion and closes it and the original.
type closeBoth struct {
	io.ReadCloser
	orig io.Closer
}

func (c closeBoth) Close() error {
	c.ReadCloser.Close()
	return c.orig.Close()
}

type countWriter int64

func (n *countWriter) Write(p []byte) (int, error) {
	*n += countWriter(len(p))
	return len(p), nil
}

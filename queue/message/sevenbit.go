package message

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
)

// 7-bit downgrade (RFC 6152 §3): a message with 8-bit content must not go
// to a server that does not offer 8BITMIME. To7Bit rewrites the MIME parts
// whose content has 8-bit octets as quoted-printable (text/*) or base64
// (anything else), and leaves every other byte as it was, so that a
// message that needs no conversion comes out identical.
//
// It streams: one leaf part is held in memory only until its first 8-bit
// octet is seen (a part's header must be written, with its new
// Content-Transfer-Encoding, before its content), at most Lookahead
// octets. What it cannot convert it copies as it is and reports as
// Unconvertible:
//   - 8-bit octets in a header section (RFC 6532 headers need SMTPUTF8,
//     not a transfer encoding);
//   - 8-bit content in a part that may not be encoded: a multipart or
//     message/* part's own text (preamble, epilogue, a multipart without a
//     boundary), or any message/* but message/rfc822, whose inner message
//     is converted part by part instead (RFC 2046 §5.2: only 7bit, 8bit
//     and binary are allowed there);
//   - 8-bit content past the first Lookahead octets of a part whose
//     header promised 7bit (a part labelled 8bit or binary is converted
//     once Lookahead octets pass, 8-bit or not);
//   - content that claims to be base64 or quoted-printable and has 8-bit
//     octets anyway.
//
// A message without MIME-Version and Content-Type is one text part; when
// it is converted, the fields that make it MIME are added.

// Lookahead bounds what To7Bit holds of one part while it looks for 8-bit
// octets.
const Lookahead = 1 << 20

// Conversion says what To7Bit did.
type Conversion struct {
	// Changed: some content was converted; the output differs from the
	// input.
	Changed bool
	// Unconvertible: some 8-bit octets are still in the output (see the
	// list above).
	Unconvertible bool
}

// To7Bit copies the message src (CRLF line ends) to dst, converting its
// 8-bit parts. The error is src's or dst's.
func To7Bit(dst io.Writer, src io.Reader) (Conversion, error) {
	c := &conv{r: bufio.NewReaderSize(src, 64<<10), w: bufio.NewWriterSize(dst, 32<<10)}
	if _, _, err := c.entity(true, "text/plain"); err != nil {
		return c.res, err
	}
	return c.res, c.w.Flush()
}

// Reader7Bit returns To7Bit's output as a stream, computed by a goroutine
// as it is read. Close stops the conversion and returns once the goroutine
// has stopped reading src, so the caller may use src again; it waits for
// a read of src in progress. done reports the Conversion once the stream
// has been read to its end (or closed), nil before.
func Reader7Bit(src io.Reader) (r io.ReadCloser, done func() *Conversion) {
	pr, pw := io.Pipe()
	sr := &sevenBitReader{PipeReader: pr, finished: make(chan struct{})}
	go func() {
		defer close(sr.finished)
		conv, err := To7Bit(pw, src)
		sr.conv = conv
		pw.CloseWithError(err)
	}()
	return sr, func() *Conversion {
		select {
		case <-sr.finished:
			return &sr.conv
		default:
			return nil
		}
	}
}

type sevenBitReader struct {
	*io.PipeReader
	finished chan struct{}
	conv     Conversion // set before finished is closed
}

func (r *sevenBitReader) Close() error {
	r.PipeReader.Close()
	<-r.finished
	return nil
}

// conv is one conversion in progress.
type conv struct {
	r   *bufio.Reader
	w   *bufio.Writer
	res Conversion

	bounds []string // the boundaries of the enclosing multiparts, innermost last
	// back is a segment read and put back, with its lineStart.
	back      []byte
	backStart bool
	hasBack   bool
	lineStart bool // the next segment starts a line
	started   bool
}

// next returns the next segment of input: a whole line with its line end,
// or a piece of a long line; start says whether it starts a line. io.EOF
// at the end.
func (c *conv) next() (seg []byte, start bool, err error) {
	if c.hasBack {
		c.hasBack = false
		return c.back, c.backStart, nil
	}
	if !c.started {
		c.started, c.lineStart = true, true
	}
	start = c.lineStart
	seg, err = c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		err = nil
	}
	if len(seg) == 0 && err == nil {
		err = io.EOF
	}
	if len(seg) > 0 {
		err = nil
		c.lineStart = seg[len(seg)-1] == '\n'
		// ReadSlice's buffer is reused by the next read: keep a copy.
		seg = append([]byte(nil), seg...)
	}
	return seg, start, err
}

func (c *conv) unread(seg []byte, start bool) {
	c.back, c.backStart, c.hasBack = seg, start, true
}

// boundary reports whether seg, at the start of a line, is the delimiter
// or the close delimiter of an enclosing multipart (RFC 2046 §5.1.1), and
// which (its index in c.bounds).
func (c *conv) boundary(seg []byte, start bool) (idx int, ok bool) {
	if !start || len(c.bounds) == 0 || !bytes.HasPrefix(seg, []byte("--")) {
		return 0, false
	}
	line := bytes.TrimRight(seg, " \t\r\n")
	for i := len(c.bounds) - 1; i >= 0; i-- {
		b := "--" + c.bounds[i]
		if string(line) == b || string(line) == b+"--" {
			return i, true
		}
	}
	return 0, false
}

// term is how an entity's content ended: at a boundary line (line, the
// line itself; crlf, the line end before it, which belongs to the
// boundary, RFC 2046 §5.1.1), or at the end of the input (line nil).
type term struct {
	line []byte
	crlf []byte
}

// write writes the terminator (the parent calls it).
func (c *conv) writeTerm(t term) {
	c.w.Write(t.crlf)
	c.w.Write(t.line)
}

// body reads content up to a boundary of an enclosing multipart or the
// end, giving it to feed without the line end before the boundary.
func (c *conv) body(feed func([]byte) error) (term, error) {
	var held []byte
	for {
		seg, start, err := c.next()
		if err == io.EOF {
			if len(held) > 0 {
				if err := feed(held); err != nil {
					return term{}, err
				}
			}
			return term{}, nil
		}
		if err != nil {
			return term{}, err
		}
		if _, ok := c.boundary(seg, start); ok {
			return term{line: seg, crlf: held}, nil
		}
		if len(held) > 0 {
			if err := feed(held); err != nil {
				return term{}, err
			}
			held = nil
		}
		content := seg
		if n := len(content); n > 0 && content[n-1] == '\n' {
			cut := n - 1
			if cut > 0 && content[cut-1] == '\r' {
				cut--
			}
			content, held = content[:cut], content[cut:]
		}
		if len(content) > 0 {
			if err := feed(content); err != nil {
				return term{}, err
			}
		}
	}
}

// field is one header field: its raw bytes, folded lines included.
type field struct {
	name string
	raw  []byte
}

// header reads an entity's header section: fields up to the empty line
// (end, which is nil when the section ended at a boundary, at the end of
// the input, or at a line that is no field, which is put back).
func (c *conv) header() (fields []field, end []byte, eightBit bool, err error) {
	for {
		seg, start, err := c.next()
		if err == io.EOF {
			return fields, nil, eightBit, nil
		}
		if err != nil {
			return nil, nil, false, err
		}
		if _, ok := c.boundary(seg, start); ok {
			c.unread(seg, start)
			return fields, nil, eightBit, nil
		}
		if start && (string(seg) == "\r\n" || string(seg) == "\n") {
			return fields, seg, eightBit, nil
		}
		name, isField := FieldName(seg)
		switch {
		case len(fields) > 0 && (!start || seg[0] == ' ' || seg[0] == '\t'):
			// A continuation, or the rest of a long line.
			f := &fields[len(fields)-1]
			f.raw = append(f.raw, seg...)
		case isField:
			fields = append(fields, field{name: name, raw: seg})
		default:
			c.unread(seg, start)
			return fields, nil, eightBit, nil
		}
		eightBit = eightBit || has8Bit(seg)
	}
}

// value is a field's unfolded, trimmed value.
func (f field) value() string {
	_, v, _ := strings.Cut(string(f.raw), ":")
	return strings.TrimSpace(unfold.Replace(v))
}

func has8Bit(p []byte) bool {
	for _, b := range p {
		if b >= 0x80 {
			return true
		}
	}
	return false
}

// entity converts one entity (the message, a part, or the message inside
// a message/rfc822 part): its header, then its content, up to and
// excluding the boundary line that ends it, which it returns. top marks a
// message (MIME only with MIME-Version or Content-Type); defType is the
// default content type (RFC 2046 §5.1.5: message/rfc822 in a digest).
func (c *conv) entity(top bool, defType string) (term, bool, error) {
	fields, end, hdr8, err := c.header()
	if err != nil {
		return term{}, false, err
	}
	isMIME := !top
	typ, cte := defType, "7bit"
	var params map[string]string
	typeOK := true
	for _, f := range fields {
		switch strings.ToLower(f.name) {
		case "mime-version":
			isMIME = true
		case "content-type":
			isMIME = true
			t, p, err := mime.ParseMediaType(f.value())
			if err != nil {
				typeOK = false
			} else {
				typ, params = t, p
			}
		case "content-transfer-encoding":
			cte = strings.ToLower(f.value())
		}
	}
	if !isMIME {
		typ, params, typeOK = "text/plain", nil, true
	}
	writeHeader := func() { c.writeFields(fields, end) }
	if hdr8 {
		c.res.Unconvertible = true
		writeHeader()
		return c.verbatim()
	}
	major, _, _ := strings.Cut(typ, "/")
	switch {
	case major == "multipart" && typeOK && params["boundary"] != "":
		writeHeader()
		return c.multipart(params["boundary"], typ == "multipart/digest")
	case typ == "message/rfc822" && typeOK && (cte == "7bit" || cte == "8bit" || cte == "binary"):
		writeHeader()
		return c.entity(true, "text/plain")
	}
	encodable := typeOK && major != "multipart" && major != "message"
	return c.leaf(fields, end, isMIME, strings.EqualFold(major, "text"), cte, encodable)
}

// verbatim copies content as it is up to the boundary that ends it,
// reporting 8-bit octets as unconvertible.
func (c *conv) verbatim() (term, bool, error) {
	t, err := c.body(func(p []byte) error {
		if has8Bit(p) {
			c.res.Unconvertible = true
		}
		_, err := c.w.Write(p)
		return err
	})
	return t, false, err
}

// multipart copies a multipart's preamble, converts each part, and copies
// the epilogue. It returns the boundary line of an enclosing multipart
// that ended it (or the end of the input).
func (c *conv) multipart(boundary string, digest bool) (term, bool, error) {
	c.bounds = append(c.bounds, boundary)
	depth := len(c.bounds) - 1
	defer func() { c.bounds = c.bounds[:depth] }()
	partType := "text/plain"
	if digest {
		partType = "message/rfc822"
	}
	t, _, err := c.verbatim() // the preamble
	for err == nil && t.line != nil {
		idx, _ := c.boundary(t.line, true)
		if idx != depth {
			return t, false, nil // an enclosing multipart ends this one
		}
		c.writeTerm(t)
		if bytes.HasPrefix(bytes.TrimRight(t.line, " \t\r\n"), []byte("--"+boundary+"--")) {
			// The close delimiter: the epilogue follows, up to an
			// enclosing boundary.
			c.bounds = c.bounds[:depth]
			return c.verbatim()
		}
		t, _, err = c.entity(false, partType)
	}
	return t, false, err
}

// leaf converts the content of a part that is no container, when it has
// 8-bit octets and may be encoded. Its content is held until the first
// 8-bit octet, or Lookahead octets, decide.
func (c *conv) leaf(fields []field, end []byte, isMIME, text bool, cte string, encodable bool) (term, bool, error) {
	declared8 := cte == "8bit" || cte == "binary"
	if cte == "base64" || cte == "quoted-printable" {
		encodable = false // already encoded: 8-bit octets here are damage
	} else if !declared8 && cte != "7bit" {
		encodable = false // an encoding we do not know
	}
	const (
		holding = iota
		converting
		copying
	)
	state := holding
	var held bytes.Buffer
	var enc io.WriteCloser
	writeHeader := func() { c.writeFields(fields, end) }
	convert := func() error {
		state = converting
		c.res.Changed = true
		name := "quoted-printable"
		if !text {
			name = "base64"
		}
		c.writeConvertedHeader(fields, end, isMIME, name)
		if text {
			enc = quotedprintable.NewWriter(c.w)
		} else {
			enc = base64.NewEncoder(base64.StdEncoding, &lineWrapper{w: c.w})
		}
		_, err := enc.Write(held.Bytes())
		held.Reset()
		return err
	}
	lastLF := false // the last content given ended a line
	t, err := c.body(func(p []byte) error {
		lastLF = p[len(p)-1] == '\n'
		switch state {
		case holding:
			held.Write(p)
			eight := has8Bit(p)
			switch {
			case eight && encodable:
				return convert()
			case eight:
				c.res.Unconvertible = true
				fallthrough
			case held.Len() > Lookahead && !(declared8 && encodable):
				state = copying
				writeHeader()
				_, err := c.w.Write(held.Bytes())
				held.Reset()
				return err
			case held.Len() > Lookahead:
				return convert()
			}
			return nil
		case converting:
			_, err := enc.Write(p)
			return err
		default:
			if has8Bit(p) {
				c.res.Unconvertible = true
			}
			_, err := c.w.Write(p)
			return err
		}
	})
	if err != nil {
		return term{}, false, err
	}
	switch state {
	case holding:
		writeHeader()
		c.w.Write(held.Bytes())
	case converting:
		if err := enc.Close(); err != nil {
			return term{}, false, err
		}
		if t.line == nil && !(text && lastLF) {
			// The end of the message: it ends with a line break
			// (quoted-printable has written the content's own).
			c.w.WriteString("\r\n")
		}
	}
	return t, false, nil
}

// writeFields writes a header section as it was read.
func (c *conv) writeFields(fields []field, end []byte) {
	for _, f := range fields {
		c.w.Write(f.raw)
	}
	c.w.Write(end)
}

// writeConvertedHeader writes fields with Content-Transfer-Encoding set to
// cte, and, for a message that was not MIME, the fields that make it so.
func (c *conv) writeConvertedHeader(fields []field, end []byte, isMIME bool, cte string) {
	for _, f := range fields {
		if strings.EqualFold(f.name, "Content-Transfer-Encoding") {
			continue
		}
		c.w.Write(f.raw)
	}
	if !isMIME {
		// RFC 2045 §4 and, for the unknown charset of 8-bit text that
		// was not MIME, RFC 1428 §3.
		c.w.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\n")
	}
	c.w.WriteString("Content-Transfer-Encoding: " + cte + "\r\n")
	if end == nil {
		end = []byte("\r\n")
	}
	c.w.Write(end)
}

// lineWrapper breaks base64 output into lines of 76 characters (RFC 2045
// §6.8).
type lineWrapper struct {
	w   io.Writer
	col int
}

func (l *lineWrapper) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if l.col == 76 {
			if _, err := io.WriteString(l.w, "\r\n"); err != nil {
				return 0, err
			}
			l.col = 0
		}
		k := min(76-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
		l.col += k
		p = p[k:]
	}
	return n, nil
}

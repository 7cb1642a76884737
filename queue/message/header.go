package message

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// MaxFields bounds the fields of one header section: more than any real
// message has, few enough that a hostile one costs little. A field past it
// ends the section as a line that is not a field does.
const MaxFields = 10000

// ErrHeaderTooLarge is ReadHeader's error for a header section longer than
// its limit.
var ErrHeaderTooLarge = errors.New("message: header section too large")

// Ending says how a header section ended.
type Ending int

const (
	// AtEmptyLine: the empty line that separates header and body (RFC
	// 5322 §2.1), the usual case.
	AtEmptyLine Ending = iota
	// AtBody: a line that is neither a field nor a continuation (or the
	// field past MaxFields, or a first line that starts with white
	// space). It is the body's first line: a message without the empty
	// line, as most MTAs read it. The inbound server puts the empty line
	// there, so that every reader after it sees the same header.
	AtBody
	// AtEOF: the message ended inside its header (a message with no
	// body).
	AtEOF
)

// Field is one header field: its name as written and the bytes it spans
// in Header.Raw, folded lines and the final line end included.
type Field struct {
	Name       string
	Start, End int
}

// Header is the header section at the start of a message (RFC 5322 §2.2):
// fields of a name, a colon and a value, each continued on lines that
// start with a space or a tab. It is what ReadHeader and ParseHeader find.
type Header struct {
	// Raw is what was read: the section, then the line that ended it (the
	// empty line, or the first piece of the body's first line), if any.
	Raw []byte
	// End is where the section ends in Raw: Raw[:End] is every field,
	// Raw[End:] the line that ended the section.
	End int
	// Fields are the fields in order; their ranges tile Raw[:End].
	Fields []Field
	// Ending says what ended the section.
	Ending Ending
}

// Value returns the value of f, unfolded (RFC 5322 §2.2.3: the CRLF
// before each continuation is removed) and trimmed.
func (h *Header) Value(f Field) string {
	raw := h.Raw[f.Start:f.End]
	raw = raw[bytes.IndexByte(raw, ':')+1:]
	return strings.TrimSpace(unfold.Replace(string(raw)))
}

// unfold removes the line ends of a folded field.
var unfold = strings.NewReplacer("\r\n", "", "\n", "", "\r", "")

// Count returns how many fields are named name (compared without case).
func (h *Header) Count(name string) int {
	n := 0
	for _, f := range h.Fields {
		if strings.EqualFold(f.Name, name) {
			n++
		}
	}
	return n
}

// ReadHeader reads the header section at the start of br and the line that
// ends it, and leaves the rest of the message, the body, in br. A line
// longer than br's buffer comes in pieces: only its first piece is
// classified, the rest belongs to the same line. Line ends are CRLF, but a
// bare LF is taken as a line end too, so that any input has an answer.
//
// A section longer than max bytes returns ErrHeaderTooLarge, with the
// Header of the whole lines read before the limit (a DSN quotes that
// much).
func ReadHeader(br *bufio.Reader, max int) (*Header, error) {
	var p parser
	for {
		piece, err := br.ReadSlice('\n')
		if len(p.h.Raw)+len(piece) > max {
			p.truncate()
			return &p.h, ErrHeaderTooLarge
		}
		if err != nil && err != bufio.ErrBufferFull && err != io.EOF {
			return nil, err
		}
		// A piece ends its line at a line end or at the message's end.
		if p.add(piece, err == nil || err == io.EOF) {
			return &p.h, nil
		}
		if err == io.EOF {
			p.eof()
			return &p.h, nil
		}
	}
}

// ParseHeader finds the header section at the start of msg, by the rules
// of ReadHeader, without a limit. Raw is msg up to the end of the line
// that ended the section.
func ParseHeader(msg []byte) *Header {
	var p parser
	p.h.Raw = msg[:0]
	for rest := msg; len(rest) > 0; {
		n := bytes.IndexByte(rest, '\n') + 1
		if n == 0 {
			n = len(rest)
		}
		// The line is in msg already: Raw grows over it, no copy.
		if p.add(rest[:n], true) {
			return &p.h
		}
		rest = rest[n:]
	}
	p.eof()
	return &p.h
}

// parser classifies the lines of a header section as they come, a line
// or a piece of a long line at a time.
type parser struct {
	h Header
	// lineStart is the offset in h.Raw of the current line; open says
	// the line has not ended yet (more pieces of it may come); decided
	// says it has been classified (a field's first line waits until its
	// colon has come).
	lineStart     int
	open, decided bool
}

// add appends a piece of a line (a whole line when it ends with a line
// end; ends says no more of this line will come) and reports whether the
// section has ended.
func (p *parser) add(piece []byte, ends bool) bool {
	if len(piece) == 0 {
		return false
	}
	if !p.open {
		p.lineStart, p.decided = len(p.h.Raw), false
	}
	at := len(p.h.Raw)
	p.h.Raw = append(p.h.Raw, piece...)
	p.open = !ends
	if p.decided {
		// The rest of a long line: it belongs where its start did.
		if n := len(p.h.Fields); n > 0 && p.h.Fields[n-1].End == at {
			p.h.Fields[n-1].End = len(p.h.Raw)
		}
		return false
	}
	line := p.h.Raw[p.lineStart:]
	end := func(e Ending) bool {
		p.h.End, p.h.Ending = p.lineStart, e
		return true
	}
	switch {
	case string(line) == "\r\n" || string(line) == "\n":
		return end(AtEmptyLine)
	case line[0] == ' ' || line[0] == '\t':
		if len(p.h.Fields) == 0 {
			// A continuation of nothing: no header at all.
			return end(AtBody)
		}
		p.decided = true
		p.h.Fields[len(p.h.Fields)-1].End = len(p.h.Raw)
		return false
	}
	name, ok := FieldName(line)
	if !ok && !ends && nameSoFar(line) {
		return false // a long name: its colon may come in the next piece
	}
	if !ok || len(p.h.Fields) == MaxFields {
		return end(AtBody)
	}
	p.decided = true
	p.h.Fields = append(p.h.Fields, Field{Name: name, Start: p.lineStart, End: len(p.h.Raw)})
	return false
}

// nameSoFar reports whether line could still become a field line: a name,
// maybe white space, and nothing else yet.
func nameSoFar(line []byte) bool {
	n := 0
	for n < len(line) && line[n] > ' ' && line[n] < 0x7f && line[n] != ':' {
		n++
	}
	for n < len(line) && (line[n] == ' ' || line[n] == '\t') {
		n++
	}
	return n == len(line)
}

// truncate cuts the section at the last whole line read, for a section
// over its limit: the fields before it stay, one cut short loses its last
// continuation line.
func (p *parser) truncate() {
	t := len(p.h.Raw)
	if p.open {
		t = p.lineStart
	}
	p.h.Raw = p.h.Raw[:t]
	for len(p.h.Fields) > 0 && p.h.Fields[len(p.h.Fields)-1].Start >= t {
		p.h.Fields = p.h.Fields[:len(p.h.Fields)-1]
	}
	if n := len(p.h.Fields); n > 0 && p.h.Fields[n-1].End > t {
		p.h.Fields[n-1].End = t
	}
	p.h.End, p.h.Ending = t, AtBody
}

// eof ends a section that the message's end cut short. A last line still
// waiting for its colon is not a field.
func (p *parser) eof() {
	if p.open && !p.decided {
		p.h.End, p.h.Ending = p.lineStart, AtBody
		return
	}
	p.h.End, p.h.Ending = len(p.h.Raw), AtEOF
}

// FieldName returns the name of a field line: printable ASCII but the
// colon (RFC 5322 §3.6.8), then optional white space (the obsolete syntax
// of §4.5), then the colon.
func FieldName(line []byte) (string, bool) {
	n := 0
	for n < len(line) && line[n] > ' ' && line[n] < 0x7f && line[n] != ':' {
		n++
	}
	if n == 0 {
		return "", false
	}
	k := n
	for k < len(line) && (line[k] == ' ' || line[k] == '\t') {
		k++
	}
	if k >= len(line) || line[k] != ':' {
		return "", false
	}
	return string(line[:n]), true
}

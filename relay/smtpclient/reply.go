package smtpclient

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	"postern/queue/reply"
)

// The commands an Error can answer.
const (
	CmdConnect  = "CONNECT" // the greeting after the TCP connection opens
	CmdEHLO     = "EHLO"    // EHLO, or HELO when the server knows no EHLO
	CmdSTARTTLS = "STARTTLS"
	CmdAUTH     = "AUTH" // AUTH and its SASL exchange (RFC 4954)
	CmdMAIL     = "MAIL FROM"
	CmdRCPT     = "RCPT TO"
	CmdDATA     = "DATA"        // the 354 go-ahead
	CmdEOD      = "end of DATA" // the reply after the message content (final dot, or BDAT LAST)
	CmdNOOP     = "NOOP"
)

// Error is a reply from a remote SMTP server, kept in the remote's words
// because logs and bounces must quote them. As an error it is a reply that
// was not the expected one, usually 4xx or 5xx; Send also hands out the
// 250 that took a message in this form, as the reply of the command it
// answered. The reply is typed (reply.Reply): delivery results carry it as
// it is into the queue.
type Error struct {
	// Command is the command the reply answered, one of the Cmd constants.
	Command string
	// Reply is the reply: code, enhanced code (zero when the reply had
	// none or its class contradicted the code) and text.
	reply.Reply
}

func (e *Error) Error() string { return e.Reply.String() }

// Permanent reports whether the reply is a permanent failure. A 5xx is,
// except 552 to RCPT: RFC 5321 §4.5.3.1.10 tells clients to treat it as
// the temporary 452, because servers long used it for "too many
// recipients" and "mailbox full".
func (e *Error) Permanent() bool {
	if e.Command == CmdRCPT && e.Code == 552 {
		return false
	}
	return e.Code/100 == 5
}

// Temporary reports whether the reply is anything but a permanent failure:
// a 4xx, or an unexpected 1xx–3xx that leaves the transaction undone.
func (e *Error) Temporary() bool { return !e.Permanent() }

// OK reports whether the reply is a positive completion (2xx).
func (e *Error) OK() bool { return e.Code/100 == 2 }

// ErrBadReply is the error of a reply that is not SMTP.
var ErrBadReply = errors.New("malformed SMTP reply")

// ParseReply parses a reply as received ("550-5.7.1 a\r\n550 5.7.1 b"; CRLF
// or LF line ends, the last line end optional) into an Error answering
// command. Every line must carry the same code, lines before the last must
// use "-", the last " " or nothing. The enhanced code of the first line is
// taken when its class digit matches the reply code, and removed from the
// lines that repeat it (RFC 2034 §4).
func ParseReply(command, wire string) (*Error, error) {
	wire = strings.TrimSuffix(wire, "\n")
	raw := strings.Split(wire, "\n")
	e := &Error{Command: command}
	var lines []string
	for i, line := range raw {
		line = strings.TrimSuffix(line, "\r")
		if len(line) < 3 {
			return nil, fmt.Errorf("%w: short line %q", ErrBadReply, line)
		}
		code, err := parseCode(line[:3])
		if err != nil {
			return nil, err
		}
		if i == 0 {
			e.Code = code
		} else if code != e.Code {
			return nil, fmt.Errorf("%w: code %d after %d", ErrBadReply, code, e.Code)
		}
		last := i == len(raw)-1
		text := line[3:]
		switch {
		case text == "" && last:
		case text != "" && text[0] == '-' && !last:
			text = text[1:]
		case text != "" && text[0] == ' ' && last:
			text = text[1:]
		default:
			return nil, fmt.Errorf("%w: bad separator in %q", ErrBadReply, line)
		}
		lines = append(lines, text)
	}
	// The enhanced code, if any, is the first word of the first line.
	first, _, _ := strings.Cut(lines[0], " ")
	if enh, err := reply.ParseEnhanced(first); err == nil && enh.Class == e.Code/100 {
		e.Enhanced = enh
		for i, l := range lines {
			if l == first {
				lines[i] = ""
			} else if rest, ok := strings.CutPrefix(l, first+" "); ok {
				lines[i] = rest
			}
		}
	}
	e.Text = strings.Join(lines, "\n")
	return e, nil
}

// parseCode accepts a reply code of RFC 5321 §4.2: three digits, the first
// 2 to 5 (1yz exists in the grammar but SMTP never uses it), the second 0
// to 5.
func parseCode(s string) (int, error) {
	if len(s) != 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || s[2] < '0' || s[2] > '9' {
		return 0, fmt.Errorf("%w: bad code %q", ErrBadReply, s)
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), nil
}

// FromText builds an Error from a code and a reply's text lines (joined by
// "\n"), for replies that came some other way than the wire (tests, other
// SMTP libraries). A code outside RFC 5321's range keeps its words anyway.
func FromText(command string, code int, text string) *Error {
	lines := strings.Split(text, "\n")
	var b strings.Builder
	for i, l := range lines {
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		fmt.Fprintf(&b, "%03d%s%s\r\n", code, sep, l)
	}
	if e, err := ParseReply(command, b.String()); err == nil {
		return e
	}
	return &Error{Command: command, Reply: reply.Reply{Code: code, Text: text}}
}

// Limits of what readReply takes from a server: RFC 5321 §4.5.3.1.5 allows
// 512 octets a reply line; a longer one, or a reply of more lines than any
// EHLO list has, is a broken or hostile server, not a reply.
const (
	maxReplyLine  = 2048
	maxReplyLines = 200
)

// readReply reads one reply from br (every line up to the one whose code
// is followed by a space or nothing) and parses it. An error that is not
// an *Error is an I/O error or ErrBadReply: the connection is then out of
// step and must be closed.
func readReply(br *bufio.Reader, command string) (*Error, error) {
	var b strings.Builder
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return nil, fmt.Errorf("%w: more than %d lines", ErrBadReply, maxReplyLines)
		}
		line, err := readLine(br)
		if err != nil {
			return nil, err
		}
		b.WriteString(line)
		b.WriteString("\n")
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	return ParseReply(command, b.String())
}

// readLine reads one line, without its line end (LF, CRLF, or CRs and
// LF), of at most maxReplyLine octets.
func readLine(br *bufio.Reader) (string, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxReplyLine {
			return "", fmt.Errorf("%w: line longer than %d octets", ErrBadReply, maxReplyLine)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		// Every CR before the LF goes with the line end: kept in the
		// text, one would be read back as part of the line end.
		return strings.TrimRight(strings.TrimSuffix(string(line), "\n"), "\r"), nil
	}
}

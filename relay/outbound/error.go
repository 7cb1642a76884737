package outbound

import (
	"errors"
	"fmt"
	"net/textproto"
	"strings"

	"github.com/emersion/go-smtp"

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
	CmdEOD      = "end of DATA" // the reply after the message content
)

// Error is a reply from a remote SMTP server, kept in the remote's words
// because logs and bounces must quote them. As an error it is a reply that
// was not the expected one, usually 4xx or 5xx. The reply is typed
// (reply.Reply): delivery results carry it as it is into the queue.
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

var errBadReply = errors.New("malformed SMTP reply")

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
			return nil, fmt.Errorf("%w: short line %q", errBadReply, line)
		}
		code, err := parseCode(line[:3])
		if err != nil {
			return nil, err
		}
		if i == 0 {
			e.Code = code
		} else if code != e.Code {
			return nil, fmt.Errorf("%w: code %d after %d", errBadReply, code, e.Code)
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
			return nil, fmt.Errorf("%w: bad separator in %q", errBadReply, line)
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
		return 0, fmt.Errorf("%w: bad code %q", errBadReply, s)
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), nil
}

// remoteError turns what go-smtp or net/textproto returned for command into
// an *Error when it is a reply, and returns nil otherwise (an I/O error).
// go-smtp has already split off the enhanced code; the reply is put back
// together and parsed again, so that every reply goes through ParseReply.
func remoteError(command string, err error) *Error {
	var se *smtp.SMTPError
	var te *textproto.Error
	var code int
	var text string
	switch {
	case errors.As(err, &se):
		code, text = se.Code, se.Message
		ec := se.EnhancedCode
		if ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
			prefix := fmt.Sprintf("%d.%d.%d ", ec[0], ec[1], ec[2])
			text = prefix + strings.ReplaceAll(text, "\n", "\n"+prefix)
		}
	case errors.As(err, &te):
		code, text = te.Code, te.Msg
	default:
		return nil
	}
	return fromText(command, code, text)
}

// fromText builds an Error from a code and the reply's text lines (joined
// by "\n", as net/textproto returns them).
func fromText(command string, code int, text string) *Error {
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
	// A code outside RFC 5321's range: keep the words anyway.
	return &Error{Command: command, Reply: reply.Reply{Code: code, Text: text}}
}

package smtpd

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"

	"postern/auth"
	"postern/relay/status"
)

// headerField is one field of a message's header section: its name as
// written, and the bytes it spans in the message (folded lines and the
// final line end included).
type headerField struct {
	name       string
	start, end int
}

// maxHeaderFields bounds the fields splitHeader returns: more than any real
// message has, few enough that a hostile one costs little. The fields after
// it count as body (they are kept, not examined).
const maxHeaderFields = 10000

// splitHeader finds the header section at the start of msg (RFC 5322 §2.2):
// fields of a name, a colon and a value, each continued on lines that start
// with a space or a tab. The section ends at the empty line before the body,
// or, in a message without one, at the first line that is not a field (as
// most MTAs read it); end is where the section stops, the empty line not
// included. Line ends are CRLF by the time a message gets here, but a bare
// LF is treated as a line end too, so that the function is total.
func splitHeader(msg []byte) (fields []headerField, end int) {
	i := 0
	for i < len(msg) && len(fields) < maxHeaderFields {
		j := bytes.IndexByte(msg[i:], '\n')
		next := len(msg)
		if j >= 0 {
			next = i + j + 1
		}
		line := msg[i:next]
		switch {
		case len(bytes.TrimRight(line, "\r\n")) == 0 && bytes.HasSuffix(line, []byte("\n")):
			return fields, i // the empty line: the body follows
		case line[0] == ' ' || line[0] == '\t':
			if len(fields) == 0 {
				return fields, i
			}
			fields[len(fields)-1].end = next
		default:
			name, ok := fieldName(line)
			if !ok {
				return fields, i
			}
			fields = append(fields, headerField{name: name, start: i, end: next})
		}
		i = next
	}
	return fields, i
}

// fieldName returns the name of a field line: printable ASCII but the
// colon (RFC 5322 §3.6.8), then optional white space (the obsolete syntax
// of §4.5), then the colon.
func fieldName(line []byte) (string, bool) {
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

// fieldValue returns the value of f in msg, unfolded (RFC 5322 §2.2.3:
// the CRLF before each continuation is removed) and trimmed.
func fieldValue(msg []byte, f headerField) string {
	raw := msg[f.start:f.end]
	raw = raw[bytes.IndexByte(raw, ':')+1:]
	return strings.TrimSpace(unfold.Replace(string(raw)))
}

// unfold removes the line ends of a folded field.
var unfold = strings.NewReplacer("\r\n", "", "\n", "", "\r", "")

// editedMessage is a message with the header rules applied, as slices of
// the original buffer and a few new bytes: no second copy of the message
// is made, and every byte not removed is kept as it came.
type editedMessage struct {
	parts    [][]byte // the edited message, in order
	received int      // Received: fields
	from     []string // values of From: fields
	sender   []string // values of Sender: fields
}

// editHeader applies the header rules to msg. With fix, Date: and
// Message-ID: are added when missing (RFC 6409 §8.2, §8.3: an MSA may add
// them; receivers and DKIM verifiers expect them) and Bcc: and Resent-Bcc:
// are removed (RFC 5322 §3.6.3: the originating system may remove them, and
// when one copy goes to every recipient it must, or each learns who else got
// it). msgID returns a fresh Message-ID value.
//
// Where splitHeader ends the header section without an empty line (at a
// line that is not a field, or past maxHeaderFields), the empty line is
// put there, fix or not, as Postfix's cleanup does: whatever follows is
// body for postern, and must be for every reader after it too (a DKIM
// signer, the receiver, the recipient's mail program), or a From: or Bcc:
// below such a line would escape the checks above and still be read as a
// header field.
func editHeader(msg []byte, fix bool, now time.Time, msgID func() string) *editedMessage {
	fields, end := splitHeader(msg)
	e := &editedMessage{}
	var hasDate, hasID bool
	var kept [][]byte
	pos := 0
	for _, f := range fields {
		switch strings.ToLower(f.name) {
		case "received":
			e.received++
		case "from":
			e.from = append(e.from, fieldValue(msg, f))
		case "sender":
			e.sender = append(e.sender, fieldValue(msg, f))
		case "date":
			hasDate = true
		case "message-id":
			hasID = true
		case "bcc", "resent-bcc":
			if fix {
				kept = append(kept, msg[pos:f.start])
				pos = f.end
			}
		}
	}
	kept = append(kept, msg[pos:end])
	if rest := msg[end:]; len(rest) > 0 && !bytes.HasPrefix(rest, []byte("\r\n")) && !bytes.HasPrefix(rest, []byte("\n")) {
		kept = append(kept, []byte("\r\n"))
	}
	kept = append(kept, msg[end:])
	if fix {
		var b bytes.Buffer
		if !hasDate {
			b.WriteString("Date: " + now.Format(time.RFC1123Z) + "\r\n")
		}
		if !hasID {
			b.WriteString("Message-ID: " + msgID() + "\r\n")
		}
		e.parts = append(e.parts, b.Bytes())
	}
	e.parts = append(e.parts, kept...)
	return e
}

// Len is the size of the edited message.
func (e *editedMessage) Len() int {
	n := 0
	for _, p := range e.parts {
		n += len(p)
	}
	return n
}

// Reader returns the edited message; each call starts from the beginning.
func (e *editedMessage) Reader() io.Reader {
	rs := make([]io.Reader, 0, len(e.parts))
	for _, p := range e.parts {
		rs = append(rs, bytes.NewReader(p))
	}
	return io.MultiReader(rs...)
}

// headerAddresses parses From: and Sender: with encoded words in any
// charset: only the addresses are checked, and net/mail's default decoder
// refuses display names in charsets it does not know (Outlook's
// windows-1252, koi8-r...), which would refuse the user's own mail. The
// DKIM signer reads From: the same way (dkim/sign.go); the two packages
// share no code, so each keeps its four lines.
var headerAddresses = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// Replies of the header rules.
var (
	// RFC 3463 §3.5 X.4.6 "Routing loop detected"; RFC 5321 §6.3 counts
	// Received fields to find loops.
	errMailLoop = status.New(554, 4, 6, "Too many Received header fields: mail loop")
	// RFC 3463 §3.8 X.7.1: the header From or Sender is not the user's.
	errHeaderFrom = status.New(550, 7, 1, "From or Sender header address not allowed for this user")
)

var (
	errNoFrom        = errors.New("no From: field")
	errManyFrom      = errors.New("more than one From: field")
	errManySender    = errors.New("more than one Sender: field")
	errFromSyntax    = errors.New("From: or Sender: address unparseable")
	errFromForbidden = errors.New("From: or Sender: address not in the user's allow list")
)

// checkHeaderFrom checks that every From: address and the Sender: address
// are ones u may send as, the same rule as for MAIL FROM: otherwise the
// envelope check means little, since recipients see the header. The
// addresses must also pass ParseAddress, so a quoted local part or an
// address literal cannot slip through in the header where it could not in
// the envelope.
func checkHeaderFrom(e *editedMessage, u *auth.User) error {
	switch {
	case len(e.from) == 0:
		return errNoFrom
	case len(e.from) > 1: // RFC 5322 §3.6: exactly one From field
		return errManyFrom
	case len(e.sender) > 1:
		return errManySender
	}
	values := append([]string{e.from[0]}, e.sender...)
	for _, v := range values {
		list, err := headerAddresses.ParseList(v)
		if err != nil || len(list) == 0 {
			return errFromSyntax
		}
		for _, a := range list {
			addr, err := ParseAddress(a.Address)
			if err != nil {
				return errFromSyntax
			}
			if !u.MaySendAs(addr.String()) {
				return errFromForbidden
			}
		}
	}
	return nil
}

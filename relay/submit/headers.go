package submit

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"

	"postern/auth"
	"postern/queue/message"
)

// editedMessage is a message with the header rules applied, as slices of
// the original buffer and a few new bytes: no second copy of the message
// is made, and every byte not removed is kept as it came.
type editedMessage struct {
	parts    [][]byte // the edited message, in order
	received int      // Received: fields
	from     []string // values of From: fields
	sender   []string // values of Sender: fields
	// messageID is the Message-ID field's value, trimmed (the first, if
	// several), or the one added; "" when there is none.
	messageID string
	// tlsOptional: a "TLS-Required: No" field (RFC 8689 §5).
	tlsOptional bool
}

// editHeader applies the header rules to the header section h. With fix, Date: and
// Message-ID: are added when missing (RFC 6409 §8.2, §8.3: an MSA may add
// them; receivers and DKIM verifiers expect them) and Bcc: and Resent-Bcc:
// are removed (RFC 5322 §3.6.3: the originating system may remove them, and
// when one copy goes to every recipient it must, or each learns who else got
// it). msgID returns a fresh Message-ID value.
//
// Where the header section ended without an empty line (at a line that
// is not a field, or past message.MaxFields: message.AtBody), the empty
// line is put there, fix or not, as Postfix's cleanup does: whatever follows is
// body for postern, and must be for every reader after it too (a DKIM
// signer, the receiver, the recipient's mail program), or a From: or Bcc:
// below such a line would escape the checks above and still be read as a
// header field.
func editHeader(h *message.Header, fix bool, now time.Time, msgID func() string) *editedMessage {
	msg, end := h.Raw, h.End
	e := &editedMessage{}
	var hasDate, hasID bool
	var kept [][]byte
	pos := 0
	for _, f := range h.Fields {
		switch strings.ToLower(f.Name) {
		case "received":
			e.received++
		case "from":
			e.from = append(e.from, h.Value(f))
		case "sender":
			e.sender = append(e.sender, h.Value(f))
		case "tls-required":
			// RFC 8689 §5: the field's one defined value is "No",
			// case-insensitive; it stays in the message for the hops
			// after postern.
			e.tlsOptional = strings.EqualFold(strings.TrimSpace(h.Value(f)), "no")
		case "date":
			hasDate = true
		case "message-id":
			if !hasID {
				e.messageID = strings.TrimSpace(h.Value(f))
			}
			hasID = true
		case "bcc", "resent-bcc":
			if fix {
				kept = append(kept, msg[pos:f.Start])
				pos = f.End
			}
		}
	}
	kept = append(kept, msg[pos:end])
	if h.Ending == message.AtBody {
		kept = append(kept, []byte("\r\n"))
	}
	kept = append(kept, msg[end:])
	if fix {
		var b bytes.Buffer
		if !hasDate {
			b.WriteString("Date: " + now.Format(time.RFC1123Z) + "\r\n")
		}
		if !hasID {
			e.messageID = msgID()
			b.WriteString("Message-ID: " + e.messageID + "\r\n")
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

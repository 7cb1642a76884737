package bounces

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"postern/queue/reply"
)

// ErrNotReport: the message is neither a DSN nor an ARF report (an
// auto-reply, say, or spam sent to a return path).
var ErrNotReport = errors.New("bounces: not a delivery status or feedback report")

// Limits on what a report may hold, so that a hostile one costs little.
const (
	maxParts      = 16
	maxRecipients = 1000
	maxPartBytes  = 1 << 20
)

// Report is what a DSN or an ARF report says. Exactly one of DSN and
// Feedback is set.
type Report struct {
	DSN      []RecipientStatus // RFC 3464 §2.3, one per recipient
	Feedback *Feedback         // RFC 5965 §3
}

// RecipientStatus is one per-recipient block of a DSN. Addresses are
// the part after "rfc822;" (the address type), without angle brackets.
type RecipientStatus struct {
	FinalRecipient    string
	OriginalRecipient string
	Action            string // lower case: failed, delayed, delivered, relayed, expanded
	// Reply is the remote's answer: code and text from an "smtp"
	// Diagnostic-Code (no code for another type, such as Postfix's
	// X-Postfix), and the Status field as its enhanced code (RFC 3464
	// §2.3.4 makes Status the authority).
	Reply     reply.Reply
	RemoteMTA string
}

// Feedback is an ARF report (RFC 5965): its type and what it says of the
// original message.
type Feedback struct {
	Type             string   // lower case: abuse, fraud, virus, other, not-spam, auth-failure
	OriginalMailFrom string   // Original-Mail-From
	OriginalRcptTo   []string // Original-Rcpt-To, usually one (often absent: privacy)
	// From the original's header (third part), when it was returned.
	MessageID  string
	ReturnPath string
}

// ParseReport reads a message and returns the report it carries: a
// multipart/report with report-type delivery-status (RFC 3464, or RFC
// 6533's global form) or feedback-report (RFC 5965). ErrNotReport when it
// is neither; other errors when it claims to be one but is malformed.
func ParseReport(r io.Reader) (*Report, error) {
	m, err := message.Read(r)
	if err != nil && m == nil {
		return nil, fmt.Errorf("%w: %v", ErrNotReport, err)
	}
	mt, params, _ := m.Header.ContentType()
	if mt != "multipart/report" {
		return nil, fmt.Errorf("%w: Content-Type %q", ErrNotReport, mt)
	}
	kind := strings.ToLower(params["report-type"])
	if kind != "delivery-status" && kind != "feedback-report" {
		return nil, fmt.Errorf("%w: report-type %q", ErrNotReport, kind)
	}
	mr := m.MultipartReader()
	if mr == nil {
		return nil, fmt.Errorf("bounces: multipart/report without parts")
	}
	rep := &Report{}
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if p == nil {
			return nil, fmt.Errorf("bounces: report part %d: %v", i, err)
		}
		if i >= maxParts {
			return nil, fmt.Errorf("bounces: report with more than %d parts", maxParts)
		}
		pt, _, _ := p.Header.ContentType()
		body, err := io.ReadAll(io.LimitReader(p.Body, maxPartBytes))
		if err != nil {
			return nil, fmt.Errorf("bounces: report part %d: %v", i, err)
		}
		switch {
		case kind == "delivery-status" && (pt == "message/delivery-status" || pt == "message/global-delivery-status"):
			if rep.DSN, err = parseDeliveryStatus(body); err != nil {
				return nil, err
			}
		case kind == "feedback-report" && pt == "message/feedback-report":
			if rep.Feedback, err = parseFeedback(body, rep.Feedback); err != nil {
				return nil, err
			}
		case kind == "feedback-report" && (pt == "message/rfc822" || pt == "text/rfc822-headers"):
			// The original, or its header: where the Message-ID is.
			h, _ := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
			if rep.Feedback == nil {
				rep.Feedback = &Feedback{}
			}
			rep.Feedback.MessageID = strings.TrimSpace(h.Get("Message-Id"))
			rep.Feedback.ReturnPath = trimPath(h.Get("Return-Path"))
		}
	}
	switch {
	case kind == "delivery-status" && len(rep.DSN) == 0:
		return nil, errors.New("bounces: delivery-status report without a recipient")
	case kind == "feedback-report" && (rep.Feedback == nil || rep.Feedback.Type == ""):
		return nil, errors.New("bounces: feedback report without a Feedback-Type")
	}
	return rep, nil
}

// fieldGroups reads body as header-like groups separated by blank lines
// (RFC 3464 §2.1: the per-message fields, then one group per recipient).
func fieldGroups(body []byte) ([]textproto.Header, error) {
	var groups []textproto.Header
	br := bufio.NewReader(bytes.NewReader(body))
	for len(groups) <= maxRecipients {
		// Blank lines between groups, and before the first.
		for {
			b, err := br.Peek(1)
			if err != nil {
				return groups, nil
			}
			if b[0] != '\r' && b[0] != '\n' {
				break
			}
			br.ReadByte()
		}
		h, err := textproto.ReadHeader(br)
		if err != nil && h.Len() == 0 {
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				return groups, nil
			}
			return nil, fmt.Errorf("bounces: delivery-status fields: %v", err)
		}
		groups = append(groups, h)
		if err != nil {
			return groups, nil // the last group, without a blank line after it
		}
	}
	return nil, fmt.Errorf("bounces: more than %d recipients in one report", maxRecipients)
}

func parseDeliveryStatus(body []byte) ([]RecipientStatus, error) {
	groups, err := fieldGroups(body)
	if err != nil {
		return nil, err
	}
	var out []RecipientStatus
	for _, h := range groups {
		if !h.Has("Final-Recipient") && !h.Has("Action") {
			continue // the per-message group (Reporting-MTA, Arrival-Date)
		}
		rs := RecipientStatus{
			FinalRecipient:    typedAddress(h.Get("Final-Recipient")),
			OriginalRecipient: typedAddress(h.Get("Original-Recipient")),
			Action:            strings.ToLower(strings.TrimSpace(stripComment(h.Get("Action")))),
			RemoteMTA:         typedAddress(h.Get("Remote-MTA")),
		}
		rs.Reply = diagnostic(h.Get("Diagnostic-Code"), strings.TrimSpace(stripComment(h.Get("Status"))))
		out = append(out, rs)
	}
	return out, nil
}

func parseFeedback(body []byte, f *Feedback) (*Feedback, error) {
	groups, err := fieldGroups(body)
	if err != nil {
		return nil, err
	}
	if f == nil {
		f = &Feedback{}
	}
	for _, h := range groups {
		if t := h.Get("Feedback-Type"); t != "" {
			f.Type = strings.ToLower(strings.TrimSpace(t))
		}
		if v := h.Get("Original-Mail-From"); v != "" {
			f.OriginalMailFrom = trimPath(v)
		}
		for _, v := range h.Values("Original-Rcpt-To") {
			if a := trimPath(v); a != "" {
				f.OriginalRcptTo = append(f.OriginalRcptTo, a)
			}
		}
	}
	return f, nil
}

// typedAddress is the address of a "type; address" field (RFC 3464
// §2.1.2), such as "rfc822; <bob@example.org>".
func typedAddress(v string) string {
	if _, a, ok := strings.Cut(v, ";"); ok {
		v = a
	}
	return trimPath(v)
}

// trimPath is an address without spaces and angle brackets.
func trimPath(v string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(v), "<"), ">")
}

// stripComment drops a trailing (comment), as some MTAs write
// "Status: 5.1.1 (bad destination mailbox)".
func stripComment(v string) string {
	if i := strings.IndexByte(v, '('); i >= 0 {
		return v[:i]
	}
	return v
}

// diagnostic builds the remote's reply from a Diagnostic-Code field and
// the Status field. Only the "smtp" type (RFC 3464 §2.3.6) is read for a
// code; other types keep their text. The enhanced code is Status's when it
// is valid and agrees with the code's class, else the one in the text.
func diagnostic(diag, status string) reply.Reply {
	var r reply.Reply
	typ, text, ok := strings.Cut(diag, ";")
	if !ok {
		typ, text = "", diag
	}
	text = strings.Join(strings.Fields(text), " ") // unfold
	var textEnh reply.Enhanced
	if strings.EqualFold(strings.TrimSpace(typ), "smtp") {
		r.Code, textEnh, text = splitCodes(text)
		// A multi-line reply, unfolded, repeats its codes
		// ("550-5.1.1 a 550-5.1.1 b 550 5.1.1 c"): keep the words.
		if r.Code != 0 {
			c := strconv.Itoa(r.Code)
			for _, sep := range []string{"-", " "} {
				prefix := c + sep
				if !textEnh.IsZero() {
					prefix += textEnh.String() + " "
				}
				text = strings.ReplaceAll(text, " "+prefix, " ")
			}
		}
	}
	r.Text = text
	enh, err := reply.ParseEnhanced(status)
	if err != nil || r.Code != 0 && enh.Class != r.Code/100 {
		enh = textEnh
	}
	r.Enhanced = enh
	return r
}

// splitCodes takes "550 5.1.1 text" (or "550-5.1.1 text") apart.
func splitCodes(s string) (int, reply.Enhanced, string) {
	if len(s) < 3 {
		return 0, reply.Enhanced{}, s
	}
	code, err := strconv.Atoi(s[:3])
	if err != nil || code < 200 || code > 599 || len(s) > 3 && s[3] != ' ' && s[3] != '-' {
		return 0, reply.Enhanced{}, s
	}
	rest := strings.TrimSpace(s[3:])
	rest = strings.TrimPrefix(rest, "-")
	word, after, _ := strings.Cut(rest, " ")
	if e, err := reply.ParseEnhanced(word); err == nil && e.Class == code/100 {
		return code, e, after
	}
	return code, reply.Enhanced{}, rest
}

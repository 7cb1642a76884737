package httpapi

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	gomail "github.com/emersion/go-message/mail"

	"postern/relay/submit"
)

// SendRequest is the JSON body of POST /v1/messages.
type SendRequest struct {
	From        string            `json:"from"`
	To          []string          `json:"to"`
	Cc          []string          `json:"cc"`
	Bcc         []string          `json:"bcc"`
	ReplyTo     string            `json:"reply_to"`
	Subject     string            `json:"subject"`
	Text        string            `json:"text"`
	HTML        string            `json:"html"`
	Headers     map[string]string `json:"headers"`
	Attachments []Attachment      `json:"attachments"`
	Tags        []string          `json:"tags"`
	Metadata    map[string]string `json:"metadata"`
}

// Attachment is one file of a SendRequest; Content is base64 in the JSON.
type Attachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Content     []byte `json:"content"`
}

// FieldError is one thing wrong with a request, by field ("to[1]").
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Limits on what a request may carry beside the message size.
const (
	maxTags        = 10
	maxTagLen      = 64
	maxMetadata    = 20
	maxMetaKeyLen  = 64
	maxMetaValLen  = 512
	maxHeaderValue = 998 // RFC 5322 §2.1.1, a whole line
)

// reservedFields are the header fields postern writes itself from the
// request's own members, or that only a server may add: a request cannot
// set them through "headers".
var reservedFields = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "reply-to": true, "subject": true,
	"sender": true, "date": true, "mime-version": true, "received": true, "return-path": true,
	"dkim-signature": true, "content-type": true, "content-transfer-encoding": true,
	"content-disposition": true, "resent-from": true, "resent-to": true, "resent-cc": true,
	"resent-bcc": true, "resent-date": true, "resent-sender": true, "resent-message-id": true,
}

// composed is a message built from a SendRequest, with its envelope.
type composed struct {
	from  string   // envelope sender (the From address)
	rcpts []string // envelope recipients: To, Cc and Bcc, each once
	msg   []byte   // the message, CRLF line ends, 7-bit
}

// compose checks req and builds its message: every problem is reported, by
// field, at once. Addresses go through the same checks as SMTP's (IDN
// domains to A-labels, no relay tricks); non-ASCII text in the header is
// encoded as RFC 2047 says, and the bodies are quoted-printable, so the
// message is 7-bit and signs and travels anywhere as it is.
func compose(req *SendRequest, now time.Time) (*composed, []FieldError) {
	var errs []FieldError
	bad := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	c := &composed{}
	var h gomail.Header
	h.SetDate(now)
	h.Set("MIME-Version", "1.0")

	from := parseMailbox(req.From, "from", bad)
	if req.From == "" {
		bad("from", "is required")
	}
	if from != nil {
		c.from = from.Address
		h.SetAddressList("From", []*gomail.Address{from})
	}
	seen := map[string]bool{}
	for _, l := range []struct {
		field string
		addrs []string
	}{{"to", req.To}, {"cc", req.Cc}, {"bcc", req.Bcc}} {
		var list []*gomail.Address
		for i, s := range l.addrs {
			a := parseMailbox(s, fmt.Sprintf("%s[%d]", l.field, i), bad)
			if a == nil {
				continue
			}
			list = append(list, a)
			if k := strings.ToLower(a.Address); !seen[k] {
				seen[k] = true
				c.rcpts = append(c.rcpts, a.Address)
			}
		}
		if l.field != "bcc" { // Bcc is the envelope's only (RFC 5322 §3.6.3)
			h.SetAddressList(canonicalField(l.field), list)
		}
	}
	if len(req.To)+len(req.Cc)+len(req.Bcc) == 0 {
		bad("to", "at least one recipient is required in to, cc or bcc")
	}
	if req.ReplyTo != "" {
		if a := parseMailbox(req.ReplyTo, "reply_to", bad); a != nil {
			h.SetAddressList("Reply-To", []*gomail.Address{a})
		}
	}
	if !validText(req.Subject) {
		bad("subject", "must be one line of valid UTF-8")
	} else if req.Subject != "" {
		h.Set("Subject", encodeText(req.Subject, len("Subject: ")))
	}
	for _, name := range sortedKeys(req.Headers) {
		v := req.Headers[name]
		field := fmt.Sprintf("headers[%q]", name)
		switch {
		case !validFieldName(name):
			bad(field, "is not a header field name (printable ASCII without spaces or colon)")
		case reservedFields[strings.ToLower(name)] || strings.HasPrefix(strings.ToLower(name), "content-"):
			bad(field, "is set by postern; use the request's own members")
		case !validText(v) || len(name)+2+len(v) > maxHeaderValue:
			bad(field, "must be one line of valid UTF-8, at most %d octets with its name", maxHeaderValue)
		case strings.EqualFold(name, "Message-ID") && !validMsgID(v):
			bad(field, "must be <left@right>")
		default:
			h.Set(name, encodeText(v, len(name)+2))
		}
	}
	if !utf8.ValidString(req.Text) || !utf8.ValidString(req.HTML) {
		bad("text", "text and html must be valid UTF-8")
	}
	if req.Text == "" && req.HTML == "" && len(req.Attachments) == 0 {
		bad("text", "one of text, html or attachments is required")
	}
	for i, a := range req.Attachments {
		field := fmt.Sprintf("attachments[%d]", i)
		if a.Filename == "" || !validText(a.Filename) || strings.ContainsAny(a.Filename, `/\`) {
			bad(field+".filename", "is required: one line, no path")
		}
		if a.ContentType != "" {
			if mt, _, err := mime.ParseMediaType(a.ContentType); err != nil || !strings.Contains(mt, "/") || strings.HasPrefix(mt, "multipart/") {
				bad(field+".content_type", "%q is not a media type for a file", a.ContentType)
			}
		}
	}
	checkTags(req, bad)
	if len(errs) > 0 {
		return nil, errs
	}

	var buf bytes.Buffer
	if err := writeBody(&buf, inOrder(h), req); err != nil {
		// Everything was checked above: a failure here is a bug.
		return nil, []FieldError{{Field: "", Message: "composing the message: " + err.Error()}}
	}
	// The last line ends like the others (RFC 5322 §2.1: CRLF ends
	// every line), whatever the text or the closing boundary left.
	if !bytes.HasSuffix(buf.Bytes(), []byte("\r\n")) {
		buf.WriteString("\r\n")
	}
	c.msg = buf.Bytes()
	return c, nil
}

// writeBody writes the header and the MIME tree: one text part, or
// multipart/alternative (text, then HTML: the last is preferred, RFC 2046
// §5.1.4), inside multipart/mixed when there are attachments.
func writeBody(w io.Writer, h gomail.Header, req *SendRequest) error {
	type part struct{ ctype, body string }
	var texts []part
	if req.Text != "" || req.HTML == "" {
		texts = append(texts, part{"text/plain", req.Text})
	}
	if req.HTML != "" {
		texts = append(texts, part{"text/html", req.HTML})
	}
	inline := func(p part) gomail.InlineHeader {
		var ih gomail.InlineHeader
		ih.SetContentType(p.ctype, map[string]string{"charset": "utf-8"})
		ih.Set("Content-Transfer-Encoding", "quoted-printable")
		return ih
	}
	writeText := func(wc io.WriteCloser, body string) error {
		if _, err := io.WriteString(wc, body); err != nil {
			return err
		}
		return wc.Close()
	}

	if len(req.Attachments) == 0 && len(texts) == 1 {
		h.SetContentType(texts[0].ctype, map[string]string{"charset": "utf-8"})
		h.Set("Content-Transfer-Encoding", "quoted-printable")
		wc, err := gomail.CreateSingleInlineWriter(w, h)
		if err != nil {
			return err
		}
		return writeText(wc, texts[0].body)
	}
	writeAlternatives := func(iw *gomail.InlineWriter) error {
		for _, p := range texts {
			wc, err := iw.CreatePart(inline(p))
			if err != nil {
				return err
			}
			if err := writeText(wc, p.body); err != nil {
				return err
			}
		}
		return iw.Close()
	}
	if len(req.Attachments) == 0 {
		iw, err := gomail.CreateInlineWriter(w, h)
		if err != nil {
			return err
		}
		return writeAlternatives(iw)
	}
	mw, err := gomail.CreateWriter(w, h)
	if err != nil {
		return err
	}
	if len(texts) == 1 {
		wc, err := mw.CreateSingleInline(inline(texts[0]))
		if err != nil {
			return err
		}
		if err := writeText(wc, texts[0].body); err != nil {
			return err
		}
	} else {
		iw, err := mw.CreateInline()
		if err != nil {
			return err
		}
		if err := writeAlternatives(iw); err != nil {
			return err
		}
	}
	for _, a := range req.Attachments {
		var ah gomail.AttachmentHeader
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		mt, params, _ := mime.ParseMediaType(ct)
		ah.SetContentType(mt, params)
		// RFC 2183's filename parameter, in RFC 2231's charset form when
		// not ASCII: encoded words are not allowed inside a quoted
		// parameter (RFC 2047 §5).
		ah.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Filename}))
		wc, err := mw.CreateAttachment(ah)
		if err != nil {
			return err
		}
		if _, err := wc.Write(a.Content); err != nil {
			return err
		}
		if err := wc.Close(); err != nil {
			return err
		}
	}
	return mw.Close()
}

// inOrder returns h with its fields in the order they were set: go-message
// writes the last set first, and Date, From, To ... read better on top.
// Each field is folded at its spaces to lines of at most 78 characters
// where the words allow (RFC 5322 §2.1.1): go-message gives up folding a
// field whose first encoded word is long and writes it on one line.
func inOrder(h gomail.Header) gomail.Header {
	var out gomail.Header
	for f := h.Fields(); f.Next(); {
		out.AddRaw(fold(f.Key(), f.Value()))
	}
	return out
}

// encodeText is an unstructured field's value: as is when it is ASCII,
// else RFC 2047 Q-encoded words of whole characters, the first short
// enough to follow a field name of prefix characters and every one on a
// line of at most 76 characters once folded (RFC 2047 §2). go-message's
// encoder makes a first word of up to 75 characters, which either
// overflows the line or must be folded onto a line of its own, which some
// readers (Python's email) then read with a leading space.
func encodeText(s string, prefix int) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return s
	}
	const lineMax = 76
	var words []string
	budget := lineMax - prefix
	var cur []rune
	encoded := ""
	for _, r := range s {
		next := qWord(string(append(cur, r)))
		if len(next) > budget && len(cur) > 0 {
			words = append(words, encoded)
			cur, budget = cur[:0], lineMax-1 // after the fold's space
			next = qWord(string(r))
		}
		cur, encoded = append(cur, r), next
	}
	return strings.Join(append(words, encoded), " ")
}

// qWord is one RFC 2047 encoded word, Q encoding, always encoded (a
// plain word between encoded ones would make its spaces count). Only
// letters, digits and "!*+-/" stand for themselves, as §5(3) allows
// in any position; a space is "_".
func qWord(s string) string {
	const hex = "0123456789ABCDEF"
	b := []byte("=?utf-8?q?")
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ':
			b = append(b, '_')
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("!*+-/", c) >= 0:
			b = append(b, c)
		default:
			b = append(b, '=', hex[c>>4], hex[c&15])
		}
	}
	return string(append(b, "?="...))
}

// fold writes "key: value" CRLF-terminated, breaking lines before a space
// (a fold: unfolding gives the same value back, RFC 5322 §2.2.3).
func fold(key, value string) []byte {
	const width = 76
	b := []byte(key + ":")
	lineStart := 0
	for i, w := range strings.Split(value, " ") {
		if i > 0 && len(b)-lineStart+1+len(w) > width {
			b = append(b, "\r\n"...)
			lineStart = len(b)
		}
		b = append(b, ' ')
		b = append(b, w...)
	}
	return append(b, "\r\n"...)
}

// parseMailbox reads "addr" or "Name <addr>" and checks the address as
// SMTP's MAIL and RCPT do; nil after reporting a problem.
func parseMailbox(s, field string, bad func(field, format string, args ...any)) *gomail.Address {
	if s == "" {
		return nil
	}
	if !validText(s) {
		bad(field, "must be one line of valid UTF-8")
		return nil
	}
	// The domain may be a U-label, which net/mail accepts, and
	// ParseAddress turns into A-labels.
	pa, err := mail.ParseAddress(s)
	if err != nil {
		bad(field, "%q is not an address: %v", s, err)
		return nil
	}
	a, err := submit.ParseAddress(pa.Address)
	if err != nil {
		bad(field, "%q: %v", pa.Address, err)
		return nil
	}
	return &gomail.Address{Name: pa.Name, Address: a.String()}
}

func checkTags(req *SendRequest, bad func(field, format string, args ...any)) {
	if len(req.Tags) > maxTags {
		bad("tags", "at most %d tags", maxTags)
	}
	for i, t := range req.Tags {
		if t == "" || len(t) > maxTagLen || !validText(t) {
			bad(fmt.Sprintf("tags[%d]", i), "must be 1 to %d octets of one-line UTF-8", maxTagLen)
		}
	}
	if len(req.Metadata) > maxMetadata {
		bad("metadata", "at most %d keys", maxMetadata)
	}
	for _, k := range sortedKeys(req.Metadata) {
		if k == "" || len(k) > maxMetaKeyLen || !validText(k) || len(req.Metadata[k]) > maxMetaValLen || !utf8.ValidString(req.Metadata[k]) {
			bad(fmt.Sprintf("metadata[%q]", k), "keys are 1 to %d octets of one line, values at most %d octets of UTF-8", maxMetaKeyLen, maxMetaValLen)
		}
	}
}

// validText: valid UTF-8 on one line, without control characters a header
// could be broken with.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < ' ' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}

// validFieldName is RFC 5322 §3.6.8's field-name: printable ASCII but
// the colon.
func validFieldName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == ':' {
			return false
		}
	}
	return true
}

func validMsgID(s string) bool {
	s = strings.TrimSpace(s)
	if len(s) < 5 || s[0] != '<' || s[len(s)-1] != '>' {
		return false
	}
	left, right, ok := strings.Cut(s[1:len(s)-1], "@")
	return ok && left != "" && right != "" && !strings.ContainsAny(s[1:len(s)-1], "<> \t") && isASCII(s)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func canonicalField(f string) string {
	switch f {
	case "to":
		return "To"
	case "cc":
		return "Cc"
	}
	return f
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

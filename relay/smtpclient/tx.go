package smtpclient

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"postern/queue/message"
)

// CmdBDAT names the reply to a BDAT chunk other than the last (the last
// one's reply is CmdEOD's: it is the reply to the whole message).
const CmdBDAT = "BDAT"

// Body gives repeatable access to a message: header section and body, CRLF
// line ends. Open is called once per transaction.
type Body interface {
	Open() (io.ReadCloser, error)
}

// Tx is a mail transaction to send: an envelope and a message.
type Tx struct {
	From  string // envelope sender; "" is the null reverse-path
	Rcpts []Rcpt
	Body  Body
	// Size is announced with SIZE (RFC 1870) when the server offers it;
	// 0 announces nothing.
	Size int64
	// UTF8 asks for SMTPUTF8 (RFC 6531): the envelope or the header has
	// UTF-8. Send fails with ErrNoSMTPUTF8 if the server does not offer it.
	UTF8 bool
	// RequireTLS sends REQUIRETLS with MAIL (RFC 8689 §4.1): every later
	// hop must deliver the message over authenticated TLS too. Send fails
	// with ErrNoREQUIRETLS, sending nothing, unless the connection is TLS
	// and the server offers REQUIRETLS; whether that TLS is authenticated
	// enough is the caller's to decide before Send.
	RequireTLS bool
	// Ret and EnvID are the DSN parameters of MAIL (RFC 3461 §4.3, §4.4),
	// sent when the server offers DSN and not empty. The caller has
	// checked them: Ret is FULL or HDRS, EnvID printable ASCII.
	Ret, EnvID string
}

// Rcpt is one recipient of a Tx.
type Rcpt struct {
	Addr string
	// Notify (NEVER, or SUCCESS, FAILURE, DELAY) and ORCPT (of type
	// "rfc822" or "utf-8", RFC 3461 §4.2, RFC 6533) are sent when the
	// server offers DSN and not empty. The caller has checked them.
	Notify     []string
	ORcptType  string
	ORcptValue string
}

// Result is what became of a Tx.
type Result struct {
	// Rcpts is parallel to Tx.Rcpts.
	Rcpts []RcptResult
	// Transactions counts the MAIL commands sent.
	Transactions int
	// Replies holds, per transaction, the reply that ended it: the reply
	// to the content, or the refusal that ended it early (of MAIL, of the
	// last RCPT when none was accepted, of DATA or a chunk); nil when it
	// ended without a reply (an I/O error, content that could not be
	// read).
	Replies []*Error
}

// RcptResult is one recipient's fate. Exactly one of Reply and Err is set.
type RcptResult struct {
	// Reply decides the recipient: the refusal of its RCPT, of its
	// transaction's MAIL (past the first transaction), of DATA or of a
	// BDAT chunk, or the reply to the message (CmdEOD; 2xx: delivered).
	Reply *Error
	// Err: no reply decided the recipient. An I/O error (after the
	// content went out it may have been delivered), ErrBody, ErrMailMax,
	// ErrClosed.
	Err error
	// Accepted: the server accepted the RCPT.
	Accepted bool
}

// Delivered reports whether the server took the message for r.
func (r RcptResult) Delivered() bool {
	return r.Err == nil && r.Reply != nil && r.Reply.Command == CmdEOD && r.Reply.OK()
}

// Send runs tx: one transaction, or several when the server limits the
// recipients of one (LIMITS RCPTMAX up front, 452 "too many recipients"
// as it comes), each sent at once on this connection. See the package
// documentation for the round trips it takes.
//
// An error means the first MAIL got no positive reply: an *Error, or an
// I/O error (the connection is then unusable). Nothing was delivered, and
// no other transaction was tried. Otherwise every recipient has a result.
// Whether the connection may carry the next Send is Reusable.
func (c *Client) Send(ctx context.Context, tx *Tx) (*Result, error) {
	if c.broken {
		return nil, ErrClosed
	}
	if tx.UTF8 && !c.ext.SMTPUTF8 {
		return nil, ErrNoSMTPUTF8
	}
	if tx.RequireTLS && !(c.tls && c.ext.RequireTLS) {
		return nil, ErrNoREQUIRETLS
	}
	alive := c.watch(ctx)
	defer alive()
	res := &Result{Rcpts: make([]RcptResult, len(tx.Rcpts))}
	pending := make([]int, len(tx.Rcpts))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		if c.open && !c.broken && len(pending) < len(tx.Rcpts) {
			// The last transaction ended without its message (every
			// RCPT of a LIMITS batch refused, or DATA refused) and was
			// left open: RSET (RFC 5321 §4.1.1.5) makes a clean state
			// for the recipients still to send.
			re, err := c.cmd("RSET", "RSET")
			switch {
			case err != nil:
				c.broken = true
			case re.OK():
				c.open = false
			}
		}
		if c.broken || c.open {
			// An earlier transaction failed in a way that leaves no
			// clean state to start another in.
			for _, i := range pending {
				res.Rcpts[i] = RcptResult{Err: ErrClosed}
			}
			break
		}
		if c.ext.MailMax > 0 && c.mails >= c.ext.MailMax {
			for _, i := range pending {
				res.Rcpts[i] = RcptResult{Err: ErrMailMax}
			}
			break
		}
		n := len(pending)
		if c.ext.RcptMax > 0 {
			n = min(n, c.ext.RcptMax)
		}
		batch := pending[:n]
		first := res.Transactions == 0
		overflow, err := c.transaction(ctx, tx, batch, res)
		if err != nil && first {
			return nil, err
		}
		pending = append(overflow, pending[n:]...)
	}
	return res, nil
}

// transaction runs one transaction for the recipients idx of tx, writing
// their results into res. It returns the recipients refused as "too
// many", to go in the next transaction, and, when MAIL got no positive
// reply, the reason (its recipients then carry it too).
func (c *Client) transaction(ctx context.Context, tx *Tx, idx []int, res *Result) (overflow []int, err error) {
	fail := func(set []int, err error) {
		for _, i := range set {
			res.Rcpts[i].Reply, res.Rcpts[i].Err = nil, err
		}
	}
	give := func(set []int, re *Error) {
		for _, i := range set {
			res.Rcpts[i].Reply, res.Rcpts[i].Err = re, nil
		}
	}
	// A line break in an address or parameter would inject a command:
	// such a recipient (or, for MAIL, the whole transaction) is refused
	// here.
	lines := []string{c.mailLine(tx)}
	if !printable(lines[0]) {
		fail(idx, ErrBadLine)
		return nil, nil
	}
	good := make([]int, 0, len(idx))
	for _, i := range idx {
		if l := c.rcptLine(tx.Rcpts[i]); printable(l) {
			lines = append(lines, l)
			good = append(good, i)
		} else {
			fail([]int{i}, ErrBadLine)
		}
	}
	if idx = good; len(idx) == 0 {
		return nil, nil
	}
	// The message is opened before anything is sent: if it cannot be
	// read, no transaction is started.
	body, err := tx.Body.Open()
	if err != nil {
		fail(idx, fmt.Errorf("%w: %w", ErrBody, err))
		return nil, nil
	}
	defer body.Close()

	pipe := c.ext.Pipelining
	chunk := c.ext.Chunking
	if !chunk {
		// With PIPELINING, DATA ends the group (RFC 2920 §3.1): its
		// reply says whether to send the content. Without, it is sent
		// only once a recipient was accepted.
		lines = append(lines, "DATA")
	}
	res.Transactions++
	res.Replies = append(res.Replies, nil)
	slot := len(res.Replies) - 1
	// last is the last reply read in this transaction, which ended it
	// unless an error came after it.
	var last *Error
	defer func() {
		if !c.broken || last != nil && last.Code == 421 {
			res.Replies[slot] = last
		}
	}()
	if pipe {
		for _, l := range lines {
			c.write(l)
		}
		if err := c.flush(); err != nil {
			err = c.ioErr(ctx, err)
			fail(idx, err)
			return nil, err
		}
	}
	// next reads the reply to lines[k], sending it first when the server
	// does not pipeline.
	next := func(k int, command string) (*Error, error) {
		if !pipe {
			if err := c.write(lines[k]); err != nil {
				return nil, err
			}
			if err := c.flush(); err != nil {
				return nil, err
			}
		}
		return c.read(command, c.opts.CommandTimeout)
	}

	mail, err := next(0, CmdMAIL)
	last = mail
	if err != nil {
		err = c.ioErr(ctx, err)
		fail(idx, err)
		return nil, err
	}
	if !mail.OK() {
		if mail.Code == 421 {
			c.broken = true
		} else if pipe {
			// The rest of the group went out: read its replies (503,
			// bad sequence) to stay in step.
			c.drain(ctx, len(lines)-1)
		}
		give(idx, mail)
		return nil, mail
	}
	c.mails++
	c.open = true

	var accepted []int
	for k, i := range idx {
		re, err := next(1+k, CmdRCPT)
		if err != nil {
			last = nil
			// Every recipient without a reply yet, accepted ones
			// included, gets the error.
			err = c.ioErr(ctx, err)
			fail(append(accepted, idx[k:]...), err)
			return nil, nil
		}
		if !re.OK() {
			last = re
		}
		if re.OK() {
			res.Rcpts[i].Accepted = true
			accepted = append(accepted, i)
			continue
		}
		give([]int{i}, re)
		if re.Code == 421 {
			c.broken = true
		}
		// RFC 5321 §4.5.3.1.10: a server at its limit of recipients
		// answers 452 (or 552); the client sends the rest in another
		// transaction. A 452 before any recipient was accepted is this
		// recipient's own failure.
		if len(accepted) > 0 && tooMany(re) {
			overflow = append(overflow, i)
		}
	}

	if !chunk && (pipe || len(accepted) > 0) {
		re, err := next(len(lines)-1, CmdDATA)
		if err != nil {
			fail(accepted, c.ioErr(ctx, err))
			return nil, nil
		}
		if len(accepted) > 0 {
			last = re
		}
		if len(accepted) == 0 && re.Code == 354 {
			// RFC 2920 §3.1: the server accepted DATA with no valid
			// recipient. Sending the content would deliver nothing,
			// and the dot alone might deliver an empty message: the
			// only safe end is closing the connection.
			c.abort()
			return nil, nil
		}
		if len(accepted) > 0 && re.Code != 354 {
			// The transaction stays open: the recipients refused as
			// too many keep their 452, as no clean state is left to
			// start another transaction in.
			give(accepted, re)
			return nil, nil
		}
	}
	if len(accepted) == 0 {
		return nil, nil
	}

	var final *Error
	if chunk {
		final, err = c.sendChunks(body, pipe)
	} else {
		final, err = c.sendData(body)
	}
	if err != nil {
		fail(accepted, c.ioErr(ctx, err))
		return nil, nil
	}
	last = final
	give(accepted, final)
	if final.Command == CmdEOD {
		// The reply to the content ends the transaction, whatever it
		// says (RFC 5321 §4.1.1.4, RFC 3030 §2).
		c.open = false
	}
	if final.Code == 421 {
		c.broken = true
	}
	return overflow, nil
}

// tooMany reports whether an RCPT refusal says the transaction has all
// the recipients the server takes: 452 or 552, without an enhanced code
// or with X.5.3 "too many recipients" (RFC 3463 §3.6).
func tooMany(re *Error) bool {
	if re.Code != 452 && re.Code != 552 {
		return false
	}
	return re.Enhanced.IsZero() || re.Enhanced.Subject == 5 && re.Enhanced.Detail == 3
}

// drain reads n replies whose commands were pipelined after a refused
// MAIL. A 354 among them (a server that took DATA anyway) can only be
// ended by closing the connection.
func (c *Client) drain(ctx context.Context, n int) {
	for range n {
		re, err := c.read(CmdDATA, c.opts.CommandTimeout)
		if err != nil {
			c.ioErr(ctx, err)
			return
		}
		if re.Code == 354 {
			c.abort()
			return
		}
	}
}

// sendData sends the content after a 354: line ends made CRLF by postern's
// one line-end fixer, dot-stuffed, then the final dot, and reads the reply
// to it. An error means no reply: if it happened before the final dot,
// the connection was closed first, so that the server never takes a
// message cut short (and a retry never duplicates it).
func (c *Client) sendData(body io.Reader) (*Error, error) {
	c.nc.SetWriteDeadline(deadline(c.opts.DataTimeout))
	cr := message.NewCRLFReader(bodyReader{body})
	err := writeData(c.bw, cr)
	cr.Release()
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		c.abort()
		return nil, err
	}
	return c.read(CmdEOD, c.opts.DataTimeout)
}

// chunkSize is the size of a BDAT chunk. Most messages fit in one, sent as
// "BDAT n LAST"; a larger one goes as several, read into a buffer first
// because BDAT announces its size (and the line-end fixer may change it),
// and sent back to back when the server pipelines.
const chunkSize = 256 << 10

var chunks = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// sendChunks sends the content as BDAT chunks (RFC 3030), the last one
// marked LAST, and reads their replies: back to back with PIPELINING, one
// by one without. The first refusal decides; the reply to the LAST chunk
// is the reply to the message. An error means no reply came; if it came
// before the LAST chunk was sent the connection was closed first.
func (c *Client) sendChunks(body io.Reader, pipe bool) (*Error, error) {
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	buf := *bp
	cr := message.NewCRLFReader(bodyReader{body})
	defer cr.Release()
	sent := 0 // chunks whose reply is still to be read
	var refusal *Error
	readOne := func(last bool) error {
		cmd, timeout := CmdBDAT, c.opts.CommandTimeout
		if last {
			cmd, timeout = CmdEOD, c.opts.DataTimeout
		}
		re, err := c.read(cmd, timeout)
		if err != nil {
			return err
		}
		sent--
		if !re.OK() && refusal == nil {
			refusal = re
		}
		if last && refusal == nil {
			refusal = re // the positive reply to the message
		}
		return nil
	}
	c.nc.SetWriteDeadline(deadline(c.opts.DataTimeout))
	for last := false; !last; {
		n, err := io.ReadFull(cr, buf)
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			last = true
		default:
			c.abort()
			return nil, err
		}
		head := "BDAT " + strconv.Itoa(n)
		if last {
			head += " LAST"
		}
		c.bw.WriteString(head + "\r\n")
		c.bw.Write(buf[:n])
		sent++
		if pipe && !last {
			continue // bufio writes as it fills
		}
		if err := c.bw.Flush(); err != nil {
			c.abort()
			return nil, err
		}
		for sent > 0 {
			if err := readOne(last && sent == 1); err != nil {
				return nil, err
			}
		}
		if refusal != nil && !last {
			// A chunk was refused: the server drops the message (RFC
			// 3030 §4.2). The transaction is left open for QUIT.
			return refusal, nil
		}
	}
	return refusal, nil
}

// bodyReader marks the errors of reading the message as ErrBody, apart
// from those of the connection.
type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", ErrBody, err)
	}
	return n, err
}

// mailLine is the MAIL command of tx with the parameters the server
// offers: BODY=8BITMIME whenever it offers 8BITMIME (RFC 6152 allows it
// for any content, and the caller has made 8-bit content 7-bit for a
// server without it), SIZE, SMTPUTF8, and the DSN parameters.
func (c *Client) mailLine(tx *Tx) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + tx.From + ">")
	if c.ext.EightBitMIME {
		b.WriteString(" BODY=8BITMIME")
	}
	if c.ext.SizeOffered && tx.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(tx.Size, 10))
	}
	if tx.UTF8 {
		b.WriteString(" SMTPUTF8")
	}
	if tx.RequireTLS {
		b.WriteString(" REQUIRETLS")
	}
	if c.ext.DSN {
		if tx.Ret != "" {
			b.WriteString(" RET=" + tx.Ret)
		}
		if tx.EnvID != "" {
			b.WriteString(" ENVID=" + xtext(tx.EnvID))
		}
	}
	return b.String()
}

// rcptLine is the RCPT command of r, with its DSN parameters when the
// server offers DSN.
func (c *Client) rcptLine(r Rcpt) string {
	var b strings.Builder
	b.WriteString("RCPT TO:<" + r.Addr + ">")
	if c.ext.DSN {
		if len(r.Notify) > 0 {
			b.WriteString(" NOTIFY=" + strings.Join(r.Notify, ","))
		}
		if r.ORcptValue != "" {
			enc := xtext(r.ORcptValue)
			if strings.EqualFold(r.ORcptType, "utf-8") {
				// RFC 6533 §3: utf-8-addr-unitext to a server that
				// offers SMTPUTF8, utf-8-addr-xtext otherwise.
				enc = utf8AddrText(r.ORcptValue, c.ext.SMTPUTF8)
			}
			b.WriteString(" ORCPT=" + r.ORcptType + ";" + enc)
		}
	}
	return b.String()
}

// printable reports whether a command line holds no control character
// (UTF-8 is allowed: SMTPUTF8 addresses).
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// xtext encodes s as RFC 3461 §4 xtext: "+" and two upper-case hex digits
// for "+", "=", and anything outside "!".."~".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "+%02X", ch)
		}
	}
	return b.String()
}

// utf8AddrText encodes s as RFC 6533's utf-8-addr-unitext (non-ASCII kept)
// or utf-8-addr-xtext (every code point outside "!".."~", "+" and "="
// written \x{HEX}).
func utf8AddrText(s string, unitext bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= '!' && r <= '~' && r != '+' && r != '=':
			b.WriteRune(r)
		case r >= 0x80 && unitext:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, "\\x{%X}", r)
		}
	}
	return b.String()
}

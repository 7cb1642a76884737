package submit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"postern/auth"
	"postern/queue"
	"postern/queue/message"
	"postern/relay/status"
)

// Enqueuer stores a message durably. Enqueue returns only once the message
// is synced to disk; its error keeps the cause (errors.Is ENOSPC, EROFS).
// *queue.Queue implements it.
type Enqueuer interface {
	// EnqueuePrefixed stores prefix() followed by body; prefix is called
	// once body has been read to EOF (see queue.EnqueuePrefixed).
	EnqueuePrefixed(ctx context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (id string, err error)
}

// Signer returns the header fields to prepend to a message (DKIM
// signatures), or nil when the message is not to be signed. *dkim.Signer
// implements it.
type Signer interface {
	Sign(msg io.Reader) ([]byte, error)
}

// Signs is what a Signer may also implement: whether it would sign a
// message with this header section. A Signer without it is taken to sign
// every message (which only costs the 7-bit check below on messages it
// does not sign). *dkim.Signer implements it.
type Signs interface {
	Signs(h *message.Header) bool
}

// Options configure a Pipeline. Queue is required.
type Options struct {
	// Hostname names this server in the Received field and in the
	// Message-IDs it adds.
	Hostname string
	Queue    Enqueuer
	// Signer, when set, is asked for the current signer for each message,
	// so keys can be reloaded while messages flow.
	Signer func() Signer
	// FixHeaders applies the MSA's header rules to every message: add
	// Date: and Message-ID: when missing (RFC 6409 §8.2, §8.3), remove
	// Bcc: and Resent-Bcc: (RFC 5322 §3.6.3). Every postern source is a
	// submission service in RFC 6409's sense: none is an MX.
	FixHeaders bool
	// MaxReceived refuses a message with more Received: fields (554
	// 5.4.6, a mail loop: RFC 5321 §6.3). 0 disables the check.
	MaxReceived int
}

// Pipeline turns a message from any inbound source into a queued one.
// Its methods are safe for concurrent use.
type Pipeline struct{ opts Options }

// New returns a Pipeline. It panics without Options.Queue: a wiring
// mistake to catch at startup.
func New(opts Options) *Pipeline {
	if opts.Queue == nil {
		panic("submit: New without Options.Queue")
	}
	return &Pipeline{opts: opts}
}

// Origin says where a message came from: what the Received field reports
// and whose rights the header check applies.
type Origin struct {
	// For a message received over the network: the client's address,
	// the name it gave in HELO/EHLO, and the TLS state of its connection
	// (nil without TLS). Protocol is the "with" keyword of RFC 3848
	// (ESMTP, ESMTPS, ESMTPA, ESMTPSA).
	IP       netip.Addr
	Helo     string
	TLS      *tls.ConnectionState
	Protocol string
	// For a message a local user handed to the sendmail command: the
	// submitting user ID (and name when known). Used when IP is not
	// valid: "Received: by host (postern, from userid 1000)".
	UID      int
	UserName string

	// User, when set with CheckHeaderFrom, must be allowed to send as
	// every From: address and the Sender: address (else 550 5.7.1).
	User            *auth.User
	CheckHeaderFrom bool
}

// Replies of the pipeline (relay/status turns them into SMTP replies; the
// other sources map them their own way).
var (
	// RFC 3463 §3.5 X.4.6 "Routing loop detected"; RFC 5321 §6.3 counts
	// Received fields to find loops.
	ErrMailLoop = status.New(554, 4, 6, "Too many Received header fields: mail loop")
	// RFC 3463 §3.8 X.7.1: the header From or Sender is not the user's.
	ErrHeaderFrom = status.New(550, 7, 1, "From or Sender header address not allowed for this user")
	// RFC 3463 §3.4 X.3.4: message too big for system.
	ErrHeaderSize = status.New(552, 3, 4, "Message header section too large")
)

// MaxHeaderBytes bounds the header section, the only part of a message
// held in memory while it streams. Real headers are a few KiB; Postfix
// stops reading headers at 100 KiB.
const MaxHeaderBytes = 1 << 20

// Rejected is the error of a message the header rules refused: Status is
// the reply; From and Sender are the header values a refused From check
// saw, for the log.
type Rejected struct {
	Status *status.Error
	From   []string // the From: values, for the log
	Sender []string // the Sender: values
}

func (r *Rejected) Error() string { return r.Status.Error() }
func (r *Rejected) Unwrap() error { return r.Status }

// Submit reads one message from br (header section, then body), applies
// the header rules, adds the Received field, signs it and queues it with
// env. It returns only once the message is on disk, with its queue ID and
// its size as stored.
//
// Only the header section is held in memory; the body streams through the
// DKIM signer into the queue. An error leaves nothing queued: a
// *status.Error (wrapped in *Rejected for the header rules) for what the
// rules refuse, the queue's error (with its errno) for a storage failure,
// or br's read error.
func (p *Pipeline) Submit(ctx context.Context, env *queue.Envelope, o *Origin, br *bufio.Reader) (id string, size int64, err error) {
	hdr, err := message.ReadHeader(br, MaxHeaderBytes)
	if errors.Is(err, message.ErrHeaderTooLarge) {
		return "", 0, ErrHeaderSize.With(err)
	}
	if err != nil {
		return "", 0, err
	}
	now := time.Now()
	msg := editHeader(hdr, p.opts.FixHeaders, now, p.messageID)
	if p.opts.MaxReceived > 0 && msg.received > p.opts.MaxReceived {
		return "", 0, &Rejected{Status: ErrMailLoop.With(fmt.Errorf("%d Received fields", msg.received))}
	}
	if o.User != nil && o.CheckHeaderFrom {
		if err := checkHeaderFrom(msg, o.User); err != nil {
			return "", 0, &Rejected{Status: ErrHeaderFrom.With(err), From: msg.from, Sender: msg.sender}
		}
	}

	// Events name the message by it (queue.Event.MessageID).
	env.MessageID = msg.messageID
	// RFC 8689 §5: with REQUIRETLS the header field is ignored.
	env.TLSOptional = msg.tlsOptional && !env.RequireTLS

	received := p.received(o, env.Rcpts, now)
	var signer Signer
	if p.opts.Signer != nil {
		signer = p.opts.Signer()
	}
	var content io.Reader = io.MultiReader(msg.Reader(), br)
	if signer != nil && signs(signer, hdr) && maybe8Bit(hdr, br) {
		// A message is signed in the form every later hop can carry:
		// converted to 7 bits first (RFC 6152 §3), since delivery to a
		// server without 8BITMIME could not convert it later without
		// breaking the signature. What cannot be converted goes as it
		// is; delivery refuses it to such a server (5.6.3).
		conv, _ := message.Reader7Bit(content)
		defer conv.Close()
		content = conv
	}
	body := &countingReader{r: content}
	src, prefix, stop := signWhileReading(body, signer, received)
	defer stop()
	id, err = p.opts.Queue.EnqueuePrefixed(ctx, env, src, prefix)
	if err != nil {
		return "", 0, err
	}
	return id, int64(len(received)) + body.n + int64(stop()), nil
}

// signs reports whether signer would sign a message with header h.
func signs(signer Signer, h *message.Header) bool {
	if s, ok := signer.(Signs); ok {
		return s.Signs(h)
	}
	return true
}

// maybe8Bit reports whether the message may have 8-bit octets: in its
// header section, or in a body that br cannot show whole. A message that
// fits in br's buffer is looked at whole (Peek reads no more than a
// Submit would), so that the common small 7-bit message skips the
// converter.
func maybe8Bit(h *message.Header, br *bufio.Reader) bool {
	if has8Bit(h.Raw) {
		return true
	}
	p, err := br.Peek(br.Size())
	if err != io.EOF {
		return true // more than a buffer, or a read error the queue will meet
	}
	return has8Bit(p)
}

func has8Bit(p []byte) bool {
	for _, b := range p {
		if b >= 0x80 {
			return true
		}
	}
	return false
}

// Readers holds 32 KiB readers for the sources to read messages through,
// reused: allocated anew they were most of the garbage a message made.
var Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}

// signWhileReading returns the message as src for the queue to read, and
// the prefix function the queue calls at the end of it: the Received field
// and, with a signer, the DKIM signatures computed from the very bytes the
// queue read (a tee into the signer, through a pipe, so the message is
// never held whole). stop ends the signer if the queue stopped early and
// returns the length of the signatures; it may be called more than once.
func signWhileReading(body io.Reader, signer Signer, received []byte) (src io.Reader, prefix func() ([]byte, error), stop func() int) {
	if signer == nil {
		return body, func() ([]byte, error) { return received, nil }, func() int { return 0 }
	}
	pr, pw := io.Pipe()
	type result struct {
		sig []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		sig, err := signer.Sign(pr)
		// Sign may stop reading early (no key for this domain): keep
		// draining, or the tee would block the queue.
		io.Copy(io.Discard, pr)
		done <- result{sig, err}
	}()
	var (
		once sync.Once
		res  result
	)
	finish := func(err error) {
		once.Do(func() {
			pw.CloseWithError(err)
			res = <-done
		})
	}
	prefix = func() ([]byte, error) {
		finish(nil) // the queue has read everything: the signer sees EOF
		if res.err != nil {
			// A domain with a key never sends unsigned mail.
			return nil, status.Internal.With(res.err)
		}
		return append(append([]byte(nil), received...), res.sig...), nil
	}
	stop = func() int {
		finish(errAborted)
		return len(res.sig)
	}
	return io.TeeReader(body, pw), prefix, stop
}

var errAborted = errors.New("message not queued")

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// received builds the trace field of RFC 5321 §4.4: for a network client
// with the protocol keyword of RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA)
// and its TLS version and cipher; for a local user, the user ID, as
// Postfix's pickup writes it.
func (p *Pipeline) received(o *Origin, rcpts []string, now time.Time) []byte {
	var b bytes.Buffer
	if o.IP.IsValid() {
		// RFC 5321 §4.1.3: an IPv6 address literal is tagged "IPv6:".
		lit := o.IP.String()
		if o.IP.Is6() {
			lit = "IPv6:" + lit
		}
		fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (postern) with %s",
			sanitizeHelo(o.Helo), lit, p.opts.Hostname, o.Protocol)
		if o.TLS != nil {
			fmt.Fprintf(&b, "\r\n\t(%s %s)", tls.VersionName(o.TLS.Version), tls.CipherSuiteName(o.TLS.CipherSuite))
		}
	} else {
		who := "userid " + strconv.Itoa(o.UID)
		if o.UserName != "" {
			who += " " + sanitizeHelo(o.UserName)
		}
		fmt.Fprintf(&b, "Received: by %s (postern, from %s)", p.opts.Hostname, who)
	}
	// "for" only with a single recipient: listing several would disclose
	// Bcc recipients to each other (RFC 5321 §7.2).
	if len(rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", rcpts[0])
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format(time.RFC1123Z))
	return b.Bytes()
}

// messageID makes a Message-ID for a message that has none (RFC 5322
// §3.6.4: unique; a random left part and our host name on the right).
func (p *Pipeline) messageID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (Go 1.24+)
	host := p.opts.Hostname
	if host == "" {
		host = "postern.invalid"
	}
	return "<" + hex.EncodeToString(b[:]) + "@" + host + ">"
}

// sanitizeHelo keeps a name the client gave printable and short, since it
// is copied into a header.
func sanitizeHelo(h string) string {
	if len(h) > 255 {
		h = h[:255]
	}
	// Keep what a domain or address literal may hold; anything else (a
	// quote, a backslash, a parenthesis) could open a quoted string or a
	// comment that swallows the rest of the field.
	out := []byte(h)
	for i, c := range out {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']'
		if !ok {
			out[i] = '_'
		}
	}
	if len(out) == 0 {
		return "unknown"
	}
	return string(out)
}

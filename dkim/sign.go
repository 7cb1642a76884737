package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"postern/queue/message"
)

// Signer signs messages with a fixed set of keys. It is immutable once made,
// so any number of sessions may call Sign at once; to change keys (SIGHUP),
// build a new Signer and swap the pointer. A nil *Signer signs nothing.
type Signer struct {
	keys []*Key
}

// NewSigner returns a Signer for keys, which it keeps in the order given:
// signatures come out in that order.
func NewSigner(keys []*Key) *Signer {
	return &Signer{keys: append([]*Key(nil), keys...)}
}

// Keys returns the keys, in order. The caller must not modify them.
func (s *Signer) Keys() []*Key {
	if s == nil {
		return nil
	}
	return append([]*Key(nil), s.keys...)
}

// maxHeaderBytes bounds the header section read into memory: above the
// 1 MiB the inbound server accepts, with room for the fields it adds.
const maxHeaderBytes = 2 << 20

// signedFields is RFC 6376 §5.4.1's list of header fields that SHOULD be
// signed, in the order they go into h=, plus List-Unsubscribe-Post: RFC
// 8058 §4 requires a valid DKIM signature over both it and
// List-Unsubscribe before a receiver offers one-click unsubscription (the
// large mailbox providers require it of bulk senders). Only those present
// in a message are listed. A field that is absent is not listed, because listing it would
// make the signature fail when a later hop adds it, which some MTAs do for
// a missing Date or Message-ID.
var signedFields = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"In-Reply-To", "References",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
	"List-Post", "List-Owner", "List-Archive",
	"Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// oversigned fields are listed in h= once more than they occur (RFC 6376
// §8.15): a verifier then hashes an empty field for the extra entry, so a
// copy added after signing - a second From, Subject or To that a mail client
// may display instead of the signed one - breaks the signature. The
// one-click unsubscribe pair is oversigned too: a receiver POSTs to the
// List-Unsubscribe URI without asking the user (RFC 8058 §3.2), so a copy
// added on the way must not be able to redirect that request.
var oversigned = map[string]bool{
	"From": true, "Subject": true, "Date": true, "To": true, "Cc": true, "Message-ID": true,
	"List-Unsubscribe": true, "List-Unsubscribe-Post": true,
}

// Sign reads a whole message (header and body, CRLF line ends as received
// in DATA) and returns the DKIM-Signature header fields to prepend to it,
// one per matching key, each ending in CRLF. It returns nil, nil when no key
// matches: the message then goes out unsigned.
//
// Which keys sign. The author domain is the domain of the address in the
// RFC 5322 From header field. A key matches when its Domain equals the author
// domain (ASCII case-insensitive) or, with SignSubdomains,
// when the author domain is a subdomain of it. Every matching key signs, so
// an RSA and an Ed25519 key of one domain, or an old and a new key during a
// rollover, produce signatures side by side. The signature's d= is always
// the key's own Domain, because that is where its record is published; for a
// subdomain author this passes DMARC relaxed alignment (RFC 7489 §3.1.1) but
// not strict.
//
// A From with several addresses (RFC 5322 §3.6.2 allows it) is signed by
// every key that matches any of their domains, each key once: each author's
// domain vouches for the message. Whether the submitter may use those
// addresses is for the caller to decide before signing.
//
// A message without a From field, or with one that does not parse as an
// address list, has no author domain and is not signed (nil, nil): no key
// could be chosen for it. Nor is a message whose header section, read as
// queue/message reads every header in postern, ends at a line that is not
// a field or starts with white space (message.AtBody): the inbound server
// puts the empty line there first, so such a message did not come through
// it. Whether to reject such malformed mail is the caller's call. Sign may stop reading
// early when it signs nothing.
//
// Sign returns an error only when a matching key fails to sign or msg fails
// to read; the caller should then answer with a temporary failure and queue
// nothing, rather than send the mail unsigned.
//
// The message is read once and streamed through all signers; only its header
// section is held in memory.
func (s *Signer) Sign(msg io.Reader) ([]byte, error) {
	if s == nil || len(s.keys) == 0 {
		return nil, nil
	}
	br := bufio.NewReaderSize(msg, 32*1024)
	h, err := message.ReadHeader(br, maxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("dkim: reading message header: %w", err)
	}
	if h.Ending == message.AtBody {
		// The section ends at a line that is not a field (or the first
		// line continues no field): go-msgauth would read on to the
		// empty line and hash fields this signer never saw, and a
		// prepended field would absorb a leading continuation. The
		// inbound server puts the empty line there before signing, so
		// only a message that did not come through it gets here; it is
		// not signed.
		return nil, nil
	}
	raw, fields := h.Raw, h.Fields

	keys := s.match(authorDomains(h))
	if len(keys) == 0 {
		return nil, nil
	}
	headerKeys := headerKeysFor(fields)

	signers := make([]*msgauth.Signer, 0, len(keys))
	// Each go-msgauth signer runs a goroutine fed by a pipe; Close ends it
	// on every path.
	defer func() {
		for _, ds := range signers {
			ds.Close()
		}
	}()
	writers := make([]io.Writer, 0, len(keys))
	for _, k := range keys {
		ds, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.Signer,
			HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
			BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
			HeaderKeys:             headerKeys,
		})
		if err != nil {
			return nil, fmt.Errorf("dkim: key d=%s s=%s: %w", k.Domain, k.Selector, err)
		}
		signers = append(signers, ds)
		writers = append(writers, ds)
	}

	w := io.MultiWriter(writers...)
	if _, err := w.Write(raw); err != nil {
		return nil, s.signErr(keys, signers, err)
	}
	if h.Ending == message.AtEOF {
		// The message ended inside its header (no body, so no empty line,
		// or not even a final CRLF). go-msgauth needs the empty line; with
		// it the body is empty, which is what a verifier sees too.
		end := "\r\n"
		if len(raw) > 0 && raw[len(raw)-1] != '\n' {
			end = "\r\n\r\n"
		}
		if _, err := io.WriteString(w, end); err != nil {
			return nil, s.signErr(keys, signers, err)
		}
	} else if _, err := br.WriteTo(w); err != nil {
		return nil, s.signErr(keys, signers, err)
	}

	var out bytes.Buffer
	for i, ds := range signers {
		if err := ds.Close(); err != nil {
			return nil, fmt.Errorf("dkim: signing with d=%s s=%s: %w", keys[i].Domain, keys[i].Selector, err)
		}
		out.WriteString(ds.Signature())
	}
	return out.Bytes(), nil
}

// Signs reports whether Sign would sign a message with the header section
// h: a key matches the domain of a From address. The submission pipeline
// asks it to convert such a message to 7 bits before it is signed.
func (s *Signer) Signs(h *message.Header) bool {
	return s != nil && len(s.keys) > 0 && len(s.match(authorDomains(h))) > 0
}

// signErr explains a failed write: the write error names no key, but when
// a signer failed, its Close error does.
func (s *Signer) signErr(keys []*Key, signers []*msgauth.Signer, werr error) error {
	for i, ds := range signers {
		if err := ds.Close(); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			return fmt.Errorf("dkim: signing with d=%s s=%s: %w", keys[i].Domain, keys[i].Selector, err)
		}
	}
	return fmt.Errorf("dkim: %w", werr)
}

// ForHost returns a Signer for the mail a host sends in its own name, such
// as the bounces from MAILER-DAEMON@host: the keys of host itself and of
// every domain above it, each signing mail from host whether or not its
// sign_subdomains is set. A signature of example.com on mail from
// mail.example.com passes DMARC's relaxed alignment (RFC 7489 §3.1.1), so
// a server need not publish keys for its own name; sign_subdomains guards
// what users may send as, and the server's own notices are not theirs.
// It returns nil, which signs nothing, when no key fits.
func (s *Signer) ForHost(host string) *Signer {
	host, err := normalizeDomain(host)
	if err != nil || s == nil {
		return nil
	}
	var keys []*Key
	for _, k := range s.keys {
		if host == k.Domain || strings.HasSuffix(host, "."+k.Domain) {
			c := *k
			c.SignSubdomains = true
			keys = append(keys, &c)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	return NewSigner(keys)
}

// match returns the keys that sign for any of the author domains, in key
// order, each once.
func (s *Signer) match(domains []string) []*Key {
	var out []*Key
	for _, k := range s.keys {
		for _, d := range domains {
			if d == k.Domain || k.SignSubdomains && strings.HasSuffix(d, "."+k.Domain) {
				out = append(out, k)
				break
			}
		}
	}
	return out
}

// addressParser accepts encoded words in any charset: only the address
// matters here, and net/mail's default decoder rejects charsets it doesn't
// know (koi8-r, windows-1252, ...), which would leave such mail unsigned.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// authorDomains returns the normalized domains of all addresses in all
// From fields, or nil when there is no From or any From fails to parse.
func authorDomains(h *message.Header) []string {
	var out []string
	for _, f := range h.Fields {
		if !strings.EqualFold(f.Name, "From") {
			continue
		}
		addrs, err := addressParser.ParseList(h.Value(f))
		if err != nil {
			return nil
		}
		for _, a := range addrs {
			at := strings.LastIndexByte(a.Address, '@')
			if at < 0 {
				return nil
			}
			d, err := normalizeDomain(a.Address[at+1:])
			if err != nil {
				continue // e.g. a domain literal: no key can match it
			}
			out = append(out, d)
		}
	}
	return out
}

// headerKeysFor builds h= for one message: each field of signedFields
// as many times as it occurs, plus once for oversigned ones.
func headerKeysFor(fields []message.Field) []string {
	count := make(map[string]int, len(fields))
	for _, f := range fields {
		count[strings.ToLower(f.Name)]++
	}
	var keys []string
	for _, name := range signedFields {
		n := count[strings.ToLower(name)]
		if n == 0 && name != "From" {
			continue
		}
		if oversigned[name] {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	return keys
}

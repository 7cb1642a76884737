package bounces

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// The VERP return path: b+TOKEN@DOMAIN, where TOKEN is the lower-case
// base32 (RFC 4648 §6, no padding) of
//
//	queue id (8 bytes) ‖ recipient index (2 bytes, big-endian) ‖ MAC (10 bytes)
//
// and MAC is HMAC-SHA256(secret, "postern-verp-1" ‖ id ‖ index) cut to
// 80 bits: forging one token takes about 2^79 guesses, each a message
// sent to listen.mx. The token is 32 characters and the local part 34,
// well inside RFC 5321 §4.5.3.1.1's 64 octets. Lower case because some
// MTAs fold the case of local parts; base32 decodes either case.
//
// The recipient index is that of the one recipient of the delivery, or
// wholeMessage when a delivery carried several (the queue groups the
// recipients of a domain into one transaction): the report's
// Final-Recipient then says which one.
const (
	localPrefix  = "b+"
	tokenBytes   = 8 + 2 + macBytes
	macBytes     = 10
	wholeMessage = 0xffff
	macContext   = "postern-verp-1"
	// MinSecret is the shortest secret Tokens accepts (128 bits).
	MinSecret = 16
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Errors of Tokens.Parse.
var (
	// ErrNotBounceDomain: the address is not at the bounce domain.
	ErrNotBounceDomain = errors.New("bounces: not an address of the bounce domain")
	// ErrBadToken: at the bounce domain, but not a token this server
	// made (malformed, truncated, or its MAC does not match).
	ErrBadToken = errors.New("bounces: not a valid return-path token")
)

// Tokens makes and checks VERP return paths for one bounce domain.
type Tokens struct {
	secret []byte
	domain string // lower case
}

// NewTokens returns the Tokens of domain with secret (at least
// MinSecret bytes).
func NewTokens(secret []byte, domain string) (*Tokens, error) {
	if len(secret) < MinSecret {
		return nil, fmt.Errorf("bounces: the secret has %d bytes, want at least %d", len(secret), MinSecret)
	}
	if domain == "" {
		return nil, errors.New("bounces: no bounce domain")
	}
	return &Tokens{secret: append([]byte(nil), secret...), domain: strings.ToLower(domain)}, nil
}

// Domain is the bounce domain, in lower case.
func (t *Tokens) Domain() string { return t.domain }

// Token is what a valid return path says.
type Token struct {
	QueueID string // 16 upper-case hex digits, as the queue prints it
	// Rcpt is the index of the recipient in the message's recipients, or
	// -1 when the delivery had several (the report names the recipient).
	Rcpt int
}

// ReturnPath is the return path of a delivery of queue message id to
// its recipients number rcpts (queue.BounceOptions.ReturnPath). It is ""
// for an id that is not 16 hex digits, so that the queue keeps the sender.
func (t *Tokens) ReturnPath(id string, rcpts []int) string {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) != 8 {
		return ""
	}
	idx := wholeMessage
	if len(rcpts) == 1 && rcpts[0] >= 0 && rcpts[0] < wholeMessage {
		idx = rcpts[0]
	}
	buf := binary.BigEndian.AppendUint16(raw, uint16(idx))
	buf = append(buf, t.mac(buf)...)
	return localPrefix + strings.ToLower(b32.EncodeToString(buf)) + "@" + t.domain
}

func (t *Tokens) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(macContext))
	m.Write(payload)
	return m.Sum(nil)[:macBytes]
}

// Parse checks that addr is a return path this server made and says
// what it names. It wraps ErrNotBounceDomain or ErrBadToken otherwise.
func (t *Tokens) Parse(addr string) (Token, error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !strings.EqualFold(strings.TrimSuffix(addr[at+1:], "."), t.domain) {
		return Token{}, fmt.Errorf("%w: %q", ErrNotBounceDomain, addr)
	}
	local := addr[:at]
	if len(local) < len(localPrefix) || !strings.EqualFold(local[:len(localPrefix)], localPrefix) {
		return Token{}, fmt.Errorf("%w: %q has no token", ErrBadToken, addr)
	}
	raw, err := b32.DecodeString(strings.ToUpper(local[len(localPrefix):]))
	if err != nil || len(raw) != tokenBytes {
		return Token{}, fmt.Errorf("%w: %q is malformed", ErrBadToken, addr)
	}
	payload, mac := raw[:tokenBytes-macBytes], raw[tokenBytes-macBytes:]
	if !hmac.Equal(mac, t.mac(payload)) {
		return Token{}, fmt.Errorf("%w: %q fails its MAC", ErrBadToken, addr)
	}
	tok := Token{QueueID: strings.ToUpper(hex.EncodeToString(payload[:8])), Rcpt: int(binary.BigEndian.Uint16(payload[8:]))}
	if tok.Rcpt == wholeMessage {
		tok.Rcpt = -1
	}
	return tok, nil
}

package pickup

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"postern/relay/submit"
)

// A drop file is one line of JSON, the envelope, ending in "\n", then the
// message exactly as the daemon is to receive it (CRLF line ends; the
// pickup fixes any other line end on the way in):
//
//	{"v":1,"from":"app@example.org","rcpts":["bob@example.org"],"notify":["FAILURE"],"ret":"HDRS","envid":"x1"}
//	From: <app@example.org>
//	...
//
// "v" is the version of the format, 1; a reader refuses any other, so
// that a later format is never read as this one. "from" ("" is the null
// sender) and "rcpts" (at least one) are required; "notify", "ret" and
// "envid" are the DSN requests of RFC 3461 (sendmail's -N, -R and -V) and
// may be left out. There is no field for who submitted the drop: that is
// the file's owner, which only the kernel can set.
//
// The reader is strict: one JSON object on the first line, in UTF-8,
// every key spelt exactly as above and given once, nothing else on the
// line, and every value checked as the relay listener checks it
// (addresses with submit.ParseAddress). A drop is written by postern's
// sendmail but read from a directory where every local user can write, so
// whatever else is in it is refused, never guessed at.

// Version is the drop format this package writes and reads.
const Version = 1

// MaxEnvelopeLine bounds the first line: 1 MiB holds some 4,000
// recipients, more than limits.max_recipients would let through.
const MaxEnvelopeLine = 1 << 20

// Drop is the envelope of a dropped message.
type Drop struct {
	From   string   // "" is the null sender
	Rcpts  []string // at least one
	Notify []string // NOTIFY (RFC 3461 §4.1): empty, NEVER, or some of SUCCESS, FAILURE, DELAY
	Ret    string   // RET (§4.3): "", FULL or HDRS
	EnvID  string   // ENVID (§4.4), as given (not xtext-encoded)
}

// Errors of Parse and Validate. Every one of them matches ErrMalformed
// too; the others say which part was wrong.
var (
	ErrMalformed = errors.New("malformed drop")
	ErrEnvelope  = errors.New("envelope line")  // missing, too long, not the JSON object described above
	ErrVersion   = errors.New("format version") // "v" missing or not 1
	ErrSender    = errors.New("sender")
	ErrRcpt      = errors.New("recipient")
	ErrDSN       = errors.New("DSN request")
)

// malformedError is an error of Parse or Validate: its text names the
// part and what is wrong with it ("recipient: <x>: no @"), and it matches
// both ErrMalformed and the part's error.
type malformedError struct {
	part error
	msg  string
}

func (e *malformedError) Error() string { return e.part.Error() + ": " + e.msg }

func (e *malformedError) Is(target error) bool { return target == ErrMalformed || target == e.part }

func malformed(part error, format string, a ...any) error {
	return &malformedError{part, fmt.Sprintf(format, a...)}
}

// wire is the JSON of the envelope line.
type wire struct {
	V      int      `json:"v"`
	From   *string  `json:"from"`
	Rcpts  []string `json:"rcpts"`
	Notify []string `json:"notify,omitempty"`
	Ret    string   `json:"ret,omitempty"`
	EnvID  string   `json:"envid,omitempty"`
}

// wireKeys are the keys of the envelope line, as they must be spelt
// (encoding/json alone would match "FROM" to from, and let a key repeat).
var wireKeys = map[string]bool{"v": true, "from": true, "rcpts": true, "notify": true, "ret": true, "envid": true}

// Validate checks d as Parse checks a drop it reads, and puts its
// addresses in the form the relay listener would (the domain in lower
// case). Its errors match ErrMalformed and one of ErrSender, ErrRcpt and
// ErrDSN.
func (d *Drop) Validate() error {
	if d.From != "" {
		a, err := submit.ParseAddress(d.From)
		if err != nil {
			return malformed(ErrSender, "<%s>: %v", d.From, err)
		}
		d.From = a.String()
	}
	if len(d.Rcpts) == 0 {
		return malformed(ErrRcpt, "no recipients")
	}
	seen := make(map[string]bool, len(d.Rcpts))
	for i, r := range d.Rcpts {
		a, err := submit.ParseAddress(r)
		if err != nil {
			return malformed(ErrRcpt, "<%s>: %v", r, err)
		}
		d.Rcpts[i] = a.String()
		k := strings.ToLower(d.Rcpts[i])
		if seen[k] {
			return malformed(ErrRcpt, "<%s> given twice", r)
		}
		seen[k] = true
	}
	return d.validateDSN()
}

func (d *Drop) validateDSN() error {
	seen := map[string]bool{}
	for _, n := range d.Notify {
		switch n {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
		default:
			return malformed(ErrDSN, "notify %q is not NEVER, SUCCESS, FAILURE or DELAY", n)
		}
		if seen[n] {
			return malformed(ErrDSN, "notify %s given twice", n)
		}
		seen[n] = true
	}
	if seen["NEVER"] && len(d.Notify) > 1 {
		return malformed(ErrDSN, "notify NEVER goes alone")
	}
	switch d.Ret {
	case "", "FULL", "HDRS":
	default:
		return malformed(ErrDSN, "ret %q is not FULL or HDRS", d.Ret)
	}
	// RFC 3461 §4.4: printable ASCII, at most 100 characters.
	if len(d.EnvID) > 100 || strings.IndexFunc(d.EnvID, func(r rune) bool { return r < ' ' || r > '~' }) >= 0 {
		return malformed(ErrDSN, "envid must be printable ASCII, at most 100 characters")
	}
	return nil
}

// Encode validates d and returns the drop file: the envelope line, then
// msg.
func (d *Drop) Encode(msg []byte) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	from := d.From
	line, err := json.Marshal(wire{V: Version, From: &from, Rcpts: d.Rcpts, Notify: d.Notify, Ret: d.Ret, EnvID: d.EnvID})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(line)+1+len(msg))
	out = append(append(line, '\n'), msg...)
	return out, nil
}

// Parse reads the envelope line of a drop from br, which is left at the
// first byte of the message. Its errors match ErrMalformed, or are br's
// read errors.
func Parse(br *bufio.Reader) (*Drop, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(line) {
		return nil, malformed(ErrEnvelope, "not UTF-8")
	}
	if err := checkKeys(line); err != nil {
		return nil, err
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, malformed(ErrEnvelope, "%v", err)
	}
	if dec.InputOffset() != int64(len(line)) {
		return nil, malformed(ErrEnvelope, "more after the JSON object")
	}
	if w.V != Version {
		return nil, malformed(ErrVersion, "version %d, want %d", w.V, Version)
	}
	if w.From == nil {
		return nil, malformed(ErrSender, `no "from"`)
	}
	d := &Drop{From: *w.From, Rcpts: w.Rcpts, Ret: w.Ret, EnvID: w.EnvID}
	if len(w.Notify) > 0 { // "notify":[] is no request, as leaving it out
		d.Notify = w.Notify
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// readLine reads the envelope line without its "\n", refusing one longer
// than MaxEnvelopeLine or without an end.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxEnvelopeLine+1 {
			return nil, malformed(ErrEnvelope, "longer than %d bytes", MaxEnvelopeLine)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return nil, malformed(ErrEnvelope, "no line end in the first %d bytes", len(line))
		default:
			return nil, err
		}
	}
}

// checkKeys walks the envelope line's tokens: a single object whose keys
// are all in wireKeys, exactly spelt, each once.
func checkKeys(line []byte) error {
	if len(line) == 0 || line[0] != '{' {
		return malformed(ErrEnvelope, "does not start with {")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil { // the opening brace
		return malformed(ErrEnvelope, "%v", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return malformed(ErrEnvelope, "%v", err)
		}
		k, _ := t.(string)
		if !wireKeys[k] {
			return malformed(ErrEnvelope, "unknown key %q", k)
		}
		if seen[k] {
			return malformed(ErrEnvelope, "key %q given twice", k)
		}
		seen[k] = true
		var skip json.RawMessage // the value: Decode checks its syntax
		if err := dec.Decode(&skip); err != nil {
			return malformed(ErrEnvelope, "%v", err)
		}
	}
	return nil
}

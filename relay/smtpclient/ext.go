package smtpclient

import (
	"strconv"
	"strings"
)

// Extensions is what a server's EHLO reply offers, as far as postern uses
// it. The zero value is a server that answered HELO: plain SMTP.
type Extensions struct {
	// ESMTP: the server answered EHLO (not only HELO).
	ESMTP bool
	// Pipelining: RFC 2920. Commands may be sent in groups.
	Pipelining bool
	// Chunking: RFC 3030. The content may go as BDAT chunks.
	Chunking bool
	// EightBitMIME: RFC 6152. 8-bit content may be sent (BODY=8BITMIME).
	EightBitMIME bool
	// SMTPUTF8: RFC 6531. UTF-8 addresses and headers may be sent.
	SMTPUTF8 bool
	// DSN: RFC 3461. NOTIFY, ORCPT, RET and ENVID may be sent.
	DSN bool
	// StartTLS: RFC 3207.
	StartTLS bool
	// RequireTLS: RFC 8689; Tx.RequireTLS needs it.
	RequireTLS bool
	// Size: RFC 1870. SizeOffered says SIZE was listed; Size is its limit
	// in octets, 0 when none was given.
	SizeOffered bool
	Size        int64
	// Auth lists the SASL mechanisms of AUTH (RFC 4954), upper case.
	Auth []string
	// RcptMax and MailMax are LIMITS RCPTMAX and MAILMAX (RFC 9422): the
	// recipients a transaction may have, the transactions a connection
	// may carry; 0 when not given.
	RcptMax, MailMax int
}

// SupportsAuth reports whether mech is among the AUTH mechanisms.
func (e Extensions) SupportsAuth(mech string) bool {
	for _, m := range e.Auth {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// ParseEHLO reads the extensions out of an EHLO reply's text: its lines
// joined by "\n", the first being the server's greeting, each other one a
// keyword and its parameters (RFC 5321 §4.1.1.1). Keywords are compared
// without case; unknown keywords and malformed parameters are ignored, as
// a client must (a server's odd SIZE or LIMITS value makes that extension
// absent, never an error).
func ParseEHLO(text string) Extensions {
	e := Extensions{ESMTP: true}
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		fields := strings.Fields(l)
		if len(fields) == 0 {
			continue
		}
		kw, params := strings.ToUpper(fields[0]), fields[1:]
		// Some old servers write "AUTH=LOGIN PLAIN" (before RFC 4954).
		if rest, ok := strings.CutPrefix(kw, "AUTH="); ok {
			kw, params = "AUTH", append([]string{rest}, params...)
		}
		switch kw {
		case "PIPELINING":
			e.Pipelining = true
		case "CHUNKING":
			e.Chunking = true
		case "8BITMIME":
			e.EightBitMIME = true
		case "SMTPUTF8":
			e.SMTPUTF8 = true
		case "DSN":
			e.DSN = true
		case "STARTTLS":
			e.StartTLS = true
		case "REQUIRETLS":
			e.RequireTLS = true
		case "SIZE":
			e.SizeOffered = true
			if len(params) > 0 {
				// RFC 1870: 1*DIGIT; 0 means no fixed limit.
				if n, err := strconv.ParseInt(params[0], 10, 64); err == nil && n > 0 {
					e.Size = n
				}
			}
		case "AUTH":
			for _, m := range params {
				if m != "" && !e.SupportsAuth(m) {
					e.Auth = append(e.Auth, strings.ToUpper(m))
				}
			}
		case "LIMITS":
			for _, p := range params {
				name, val, ok := strings.Cut(p, "=")
				if !ok {
					continue
				}
				// RFC 9422 §3: limit-value is 1 to 9 digits.
				n, err := strconv.Atoi(val)
				if err != nil || len(val) > 9 || n <= 0 || val[0] == '+' || val[0] == '-' {
					continue
				}
				switch strings.ToUpper(name) {
				case "RCPTMAX":
					e.RcptMax = n
				case "MAILMAX":
					e.MailMax = n
				}
			}
		}
	}
	return e
}

package outbound

import (
	"strings"

	"postern/queue"
	"postern/relay/smtpclient"
)

// DSN pass-through (RFC 3461 §6.2.1): a message relayed to a server that
// offers DSN carries the RET and ENVID of its original MAIL FROM and the
// NOTIFY and ORCPT of each recipient; the SMTP client adds them only when
// the server offers DSN. The values were checked when they were received,
// but each is checked again here and left out rather than sent when it
// does not fit: a malformed parameter would get the whole transaction
// refused.

// mailDSN sets the MAIL FROM DSN parameters of d on tx, and reports
// whether every DSN parameter d has could be passed on.
func mailDSN(d *queue.Delivery, tx *smtpclient.Tx) bool {
	full := true
	switch ret := strings.ToUpper(d.Ret); ret {
	case "FULL", "HDRS":
		tx.Ret = ret
	case "":
	default:
		full = false
	}
	if d.EnvID != "" {
		if printableASCII(d.EnvID) && len(d.EnvID) <= 100 { // RFC 3461 §4.4: at most 100 characters
			tx.EnvID = d.EnvID
		} else {
			full = false
		}
	}
	return full
}

// rcptDSN returns recipient i of d with its DSN parameters, and whether
// all of them could be passed on.
func rcptDSN(d *queue.Delivery, i int) (smtpclient.Rcpt, bool) {
	r := smtpclient.Rcpt{Addr: d.Rcpts[i]}
	if i >= len(d.DSN) {
		return r, true
	}
	p := d.DSN[i]
	full := true
	if len(p.Notify) > 0 {
		var n []string
		for _, v := range p.Notify {
			n = append(n, strings.ToUpper(v))
		}
		if validNotify(n) {
			r.Notify = n
		} else {
			full = false
		}
	}
	if p.ORcpt != "" {
		typ, addr, ok := strings.Cut(p.ORcpt, ";")
		switch {
		case !ok || addr == "":
			full = false
		case strings.EqualFold(typ, "rfc822") && printableASCII(addr):
			r.ORcptType, r.ORcptValue = "rfc822", addr
		case strings.EqualFold(typ, "utf-8") && !hasControl(addr):
			r.ORcptType, r.ORcptValue = "utf-8", addr
		default:
			full = false
		}
	}
	return r, full
}

// validNotify applies RFC 3461 §4.1: NEVER alone, or any of SUCCESS,
// FAILURE and DELAY, each at most once.
func validNotify(n []string) bool {
	seen := map[string]bool{}
	for _, v := range n {
		switch v {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
		default:
			return false
		}
		if seen[v] {
			return false
		}
		seen[v] = true
	}
	return len(n) > 0 && (!seen["NEVER"] || len(n) == 1)
}

// printableASCII is what may stand in ENVID and an rfc822 ORCPT.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// hasControl reports whether s has an ASCII control character, which no
// SMTP command may carry.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

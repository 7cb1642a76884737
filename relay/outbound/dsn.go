package outbound

import (
	"strings"

	"github.com/emersion/go-smtp"

	"postern/queue"
)

// DSN pass-through (RFC 3461 §6.2.1): a message relayed to a server that
// offers DSN carries the RET and ENVID of its original MAIL FROM and the
// NOTIFY and ORCPT of each recipient; go-smtp adds them only when the
// server offers DSN. The values were checked when they were received, but
// go-smtp refuses to send a malformed one with a local error that would
// look like a broken connection, so each is checked again here and left
// out rather than sent when it does not fit.

// mailOptions returns the MAIL FROM options for d, and whether every DSN
// parameter d has could be passed on.
func mailOptions(d *queue.Delivery) (*smtp.MailOptions, bool) {
	opts := &smtp.MailOptions{}
	full := true
	switch ret := smtp.DSNReturn(strings.ToUpper(d.Ret)); ret {
	case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
		opts.Return = ret
	case "":
	default:
		full = false
	}
	if d.EnvID != "" {
		if printableASCII(d.EnvID) && len(d.EnvID) <= 100 { // RFC 3461 §4.4: at most 100 characters
			opts.EnvelopeID = d.EnvID
		} else {
			full = false
		}
	}
	return opts, full
}

// rcptOptions returns the RCPT TO options of recipient i of d (nil when
// it has no DSN parameters), and whether all of them could be passed on.
func rcptOptions(d *queue.Delivery, i int) (*smtp.RcptOptions, bool) {
	if i >= len(d.DSN) {
		return nil, true
	}
	p := d.DSN[i]
	opts := &smtp.RcptOptions{}
	full := true
	if len(p.Notify) > 0 {
		var n []smtp.DSNNotify
		for _, v := range p.Notify {
			n = append(n, smtp.DSNNotify(strings.ToUpper(v)))
		}
		if validNotify(n) {
			opts.Notify = n
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
			opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, "utf-8"):
			opts.OriginalRecipientType, opts.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		default:
			full = false
		}
	}
	if len(opts.Notify) == 0 && opts.OriginalRecipient == "" {
		return nil, full
	}
	return opts, full
}

// validNotify applies RFC 3461 §4.1: NEVER alone, or any of SUCCESS,
// FAILURE and DELAY, each at most once.
func validNotify(n []smtp.DSNNotify) bool {
	seen := map[smtp.DSNNotify]bool{}
	for _, v := range n {
		switch v {
		case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
		default:
			return false
		}
		if seen[v] {
			return false
		}
		seen[v] = true
	}
	return len(n) > 0 && (!seen[smtp.DSNNotifyNever] || len(n) == 1)
}

// printableASCII is what go-smtp accepts in ENVID and an rfc822 ORCPT.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

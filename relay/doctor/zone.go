package doctor

import (
	"fmt"
	"net/netip"
	"strings"
)

// The record values the doctor proposes, and Zone publishes for a new
// setup: one place, so that what `postern init` prints is what `postern
// doctor` then finds correct.

// HostSPFValue is the SPF record of the hostname itself: receivers check
// it for bounces, whose envelope sender is empty (RFC 7208 §2.3).
const HostSPFValue = "v=spf1 a -all"

// SPFValue is a sending domain's SPF record allowing term (a:HOSTNAME, or
// ip4:/ip6: terms). ~all marks other senders suspect rather than refusing
// them: a domain new to postern often has other senders nobody listed yet.
func SPFValue(term string) string { return "v=spf1 " + term + " ~all" }

// DMARCValue is the DMARC record to start with (RFC 7489 §6.3): p=none,
// with aggregate reports to the domain's postmaster, to be tightened once
// the reports show the domain's mail passing.
func DMARCValue(dom string) string { return "v=DMARC1; p=none; rua=mailto:postmaster@" + dom }

// TLSRPTValue is a TLS-RPT record (RFC 8460 §3) sending reports to
// tlsrpt@dom.
func TLSRPTValue(dom string) string { return "v=TLSRPTv1; rua=mailto:tlsrpt@" + dom }

func mxPlaceholder(dom string) string {
	return fmt.Sprintf("%s. IN MX 10 <the host that receives mail for %s>.", dom, dom)
}

func addrPlaceholder(h string) string { return h + ". IN A <this host's public IPv4 address>" }

// ZoneOptions describe a new setup.
type ZoneOptions struct {
	Hostname string
	// Addresses are the host's public addresses; none: placeholders.
	Addresses []netip.Addr
	// Domains are the sending domains, in order.
	Domains []string
	// Keys are the DKIM keys, with their records.
	Keys []Key
}

// Zone returns every DNS record a new setup publishes, in zone-file form
// with comments, grouped by the name they are about: the hostname's
// address, reverse DNS (as a comment: it is set by whoever holds the
// address) and SPF; then for each domain SPF, its DKIM keys, DMARC and
// TLS-RPT, and the MX and MTA-STS notes (postern sends; it does not
// receive a domain's mail).
func Zone(o ZoneOptions) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	h := o.Hostname
	line("; %s: the server's own name, which it gives in EHLO", h)
	if len(o.Addresses) == 0 {
		line("; its public address (unknown here: give it with --ip), for example")
		line("; %s", addrPlaceholder(h))
	}
	for _, a := range o.Addresses {
		line("%s", zoneAddr(h, a))
	}
	line("%s", ZoneTXT(h, HostSPFValue))
	line("; reverse DNS: not yours to publish; ask whoever holds the address (ISP, VPS panel) to set")
	if len(o.Addresses) == 0 {
		line("; the PTR record of this host's public address to %s.", h)
	}
	for _, a := range o.Addresses {
		line("; %s. IN PTR %s.", reverseName(a), h)
	}
	for _, dom := range o.Domains {
		line("")
		line("; %s: mail from it", dom)
		line("%s", ZoneTXT(dom, SPFValue("a:"+h)))
		for _, k := range o.Keys {
			if k.Domain == dom {
				line("%s", ZoneTXT(k.Selector+"._domainkey."+dom, k.Record))
			}
		}
		line("%s", ZoneTXT("_dmarc."+dom, DMARCValue(dom)))
		line("%s", ZoneTXT("_smtp._tls."+dom, TLSRPTValue(dom)))
		line("; MX: keep the one of the server that receives mail for %s (postern only sends);", dom)
		line("; without one, replies and bounces are lost and some receivers refuse the mail:")
		line("; %s", mxPlaceholder(dom))
		line("; MTA-STS (optional, RFC 8461) is for mail to %s: published beside its MX.", dom)
	}
	return b.String()
}

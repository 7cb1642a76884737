package doctor

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"postern/relay/spf"
)

// OutgoingAddresses returns the source addresses the kernel picks for the
// Internet, IPv4 and IPv6, as far as the host has a route. A UDP "connect"
// sends nothing; the destinations are documentation addresses (RFC 5737,
// RFC 3849), which the default route covers like any other.
func OutgoingAddresses() []netip.Addr {
	var out []netip.Addr
	for _, dst := range []string{"192.0.2.1:25", "[2001:db8::1]:25"} {
		c, err := net.Dial("udp", dst)
		if err != nil {
			continue
		}
		if a, ok := netip.AddrFromSlice(c.LocalAddr().(*net.UDPAddr).IP); ok {
			out = append(out, a.Unmap())
		}
		c.Close()
	}
	return out
}

// public reports whether a is an address the Internet can see.
func public(a netip.Addr) bool {
	return a.IsGlobalUnicast() && !a.IsPrivate() && !cgnat.Contains(a)
}

// cgnat is the shared address space of carrier-grade NAT (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// host makes the checks about the host itself.
func (d *doctor) host(ctx context.Context) {
	h := d.o.Hostname
	fqdn := strings.Contains(h, ".") && !strings.EqualFold(h, "localhost")
	if fqdn {
		d.add(Finding{Subject: h, Check: "EHLO name", Severity: OK, Summary: "postern greets other servers as " + h})
	} else {
		d.add(Finding{Subject: h, Check: "EHLO name", Severity: Error,
			Summary: fmt.Sprintf("postern greets other servers as %q, which is not a fully qualified name: many refuse that (RFC 5321 §4.1.1.1)", h),
			Fix:     "set hostname in the config to this host's public name, the one its reverse DNS gives"})
	}
	var err error
	if fqdn {
		d.hostAddrs, err = d.lookupAddrs(ctx, h)
	}
	d.outgoing(ctx)
	d.addressRecords(ctx, fqdn, err)
	for _, a := range d.addrs {
		d.reverseDNS(ctx, a)
	}
	d.port25(ctx)
	if fqdn {
		d.heloSPF(ctx)
	}
	d.certificate()
}

// outgoing settles the addresses to check: given, learned, or (behind
// NAT) the hostname's.
func (d *doctor) outgoing(ctx context.Context) {
	h := d.o.Hostname
	if len(d.o.Addresses) > 0 {
		d.addrs = d.o.Addresses
		return
	}
	local := d.o.LocalAddresses()
	for _, a := range local {
		if public(a) {
			d.addrs = append(d.addrs, a)
		}
	}
	if len(d.addrs) > 0 {
		return
	}
	var shown []string
	for _, a := range local {
		shown = append(shown, a.String())
	}
	f := Finding{Subject: h, Check: "address", Severity: Warning,
		Fix: "run doctor with --ip ADDRESS (the address the world sees; your router's status page shows it) to check reverse DNS and SPF for it"}
	if len(shown) == 0 {
		f.Summary = "this host has no route to the Internet, so its outgoing address is unknown"
	} else {
		f.Summary = fmt.Sprintf("this host sends from %s, a private address: it is behind NAT, and the address receivers see is unknown here", strings.Join(shown, ", "))
	}
	if len(d.hostAddrs) > 0 {
		d.addrs = d.hostAddrs
		f.Summary += "; the checks below use " + h + "'s own addresses instead"
	}
	d.add(f)
}

// addressRecords is the hostname's A/AAAA check: receivers look the EHLO
// name up and compare it with the connecting address.
func (d *doctor) addressRecords(ctx context.Context, fqdn bool, err error) {
	h := d.o.Hostname
	if !fqdn {
		return
	}
	switch {
	case err != nil:
		d.add(Finding{Subject: h, Check: "address", Severity: Warning,
			Summary: fmt.Sprintf("looking up %s failed: %v", h, err), Fix: "check delivery.resolver and the DNS of " + h})
	case len(d.hostAddrs) == 0:
		f := Finding{Subject: h, Check: "address", Severity: Error,
			Summary: h + " has no A or AAAA record: receivers check that the name a server greets with exists",
			Fix:     "publish its address"}
		for _, a := range d.addrs {
			f.Records = append(f.Records, zoneAddr(h, a))
		}
		if len(f.Records) == 0 {
			f.Records = []string{addrPlaceholder(h)}
		}
		d.add(f)
	default:
		var missing []netip.Addr
		for _, a := range d.addrs {
			if !slices.Contains(d.hostAddrs, a) {
				missing = append(missing, a)
			}
		}
		if len(missing) == 0 {
			d.add(Finding{Subject: h, Check: "address", Severity: OK, Summary: h + " has " + joinAddrs(d.hostAddrs)})
			return
		}
		f := Finding{Subject: h, Check: "address", Severity: Warning,
			Summary: fmt.Sprintf("%s has %s, not the outgoing %s: receivers compare the greeting name with the connecting address", h, joinAddrs(d.hostAddrs), joinAddrs(missing)),
			Fix:     "point " + h + " at the outgoing address"}
		for _, a := range missing {
			f.Records = append(f.Records, zoneAddr(h, a))
		}
		d.add(f)
	}
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// reverseDNS checks a's PTR record: it must name a host whose own address
// is a (forward-confirmed reverse DNS), and that host should be hostname.
// Gmail and Microsoft refuse mail from addresses without one.
func (d *doctor) reverseDNS(ctx context.Context, a netip.Addr) {
	h := d.o.Hostname
	fix := fmt.Sprintf("ask whoever holds %s (your ISP or VPS provider; often a \"reverse DNS\" field in their panel) to set its PTR record to %s", a, h)
	record := fmt.Sprintf("%s. IN PTR %s.", reverseName(a), h)
	names, err := d.o.Resolver.LookupAddr(ctx, a.String())
	if err != nil && !notFound(err) {
		d.add(Finding{Subject: h, Check: "reverse DNS", Severity: Warning, Summary: fmt.Sprintf("looking up the PTR record of %s failed: %v", a, err)})
		return
	}
	if len(names) == 0 {
		d.add(Finding{Subject: h, Check: "reverse DNS", Severity: Error,
			Summary: fmt.Sprintf("%s has no PTR record: many receivers refuse mail from an address without reverse DNS", a),
			Fix:     fix, Records: []string{record}})
		return
	}
	var confirmed []string
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		back, _ := d.lookupAddrs(ctx, n)
		if slices.Contains(back, a) {
			confirmed = append(confirmed, n)
		}
	}
	switch {
	case slices.Contains(confirmed, strings.ToLower(h)):
		d.add(Finding{Subject: h, Check: "reverse DNS", Severity: OK,
			Summary: fmt.Sprintf("%s is %s, which resolves back to it", a, h)})
	case len(confirmed) > 0:
		d.add(Finding{Subject: h, Check: "reverse DNS", Severity: Warning,
			Summary: fmt.Sprintf("%s is %s (which resolves back to it), not %s: receivers expect the greeting name and the reverse DNS to agree", a, confirmed[0], h),
			Fix:     fmt.Sprintf("set hostname to %s, or %s", confirmed[0], fix), Records: []string{record}})
	default:
		f := Finding{Subject: h, Check: "reverse DNS", Severity: Error,
			Summary: fmt.Sprintf("%s is %s, which does not resolve back to %s: the reverse DNS is not forward-confirmed", a, strings.TrimSuffix(names[0], "."), a),
			Fix:     fix, Records: []string{record}}
		if !slices.Contains(d.hostAddrs, a) {
			f.Fix += ", and publish " + h + "'s address"
			f.Records = append(f.Records, zoneAddr(h, a))
		}
		d.add(f)
	}
}

// probeTimeout bounds each step of the port 25 probe.
const probeTimeout = 10 * time.Second

// port25 tries the MX of the probe domain, when one is named: many
// residential ISPs block outbound port 25.
func (d *doctor) port25(ctx context.Context) {
	h := d.o.Hostname
	switch {
	case d.o.Offline:
		d.add(Finding{Subject: h, Check: "port 25", Severity: Info, Summary: "not probed (--offline)"})
		return
	case d.o.ProbeDomain == "":
		d.add(Finding{Subject: h, Check: "port 25", Severity: Info,
			Summary: "not probed: name a domain whose mail server to try, with --probe DOMAIN (for example --probe gmail.com)"})
		return
	}
	mxs, err := d.o.Resolver.LookupMX(ctx, d.o.ProbeDomain)
	if err != nil || len(mxs) == 0 || strings.TrimSuffix(mxs[0].Host, ".") == "" {
		d.add(Finding{Subject: h, Check: "port 25", Severity: Warning,
			Summary: fmt.Sprintf("not probed: %s has no usable MX record (%v)", d.o.ProbeDomain, err)})
		return
	}
	sort.Slice(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	mx := strings.TrimSuffix(mxs[0].Host, ".")
	addr := net.JoinHostPort(mx, strconv.Itoa(d.o.ProbePort))
	greeting, err := probe(ctx, d.o.Resolver, mx, d.o.ProbePort)
	if err != nil {
		d.add(Finding{Subject: h, Check: "port 25", Severity: Error,
			Summary: fmt.Sprintf("could not reach %s: %v", addr, err),
			Fix:     "many residential ISPs block outbound port 25: ask yours to open it, or send through a smarthost (delivery.smarthosts, on port 587)"})
		return
	}
	d.add(Finding{Subject: h, Check: "port 25", Severity: OK, Summary: fmt.Sprintf("%s answered: %s", addr, greeting)})
}

// probe connects to host:port, reads the greeting and says QUIT.
func probe(ctx context.Context, r interface {
	LookupNetIP(context.Context, string, string) ([]netip.Addr, error)
}, host string, port int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("no address for %s: %v", host, err)
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(ips[0].Unmap(), uint16(port)).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("connected, but no greeting: %v", err)
	}
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "220") {
		return "", fmt.Errorf("connected, but the greeting is %q", line)
	}
	fmt.Fprint(c, "QUIT\r\n")
	return line, nil
}

// heloSPF checks the SPF of the hostname itself, which receivers check
// for mail with an empty envelope sender (the bounces postern sends) and
// some for all mail (RFC 7208 §2.3).
func (d *doctor) heloSPF(ctx context.Context) {
	h := d.o.Hostname
	rec := ZoneTXT(h, HostSPFValue)
	for _, a := range d.addrs {
		out := spf.CheckHost(ctx, d.o.Resolver, a, h, "postmaster@"+h, h)
		switch out.Result {
		case spf.ResultPass:
			continue
		case spf.ResultNone:
			d.add(Finding{Subject: h, Check: "SPF (HELO)", Severity: Info,
				Summary: h + " has no SPF record; receivers check it for bounces, whose envelope sender is empty",
				Fix:     "publish one that allows the host itself", Records: []string{rec}})
			return
		case spf.ResultTempError:
			d.add(Finding{Subject: h, Check: "SPF (HELO)", Severity: Warning, Summary: "DNS failed: " + out.Err.Error()})
			return
		default:
			d.add(Finding{Subject: h, Check: "SPF (HELO)", Severity: Warning,
				Summary: fmt.Sprintf("%s's SPF gives %s for %s%s", h, out.Result, a, because(out)),
				Fix:     "let the host send for its own name", Records: []string{rec}})
			return
		}
	}
	if len(d.addrs) > 0 {
		d.add(Finding{Subject: h, Check: "SPF (HELO)", Severity: OK, Summary: "pass for " + joinAddrs(d.addrs)})
	}
}

// because says what decided an SPF outcome, for a summary.
func because(o spf.Outcome) string {
	switch {
	case o.Err != nil:
		return ": " + o.Err.Error()
	case o.Matched != "":
		return " (decided by " + o.Matched + ")"
	}
	return " (no term matched)"
}

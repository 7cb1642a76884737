package tlspolicy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// The DNS this room needs: TXT records (MTA-STS, TLSRPT), addresses (the
// policy web server, a report's https: destination), and, for DANE, MX,
// address and TLSA answers together with whether the resolver validated
// them.
//
// DNSSEC is not validated here: the resolver does it, and its AD bit is
// trusted only when Options.TrustAD says the path to it cannot be tampered
// with (a validating resolver on loopback, as Postfix's
// smtp_dns_support_level = dnssec assumes). Each question is asked with
// the DO bit (RFC 3225) and the AD bit set (RFC 6840 §5.7), so that the
// resolver validates and says so. A validating resolver answers SERVFAIL
// for data whose signatures do not verify ("bogus", RFC 4035 §5.5).

// dnsTimeout bounds one exchange with one server. RFC 1123 §6.1.3.3 asks
// resolvers to retry for "at least" a few seconds; a stub talking to a
// nearby recursive resolver that has not answered in 5s will rarely
// answer at all, and the queue retries the delivery later.
const dnsTimeout = 5 * time.Second

// resolvConf is where the system's DNS servers are listed.
const resolvConf = "/etc/resolv.conf"

var (
	// errNXDomain: the name does not exist.
	errNXDomain = errors.New("NXDOMAIN")
	// ErrBogus means the validating resolver refused the answer
	// (SERVFAIL): with DANE on, the host it is about is not used (RFC
	// 7672 §2.1.1).
	ErrBogus = errors.New("DNS answer failed (SERVFAIL: bogus or unreachable)")
)

// answer is one DNS answer: its records of the asked type, and whether
// the resolver validated it (AD, when trusted).
type answer struct {
	rrs    []dns.RR
	secure bool
	nx     bool // NXDOMAIN
}

// dnsClient asks one server, or those of /etc/resolv.conf.
type dnsClient struct {
	server  string // "host:port"; "" reads resolvConf
	trustAD bool
}

// Servers lists the DNS servers to ask, in order: server when it is set
// ("IP:port"), else those of /etc/resolv.conf, read at each call as the C
// library does, so that edits apply without a restart.
func Servers(server string) ([]string, error) {
	if server != "" {
		return []string{server}, nil
	}
	cfg, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no nameserver in %s", resolvConf)
	}
	return out, nil
}

// Ask asks the servers of Servers(server) in turn for name's records of
// qtype, over UDP (TCP when truncated), and returns the first NOERROR or
// NXDOMAIN response. Other rcodes and network errors make it try the next
// server, and the last of them is returned; SERVFAIL wraps ErrBogus. With
// dnssec the question carries the DO and AD bits (RFC 3225, RFC 6840
// §5.7), so that a validating resolver says whether it validated.
//
// It is the one DNS exchange of delivery: relay/outbound's MX and address
// lookups (cached there) and this room's DNSSEC-aware ones both use it.
func Ask(ctx context.Context, server, name string, qtype uint16, dnssec bool) (*dns.Msg, error) {
	servers, err := Servers(server)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(strings.ToLower(name)), qtype)
	m.SetEdns0(1232, dnssec) // the DNS Flag Day 2020 size: no fragmented UDP
	m.AuthenticatedData = dnssec
	var last error
	for _, s := range servers {
		resp, err := exchange(ctx, m, s, "udp")
		if err == nil && resp.Truncated {
			resp, err = exchange(ctx, m, s, "tcp")
		}
		switch {
		case err != nil:
			last = err
		case resp.Rcode == dns.RcodeSuccess, resp.Rcode == dns.RcodeNameError:
			return resp, nil
		case resp.Rcode == dns.RcodeServerFailure:
			last = fmt.Errorf("%w: %s %s from %s", ErrBogus, dns.TypeToString[qtype], name, s)
		default:
			last = fmt.Errorf("%s %s: %s from %s", dns.TypeToString[qtype], name, dns.RcodeToString[resp.Rcode], s)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, last
}

// query asks name's records of qtype (Ask, with DNSSEC). NOERROR (records
// or none) and NXDOMAIN are answers; SERVFAIL from every server is
// ErrBogus (with DANE, the RFC treats an unvalidatable answer like a
// failed one); other failures are errors.
func (c *dnsClient) query(ctx context.Context, name string, qtype uint16) (answer, error) {
	resp, err := Ask(ctx, c.server, name, qtype, true)
	if err != nil {
		return answer{}, err
	}
	a := answer{secure: c.trustAD && resp.AuthenticatedData, nx: resp.Rcode == dns.RcodeNameError}
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			a.rrs = append(a.rrs, rr)
		}
	}
	return a, nil
}

// exchange does one DNS exchange; unlike dns.Client.ExchangeContext it
// stops at once when ctx is canceled, by closing the socket.
func exchange(ctx context.Context, m *dns.Msg, server, network string) (*dns.Msg, error) {
	cl := &dns.Client{Net: network, Timeout: dnsTimeout}
	conn, err := cl.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return resp, err
}

// txt returns name's TXT records, each one string (its character-strings
// joined, RFC 7208 §3.3 style, as RFC 8461 §3.1 asks). A name that does
// not exist has none.
func (c *dnsClient) txt(ctx context.Context, name string) ([]string, error) {
	a, err := c.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range a.rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// mx returns the domain's MX host names (without the final dot, the
// null MX "." left out) and whether the answer was secure. A domain
// without MX records has the implicit MX, itself (RFC 5321 §5.1).
func (c *dnsClient) mx(ctx context.Context, domain string) ([]string, bool, error) {
	a, err := c.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, false, err
	}
	if a.nx {
		return nil, a.secure, errNXDomain
	}
	var hosts []string
	for _, rr := range a.rrs {
		if h := strings.TrimSuffix(rr.(*dns.MX).Mx, "."); h != "" {
			hosts = append(hosts, strings.ToLower(h))
		}
	}
	if len(a.rrs) == 0 {
		hosts = []string{strings.ToLower(strings.TrimSuffix(domain, "."))}
	}
	return hosts, a.secure, nil
}

// addrs returns host's IPv4 then IPv6 addresses, and whether every answer
// that gave addresses was secure (RFC 7672 §2.2.2: TLSA records are asked
// only for a host whose address records are secure).
func (c *dnsClient) addrs(ctx context.Context, host string) ([]netip.Addr, bool, error) {
	var out []netip.Addr
	secure := true
	var errs []error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		a, err := c.query(ctx, host, qt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range a.rrs {
			var ip netip.Addr
			switch rr := rr.(type) {
			case *dns.A:
				ip, _ = netip.AddrFromSlice(rr.A.To4())
			case *dns.AAAA:
				ip, _ = netip.AddrFromSlice(rr.AAAA)
			}
			if ip.IsValid() {
				out = append(out, ip)
			}
		}
		if len(a.rrs) > 0 {
			secure = secure && a.secure
		}
	}
	if len(errs) > 0 {
		// One bogus family makes the host doubtful: RFC 7672 §2.2.2
		// treats a failed address lookup as a reason not to use it.
		return out, false, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, false, fmt.Errorf("no A or AAAA record for %s", host)
	}
	return out, secure, nil
}

// tlsa returns the TLSA records at _<port>._tcp.<host> and whether the
// answer was secure. No records (NXDOMAIN or NODATA) is not an error.
func (c *dnsClient) tlsa(ctx context.Context, port int, host string) ([]TLSA, bool, error) {
	a, err := c.query(ctx, fmt.Sprintf("_%d._tcp.%s", port, host), dns.TypeTLSA)
	if err != nil {
		return nil, false, err
	}
	var out []TLSA
	for _, rr := range a.rrs {
		t := rr.(*dns.TLSA)
		data, err := hex.DecodeString(t.Certificate)
		if err != nil {
			continue // unusable, as an unknown parameter would be
		}
		out = append(out, TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data})
	}
	return out, a.secure, nil
}

// dialer dials host:port at the addresses the DNS gives for host, in
// turn: the policy web server and report destinations are reached through
// the same resolver as the MX hosts, not the system's.
func (c *dnsClient) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
	}
	ips, _, err := c.addrs(ctx, host)
	if len(ips) == 0 {
		if err == nil {
			err = fmt.Errorf("no address for %s", host)
		}
		return nil, err
	}
	var last error
	for _, ip := range ips {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		last = err
	}
	return nil, last
}

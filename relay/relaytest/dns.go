package relaytest

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Zone is the content of a test DNS server: records by owner name. Names
// are case-insensitive and may be written with or without the final dot.
type Zone map[string]Records

// Records are the records of one name. A name present in the Zone exists
// (NOERROR, possibly with no data of the asked type); a name absent from it
// does not (NXDOMAIN).
type Records struct {
	MX   []MX
	A    []string // IPv4 addresses, "127.0.0.2"
	AAAA []string // IPv6 addresses, "::1"
	TXT  []string // each string is one TXT record (split into 255-byte chunks)
	// PTR are the names of a reverse name ("10.2.0.192.in-addr.arpa"):
	// see SetPTR.
	PTR []string
	// Rcode, when not zero (dns.RcodeSuccess), is returned instead of any
	// data: dns.RcodeServerFailure, dns.RcodeRefused...
	Rcode int
}

// MX is one MX record. Host "." is the null MX of RFC 7505.
type MX struct {
	Pref uint16
	Host string
}

// DNS is an in-process DNS server on 127.0.0.1, answering over UDP and TCP
// on the same port. It is safe to change its records while it serves.
//
// Its answers carry TTL 0 unless SetTTL says otherwise, so that a caching
// resolver asks again at every lookup and tests may change records between
// deliveries. Negative answers (NXDOMAIN, and NOERROR without data) carry
// an SOA record in the authority section whose TTL and MINIMUM are that
// same TTL, as RFC 2308 §3 asks of a real server.
type DNS struct {
	udp, tcp *dns.Server
	addr     string

	mu      sync.Mutex
	zone    map[string]Records
	queries int
	ttl     uint32
}

// NewDNS starts a DNS server serving zone and stops it when the test ends.
func NewDNS(t testing.TB, zone Zone) *DNS {
	t.Helper()
	d, err := StartDNS(zone)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

// StartDNS starts a DNS server serving zone; the caller must Close it.
func StartDNS(zone Zone) (*DNS, error) {
	d := &DNS{zone: make(map[string]Records)}
	for name, rr := range zone {
		d.zone[canon(name)] = rr
	}
	pc, l, err := listenUDPTCP()
	if err != nil {
		return nil, err
	}
	d.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(d.serve)
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	d.udp = &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: notify}
	d.tcp = &dns.Server{Listener: l, Handler: h, NotifyStartedFunc: notify}
	go d.udp.ActivateAndServe()
	go d.tcp.ActivateAndServe()
	// Shutdown fails on a server that has not started yet: wait for both.
	<-started
	<-started
	return d, nil
}

// listenUDPTCP binds UDP and TCP on one free port of 127.0.0.1.
func listenUDPTCP() (net.PacketConn, net.Listener, error) {
	var last error
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		last = err
	}
	return nil, nil, fmt.Errorf("no port free for UDP and TCP: %w", last)
}

// Addr is the server's "host:port", for a resolver setting.
func (d *DNS) Addr() string { return d.addr }

// Close stops the server. It may be called more than once.
func (d *DNS) Close() {
	d.udp.Shutdown()
	d.tcp.Shutdown()
}

// Queries is the number of questions answered so far.
func (d *DNS) Queries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries
}

// SetTTL sets the TTL, in seconds, of the answers given from now on,
// negative ones included (see DNS). A benchmark sets a realistic one
// (300, say) so that a caching resolver behaves as it would against a real
// zone; 0, the default, means "do not cache".
func (d *DNS) SetTTL(seconds uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ttl = seconds
}

// Set replaces all records of name.
func (d *DNS) Set(name string, rr Records) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.zone[canon(name)] = rr
}

// Delete removes name: it answers NXDOMAIN from now on.
func (d *DNS) Delete(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.zone, canon(name))
}

func (d *DNS) update(name string, f func(*Records)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rr := d.zone[canon(name)]
	f(&rr)
	d.zone[canon(name)] = rr
}

// SetMX replaces the MX records of name (creating the name if needed).
func (d *DNS) SetMX(name string, mx ...MX) {
	d.update(name, func(r *Records) { r.MX = mx })
}

// AddMX adds MX records to name.
func (d *DNS) AddMX(name string, mx ...MX) {
	d.update(name, func(r *Records) { r.MX = append(append([]MX(nil), r.MX...), mx...) })
}

// Records returns a copy of name's records, and whether name exists.
func (d *DNS) Records(name string) (Records, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rr, ok := d.zone[canon(name)]
	return rr, ok
}

// SetA replaces the A records of name.
func (d *DNS) SetA(name string, ips ...string) {
	d.update(name, func(r *Records) { r.A = ips })
}

// SetAAAA replaces the AAAA records of name.
func (d *DNS) SetAAAA(name string, ips ...string) {
	d.update(name, func(r *Records) { r.AAAA = ips })
}

// SetTXT replaces the TXT records of name.
func (d *DNS) SetTXT(name string, txt ...string) {
	d.update(name, func(r *Records) { r.TXT = txt })
}

// SetPTR gives the address ip (IPv4 or IPv6) the reverse DNS names, under
// its in-addr.arpa or ip6.arpa name.
func (d *DNS) SetPTR(ip string, names ...string) {
	rev, err := dns.ReverseAddr(ip)
	if err != nil {
		panic("relaytest: SetPTR: " + err.Error())
	}
	d.update(rev, func(r *Records) { r.PTR = names })
}

// SetRcode makes every question about name answer rcode (for instance
// dns.RcodeServerFailure); dns.RcodeSuccess restores normal answers.
func (d *DNS) SetRcode(name string, rcode int) {
	d.update(name, func(r *Records) { r.Rcode = rcode })
}

// SetServFail makes every question about name answer SERVFAIL.
func (d *DNS) SetServFail(name string) { d.SetRcode(name, dns.RcodeServerFailure) }

func canon(name string) string { return dns.Fqdn(strings.ToLower(name)) }

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]

	d.mu.Lock()
	d.queries++
	rr, ok := d.zone[canon(q.Name)]
	ttl := d.ttl
	d.mu.Unlock()

	switch {
	case !ok:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa(q.Name, ttl)}
	case rr.Rcode != dns.RcodeSuccess:
		m.Rcode = rr.Rcode
	default:
		m.Answer = answers(q, rr, ttl)
		if len(m.Answer) == 0 {
			m.Ns = []dns.RR{soa(q.Name, ttl)}
		}
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// soa is the SOA record of a negative answer about name (RFC 2308 §3):
// resolvers cache the negative answer for the lesser of its TTL and its
// MINIMUM (§5). The test server has no zones, so the owner is name's last
// label ("test." for "a.example.test."), standing for the zone's apex.
func soa(name string, ttl uint32) dns.RR {
	apex := ""
	if labels := dns.SplitDomainName(name); len(labels) > 0 {
		apex = labels[len(labels)-1]
	}
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: dns.Fqdn(apex), Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:  dns.Fqdn("ns." + apex), Mbox: dns.Fqdn("hostmaster." + apex),
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl,
	}
}

func answers(q dns.Question, rr Records, ttl uint32) []dns.RR {
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	var out []dns.RR
	switch q.Qtype {
	case dns.TypeMX:
		for _, mx := range rr.MX {
			out = append(out, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: mx.Pref, Mx: dns.Fqdn(mx.Host)})
		}
	case dns.TypeA:
		for _, s := range rr.A {
			if ip := net.ParseIP(s).To4(); ip != nil {
				out = append(out, &dns.A{Hdr: hdr(dns.TypeA), A: ip})
			}
		}
	case dns.TypeAAAA:
		for _, s := range rr.AAAA {
			if ip := net.ParseIP(s); ip != nil && ip.To4() == nil {
				out = append(out, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip})
			}
		}
	case dns.TypeTXT:
		for _, s := range rr.TXT {
			out = append(out, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: chunk(s, 255)})
		}
	case dns.TypePTR:
		for _, n := range rr.PTR {
			out = append(out, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: dns.Fqdn(n)})
		}
	}
	return out
}

// chunk splits s into the at most n-byte character-strings of a TXT record
// (RFC 1035 §3.3.14), as DKIM key records longer than 255 bytes need.
func chunk(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

// ParseZone reads records in zone-file form (RFC 1035 §5: what postern
// init and doctor print for people to publish) into a Zone: A, AAAA, MX,
// TXT (its strings joined) and PTR. Names are taken as written, relative
// ones under the root. A record of another type is an error: the caller
// would not get what it published.
func ParseZone(r io.Reader) (Zone, error) {
	zone := Zone{}
	p := dns.NewZoneParser(r, ".", "zone")
	for rr, ok := p.Next(); ok; rr, ok = p.Next() {
		name := strings.ToLower(strings.TrimSuffix(rr.Header().Name, "."))
		recs := zone[name]
		switch rr := rr.(type) {
		case *dns.A:
			recs.A = append(recs.A, rr.A.String())
		case *dns.AAAA:
			recs.AAAA = append(recs.AAAA, rr.AAAA.String())
		case *dns.MX:
			recs.MX = append(recs.MX, MX{Pref: rr.Preference, Host: rr.Mx})
		case *dns.TXT:
			recs.TXT = append(recs.TXT, strings.Join(rr.Txt, ""))
		case *dns.PTR:
			recs.PTR = append(recs.PTR, rr.Ptr)
		default:
			return nil, fmt.Errorf("relaytest: ParseZone: %s records are not served: %s", dns.TypeToString[rr.Header().Rrtype], rr)
		}
		zone[name] = recs
	}
	return zone, p.Err()
}

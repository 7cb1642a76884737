package outbound

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"postern/queue"
)

// Path is where a route sends a delivery: straight to the recipients' MX
// hosts, or through smarthosts in failover order. Exactly one of MX and
// Smarthosts is set.
type Path struct {
	MX         *MX
	Smarthosts Failover
}

func (p Path) String() string {
	if p.MX != nil {
		return "mx"
	}
	return "smarthost " + strings.Join(p.Smarthosts.Names(), ", ")
}

func (p Path) valid() bool { return (p.MX != nil) != (len(p.Smarthosts) > 0) }

func (p Path) deliver(ctx context.Context, d *queue.Delivery, route string) []queue.Result {
	if p.MX != nil {
		return p.MX.deliver(ctx, d, route)
	}
	return p.Smarthosts.deliver(ctx, d, route)
}

// Route is one routing rule.
type Route struct {
	// Name identifies the rule in logs ("routes[0]").
	Name string
	// The rule matches a delivery when the recipients' domain is in
	// RecipientDomains (if set) and the sender's domain is in
	// SenderDomains (if set). An entry ".example.test" matches
	// example.test and every domain below it; other entries match exactly.
	// Comparisons ignore case. The null sender has no domain: it matches
	// no rule with SenderDomains.
	RecipientDomains []string
	SenderDomains    []string
	// Via is where matching deliveries go.
	Via Path
	// Fallback, when set, takes over from Via once a delivery's attempt
	// number exceeds FallbackAfter: "after N failed direct attempts, go
	// through the smarthost".
	FallbackAfter int
	Fallback      Path
}

// Router picks a Path per delivery: the first Route that matches, else the
// default. It implements queue.Deliverer. The queue groups recipients by
// domain, so a delivery has one recipient domain and one sender, and the
// whole delivery takes one route.
//
// Every "delivery attempt" log line carries the field route: the rule's
// name, with ".fallback" when its fallback was taken, or "default_route".
// Result.RemoteMTA tells the server: an MX host name, or "host (smarthost
// NAME)" (see Smarthost.RemoteMTA).
//
// It is also the queue's Gate: Admit asks the Shaper of the path a
// delivery would take (an MX deliverer's, for its destinations; for
// smarthosts, only their connection cap).
type Router struct {
	routes []Route
	def    Path
	shaper *Shaper
}

var (
	_ queue.Deliverer = (*Router)(nil)
	_ queue.Gate      = (*Router)(nil)
)

// DefaultRouteName is the route name of deliveries no rule matched.
const DefaultRouteName = "default_route"

// NewRouter returns a Router over routes, in order, with def for the
// deliveries none of them matches.
func NewRouter(routes []Route, def Path) (*Router, error) {
	var errs []error
	if !def.valid() {
		errs = append(errs, fmt.Errorf("%s: needs mx or smarthosts, not both", DefaultRouteName))
	}
	for _, r := range routes {
		if !r.Via.valid() {
			errs = append(errs, fmt.Errorf("%s: via needs mx or smarthosts, not both", r.Name))
		}
		if r.FallbackAfter > 0 && !r.Fallback.valid() {
			errs = append(errs, fmt.Errorf("%s: fallback_after without a fallback", r.Name))
		}
		if len(r.RecipientDomains) == 0 && len(r.SenderDomains) == 0 {
			errs = append(errs, fmt.Errorf("%s: matches nothing: set recipient or sender domains", r.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	rt := &Router{routes: routes, def: def}
	for _, p := range append([]Path{def}, rt.paths()...) {
		if p.MX != nil {
			rt.shaper = p.MX.shaper
			break
		}
	}
	if rt.shaper == nil { // smarthosts only: their caps still need a home
		rt.shaper = NewShaper(Shaping{})
	}
	return rt, nil
}

// Choose returns the name of the route d takes and its path.
func (r *Router) Choose(d *queue.Delivery) (string, Path) {
	from := ""
	if i := strings.LastIndexByte(d.From, '@'); i >= 0 {
		from = d.From[i+1:]
	}
	rcpt := d.Domain
	if rcpt == "" && len(d.Rcpts) > 0 {
		if i := strings.LastIndexByte(d.Rcpts[0], '@'); i >= 0 {
			rcpt = d.Rcpts[0][i+1:]
		}
	}
	return r.choose(rcpt, from, d.Attempt)
}

// choose is Choose by recipient domain, sender domain and attempt number.
func (r *Router) choose(rcpt, from string, attempt int) (string, Path) {
	for _, rt := range r.routes {
		if len(rt.RecipientDomains) > 0 && !MatchDomain(rt.RecipientDomains, rcpt) {
			continue
		}
		if len(rt.SenderDomains) > 0 && !MatchDomain(rt.SenderDomains, from) {
			continue
		}
		if rt.FallbackAfter > 0 && attempt > rt.FallbackAfter {
			return rt.Name + ".fallback", rt.Fallback
		}
		return rt.Name, rt.Via
	}
	return DefaultRouteName, r.def
}

// Admit is queue.Gate: the path d would take decides. Direct delivery is
// shaped by the MX deliverer's Shaper; a smarthost list is held to the
// connection cap of its first smarthost, so that its pool never refuses
// one.
func (r *Router) Admit(d queue.Dest, now time.Time) queue.Admission {
	_, p := r.choose(d.Domain, d.Sender, d.Attempt)
	if p.MX != nil {
		return p.MX.Admit(d, now)
	}
	if len(p.Smarthosts) == 0 {
		return queue.Admission{Release: func() {}} // Deliver reports the misconfiguration
	}
	return r.shaper.admitSmarthost("smarthost:"+strings.Join(p.Smarthosts.Names(), ","),
		p.Smarthosts[0].opts.MaxConnsPerHost, now)
}

// Destinations describes the state of every destination, provider and
// smarthost list (see Shaper.Destinations).
func (r *Router) Destinations() []queue.Destination { return r.shaper.Destinations() }

// Deliver makes one delivery attempt on the path Choose picks. See
// queue.Deliverer for the contract.
func (r *Router) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	name, p := r.Choose(d)
	return p.deliver(ctx, d, name)
}

// Close closes the connections kept open for reuse by every path of the
// router (see MX.Close). Call it once the queue is closed.
func (r *Router) Close() error {
	done := map[any]bool{}
	for _, p := range append([]Path{r.def}, r.paths()...) {
		if p.MX != nil && !done[p.MX] {
			done[p.MX] = true
			p.MX.Close()
		}
		for _, h := range p.Smarthosts {
			if !done[h] {
				done[h] = true
				h.Close()
			}
		}
	}
	return nil
}

func (r *Router) paths() []Path {
	var ps []Path
	for _, rt := range r.routes {
		ps = append(ps, rt.Via, rt.Fallback)
	}
	return ps
}

// MatchDomain reports whether domain is in list, where an entry
// ".example.test" stands for example.test and all its subdomains.
// Case and a final dot are ignored; the empty domain matches nothing.
func MatchDomain(list []string, domain string) bool {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" {
		return false
	}
	for _, e := range list {
		e = strings.ToLower(strings.TrimSuffix(e, "."))
		if base, ok := strings.CutPrefix(e, "."); ok {
			if base != "" && (domain == base || strings.HasSuffix(domain, e)) {
				return true
			}
			continue
		}
		if domain == e {
			return true
		}
	}
	return false
}

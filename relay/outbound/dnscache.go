package outbound

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Bounds of the DNS cache. A delivery asks MX, A and AAAA, and a busy
// queue asks them again for every message to the same domain; a CPU
// profile of delivery spent a third of its time there.
const (
	// dnsCacheMaxTTL caps how long a positive answer is kept, whatever
	// its TTL: a record changed by its owner is seen within 5 minutes,
	// which is less than the queue's first retry.
	dnsCacheMaxTTL = 5 * time.Minute
	// dnsCacheMaxNegTTL caps how long NXDOMAIN and NODATA are kept (RFC
	// 2308 §5 allows up to the SOA's MINIMUM): a domain that has just been
	// created, or given its MX, gets mail within a minute.
	dnsCacheMaxNegTTL = time.Minute
	// dnsCacheSize bounds the entries kept. One domain takes about three
	// (MX, A, AAAA); beyond 10,000 the oldest entry goes.
	dnsCacheSize = 10000
)

// dnsKey is one question: a lower-case, fully qualified name and a type.
type dnsKey struct {
	name  string
	qtype uint16
}

// dnsEntry is a cached answer: the records of a NOERROR answer (none for
// NODATA) or errNXDomain.
type dnsEntry struct {
	answer  []dns.RR
	err     error
	expires time.Time
	elem    *list.Element // in dnsCache.order
}

// dnsFlight is a question being asked on behalf of waiters callers.
type dnsFlight struct {
	done    chan struct{} // closed once answer and err are set
	answer  []dns.RR
	err     error
	waiters int // guarded by dnsCache.mu
	cancel  context.CancelFunc
}

// dnsFetch asks a question of the DNS. It returns the answer, how long it
// may be cached (0: not at all), and errNXDomain or another error. Only
// answers and errNXDomain are ever cached, whatever the TTL returned with
// another error.
type dnsFetch func(ctx context.Context) (answer []dns.RR, ttl time.Duration, err error)

// dnsCache keeps DNS answers for their TTL and makes concurrent callers
// asking the same question share one query. Its zero value is ready to
// use; it is safe for concurrent use.
//
// What is kept is decided by the dnsFetch (see answerTTL): answers and
// NXDOMAIN with a TTL, never SERVFAIL, REFUSED, timeouts or network
// errors, which stay temporary and are asked afresh at the next lookup.
type dnsCache struct {
	now  func() time.Time // nil: time.Now; tests replace it
	size int              // 0: dnsCacheSize

	mu      sync.Mutex
	entries map[dnsKey]*dnsEntry
	order   list.List // of dnsKey, oldest insertion first
	flights map[dnsKey]*dnsFlight
}

func (c *dnsCache) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// get returns the cached answer to k, or asks it with fetch. A caller
// finding the question already being asked waits for that query instead
// of making its own.
//
// fetch runs in a goroutine of its own, with a context that keeps ctx's
// values but not its cancellation: the caller that started the query may
// give up (its delivery canceled) while others still wait for it. The
// query is canceled when every waiter has given up. The records returned
// are shared: callers must not modify them.
func (c *dnsCache) get(ctx context.Context, k dnsKey, fetch dnsFetch) ([]dns.RR, error) {
	c.mu.Lock()
	if e, ok := c.entries[k]; ok {
		if c.clock().Before(e.expires) {
			c.mu.Unlock()
			return e.answer, e.err
		}
		c.remove(k, e)
	}
	f := c.flights[k]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &dnsFlight{done: make(chan struct{}), cancel: cancel}
		if c.flights == nil {
			c.flights = make(map[dnsKey]*dnsFlight)
		}
		c.flights[k] = f
		go c.run(fctx, k, f, fetch)
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.answer, f.err
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		// The last one out cancels the query, and takes it out of flights
		// first so that no later caller joins a canceled query.
		if f.waiters == 0 && c.flights[k] == f {
			delete(c.flights, k)
			f.cancel()
		}
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// run asks k with fetch for f's waiters and caches the answer if it may
// be.
func (c *dnsCache) run(ctx context.Context, k dnsKey, f *dnsFlight, fetch dnsFetch) {
	defer f.cancel()
	answer, ttl, err := fetch(ctx)
	c.mu.Lock()
	f.answer, f.err = answer, err
	// A flight no longer in flights was canceled: its outcome is not kept.
	if c.flights[k] == f {
		delete(c.flights, k)
		if ttl > 0 && (err == nil || errors.Is(err, errNXDomain)) {
			c.put(k, answer, err, ttl)
		}
	}
	c.mu.Unlock()
	close(f.done)
}

// put caches answer and err for ttl, evicting entries if the cache is
// full: the expired ones at the front, then the oldest. Insertion order is
// close to expiry order because every TTL is capped at a few minutes.
// c.mu is held.
func (c *dnsCache) put(k dnsKey, answer []dns.RR, err error, ttl time.Duration) {
	if c.entries == nil {
		c.entries = make(map[dnsKey]*dnsEntry)
	}
	if old, ok := c.entries[k]; ok {
		c.remove(k, old)
	}
	now := c.clock()
	size := c.size
	if size <= 0 {
		size = dnsCacheSize
	}
	for front := c.order.Front(); front != nil; front = c.order.Front() {
		fk := front.Value.(dnsKey)
		if e := c.entries[fk]; len(c.entries) < size && now.Before(e.expires) {
			break
		}
		c.remove(fk, c.entries[fk])
	}
	e := &dnsEntry{answer: answer, err: err, expires: now.Add(ttl)}
	e.elem = c.order.PushBack(k)
	c.entries[k] = e
}

// remove drops k's entry e. c.mu is held.
func (c *dnsCache) remove(k dnsKey, e *dnsEntry) {
	c.order.Remove(e.elem)
	delete(c.entries, k)
}

// len is the number of entries, expired ones not yet dropped included.
func (c *dnsCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// answerTTL is how long resp, the answer to a question of type qtype, may
// be cached; 0 means not at all.
//
// An answer with records of qtype is kept for the least TTL of its
// records, CNAMEs leading to them included (RFC 2181 §5.2: the records of
// one RRset share a TTL; the chain is as old as its weakest link), capped
// at dnsCacheMaxTTL. A negative answer, NXDOMAIN or NOERROR without
// records of qtype (NODATA), is kept for the lesser of the TTL and the
// MINIMUM of the SOA in its authority section (RFC 2308 §5), capped at
// dnsCacheMaxNegTTL, and not at all without an SOA (RFC 2308 §5: "Negative
// responses without SOA records SHOULD NOT be cached"). Other rcodes
// (SERVFAIL, REFUSED...) are never cached.
func answerTTL(resp *dns.Msg, qtype uint16) time.Duration {
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return 0
	}
	ttl, found := uint32(0), false
	least := func(t uint32) {
		if !found || t < ttl {
			ttl, found = t, true
		}
	}
	positive := false
	for _, rr := range resp.Answer {
		least(rr.Header().Ttl)
		positive = positive || (rr.Header().Rrtype == qtype && resp.Rcode == dns.RcodeSuccess)
	}
	limit := dnsCacheMaxTTL
	if !positive {
		limit = dnsCacheMaxNegTTL
		var soa *dns.SOA
		for _, rr := range resp.Ns {
			if s, ok := rr.(*dns.SOA); ok {
				soa = s
				break
			}
		}
		if soa == nil {
			return 0
		}
		least(soa.Hdr.Ttl)
		least(soa.Minttl)
	}
	return min(time.Duration(ttl)*time.Second, limit)
}

package outbound

import (
	"context"
	"sync"
	"time"

	"postern/relay/smtpclient"
	"postern/relay/status"
)

// Connection reuse. Opening an SMTP connection costs a TCP handshake, the
// greeting, EHLO and, with TLS, a handshake and a second EHLO: four round
// trips or more before MAIL, and as much work again on the server. The
// queue hands out one delivery per message and domain, so a busy queue
// sends many messages to the same MX in a row; each session therefore ends
// by parking its connection here, keyed by destination, and the next
// delivery to that destination takes it instead of dialing. Postfix does
// the same with its connection cache (smtp_connection_cache_on_demand).
//
// The pool also caps the connections open to one destination (idle ones
// included), so that many workers draining one domain do not open hundreds
// of connections to one host. A delivery that finds the cap reached does
// not wait for a connection (a worker must never be parked on a
// destination): it gets errConnLimit and tries the next address. The
// Shaper admits no more attempts at once than the cap, so this happens
// only when MX host sets of different destinations overlap. And it closes
// a connection once it has carried its destination's
// MessagesPerConnection, which MX delivery passes in the context.

// Defaults of the pool options.
const (
	// DefaultIdleTimeout is how long a parked connection waits for the
	// next delivery. Long enough to bridge the gaps of a busy queue, short
	// enough not to hold a remote's connection slot for nothing; Postfix's
	// smtp_connection_cache_time_limit is 2 s, well below the 5 minutes a
	// server waits for a command (RFC 5321 §4.5.3.2.7).
	DefaultIdleTimeout = 5 * time.Second
	// DefaultMaxConnsPerHost is Postfix's
	// default_destination_concurrency_limit: a limit real MX hosts are
	// used to.
	DefaultMaxConnsPerHost = 20
)

const (
	// maxConnAge bounds how long one connection is reused, so that a
	// remote's configuration change (a new certificate, a new EHLO list)
	// is seen, and a remote that counts messages per connection is not
	// pushed to its limit. Postfix's smtp_connection_reuse_time_limit is
	// 300 s.
	maxConnAge = 5 * time.Minute
	// quitTimeout bounds QUIT when a parked connection is closed (idle
	// timeout, Close): a server that does not answer is dropped rather
	// than holding up shutdown for CommandTimeout.
	quitTimeout = 5 * time.Second
	// checkAfter is how long a connection may sit parked and still be
	// used without a NOOP first (see acquire). A server drops an idle
	// client after minutes (RFC 5321 §4.5.3.2.7 asks for at least 5), not
	// within a second; and if one does, MAIL fails in a way session
	// recognises, and the transaction runs again on a new connection.
	// The check is a round trip per message, as much as MAIL itself, on
	// exactly the busy queues that reuse connections most.
	checkAfter = time.Second
)

// checkTimeout bounds that NOOP (a variable for tests).
var checkTimeout = 10 * time.Second

// conn is one SMTP connection past its prelude (greeting, EHLO, STARTTLS,
// AUTH), between transactions.
type conn struct {
	// sc is the connection and its dialogue; a context that ends while
	// it talks closes it (see smtpclient).
	sc      *smtpclient.Client
	mech    string // the AUTH mechanism used, "" without AUTH
	created time.Time
	uses    int // sessions it has carried

	// Set while parked, under pool.mu.
	idle   *time.Timer
	parked time.Time // when it was last parked
}

// close ends the connection politely: QUIT (bounded by timeout), then
// close, even when QUIT fails.
func (c *conn) close(timeout time.Duration) {
	c.sc.Quit(timeout)
}

// pool holds the idle connections of one deliverer and counts its open
// ones per destination. The zero value is not usable: see newPool.
type pool struct {
	idleTimeout time.Duration // < 0: no reuse
	maxConns    int           // per destination, idle ones included
	maxIdle     int           // per destination
	now         func() time.Time

	mu     sync.Mutex
	dests  map[string]*dest
	closed bool
	wg     sync.WaitGroup // connections being closed after their idle timeout
}

// dest is one destination: an MX host address or a smarthost, with one
// TLS mode and one identity (see peer.key).
type dest struct {
	key  string
	open int     // connections open or being dialed: the slots taken
	idle []*conn // parked, the most recently used last
	// maxUses is the sessions a connection carries before it is closed,
	// 0 for no limit (besides maxConnAge): the last get's.
	maxUses int
}

// errConnLimit is a delivery that found its destination's connections all
// in use. RFC 3463 §3.5: X.4.5 "Mail system congestion".
var errConnLimit = status.New(451, 4, 5, "too many connections open to this host already")

func newPool(opts Options) *pool {
	return &pool{
		idleTimeout: opts.IdleTimeout,
		maxConns:    opts.MaxConnsPerHost,
		maxIdle:     opts.MaxIdlePerHost,
		now:         time.Now,
		dests:       make(map[string]*dest),
	}
}

func (p *pool) dest(key string) *dest {
	d := p.dests[key]
	if d == nil {
		d = &dest{key: key}
		p.dests[key] = d
	}
	return d
}

// get takes a slot for key and returns the connection parked there most
// recently, or nil: the caller then dials, in the slot it now holds. With
// fresh, a parked connection is closed instead and its slot handed over:
// the caller has just seen one of them dead. When the destination has
// maxConns connections open and none parked, it fails with errConnLimit
// at once. Every get that succeeds is paired with a put of the same key.
// ctx carries the destination's messages per connection (withConnUses).
func (p *pool) get(ctx context.Context, key string, fresh bool) (*conn, error) {
	p.mu.Lock()
	d := p.dest(key)
	d.maxUses = connUses(ctx)
	if n := len(d.idle); n > 0 {
		c := d.idle[n-1]
		d.idle[n-1] = nil
		d.idle = d.idle[:n-1]
		// Taken from the list under the lock: if the timer fires now,
		// expire finds nothing to do.
		c.idle.Stop()
		c.idle = nil
		p.mu.Unlock()
		if fresh {
			c.close(quitTimeout)
			return nil, nil
		}
		return c, nil
	}
	if d.open < p.maxConns {
		d.open++
		p.mu.Unlock()
		return nil, nil
	}
	p.forget(d)
	p.mu.Unlock()
	return nil, errConnLimit
}

// parked reports whether a connection is parked under key.
func (p *pool) parked(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.dests[key]
	return ok && len(d.idle) > 0
}

// put gives back the slot taken by get. A connection that keep says is
// clean is parked for the next delivery, unless reuse is off, the pool is
// closed, the destination has maxIdle parked already, or the connection is
// too old or has carried its destination's messages per connection;
// otherwise it is closed (QUIT first). c may be nil: a dial that failed.
func (p *pool) put(key string, c *conn, keep bool) {
	p.mu.Lock()
	d := p.dest(key)
	if c != nil {
		c.uses++
	}
	if c != nil && keep && p.idleTimeout >= 0 && !p.closed && len(d.idle) < p.maxIdle &&
		p.now().Sub(c.created) < maxConnAge && (d.maxUses == 0 || c.uses < d.maxUses) {
		d.idle = append(d.idle, c)
		c.parked = p.now()
		c.idle = time.AfterFunc(p.idleTimeout, func() { p.expire(key, c) })
		p.mu.Unlock()
		return
	}
	d.open--
	p.forget(d)
	p.mu.Unlock()
	if c != nil {
		c.close(min(c.sc.Options().CommandTimeout, quitTimeout))
	}
}

// expire closes c if it is still parked when its idle timeout fires.
func (p *pool) expire(key string, c *conn) {
	p.mu.Lock()
	if !p.unpark(key, c) {
		p.mu.Unlock()
		return // taken by get, or closed by Close
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()
	c.close(quitTimeout)
}

// unpark removes the parked c from its destination and frees its slot;
// false when c is not parked. p.mu must be held.
func (p *pool) unpark(key string, c *conn) bool {
	d := p.dests[key]
	if d == nil {
		return false
	}
	for i, ic := range d.idle {
		if ic == c {
			d.idle = append(d.idle[:i], d.idle[i+1:]...)
			d.open--
			p.forget(d)
			return true
		}
	}
	return false
}

// forget drops an unused destination, so that the map does not grow with
// every MX ever seen. p.mu must be held.
func (p *pool) forget(d *dest) {
	if d.open == 0 && len(d.idle) == 0 {
		delete(p.dests, d.key)
	}
}

// close closes every parked connection, waits for those an idle timeout is
// closing, and parks nothing from then on: connections in use are closed
// when their delivery ends.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	var all []*conn
	for _, d := range p.dests {
		for _, c := range d.idle {
			c.idle.Stop()
			c.idle = nil
			all = append(all, c)
		}
		d.open -= len(d.idle)
		d.idle = nil
		p.forget(d)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Go(func() { c.close(quitTimeout) })
	}
	wg.Wait()
	p.wg.Wait()
}

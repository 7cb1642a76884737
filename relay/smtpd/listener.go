package smtpd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"

	"postern/relay/status"
)

// guardListener sits between the socket and go-smtp. For each connection
// it reads the PROXY header when the peer is a listed load balancer, applies
// the global cap and the per-client limits, and records the connection so
// that Shutdown can close it. Refused connections get their 421 here and
// are closed; go-smtp never sees them.
//
// Accepting runs in one goroutine (run); a connection that must first send
// its PROXY header is admitted in a goroutine of its own, so a slow load
// balancer connection does not hold up the others.
type guardListener struct {
	net.Listener
	srv   *Server
	ready chan net.Conn
	errc  chan error
	done  chan struct{}
	once  sync.Once
	err   error
}

func newGuardListener(l net.Listener, s *Server) *guardListener {
	g := &guardListener{
		Listener: l,
		srv:      s,
		ready:    make(chan net.Conn),
		errc:     make(chan error, 1),
		done:     make(chan struct{}),
	}
	go g.run()
	return g
}

// Close is idempotent, so that go-smtp's Shutdown, closing it a second
// time, reports no error.
func (g *guardListener) Close() error {
	g.once.Do(func() {
		close(g.done)
		g.err = g.Listener.Close()
	})
	return g.err
}

func (g *guardListener) Accept() (net.Conn, error) {
	select {
	case c := <-g.ready:
		return c, nil
	case err := <-g.errc:
		return nil, err
	case <-g.done:
		return nil, net.ErrClosed
	}
}

func (g *guardListener) run() {
	var backoff time.Duration
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			// Running out of file descriptors is temporary: wait and
			// retry, as net/http does, rather than stop listening.
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				g.srv.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("in", backoff))
				select {
				case <-time.After(backoff):
					continue
				case <-g.done:
					return
				}
			}
			select {
			case g.errc <- err:
			case <-g.done:
			}
			return
		}
		backoff = 0
		pol := g.srv.opts.Policy
		if refusal := pol.conns.acquire(); refusal != nil {
			g.refuse(c, remoteIP(c.RemoteAddr()), refusal)
			continue
		}
		if inPrefixes(remoteIP(c.RemoteAddr()), pol.ProxyFrom) {
			go g.admitProxied(c)
			continue
		}
		if pol.Shared != nil {
			// Admission asks the shared store (a network round trip, up
			// to its timeout when it is slow): not in this loop, or every
			// client would wait for the one before it.
			go func() {
				if tc := g.admit(c); tc != nil {
					g.deliver(tc)
				}
			}()
			continue
		}
		if tc := g.admit(c); tc != nil {
			g.deliver(tc)
		}
	}
}

func (g *guardListener) deliver(c net.Conn) {
	select {
	case g.ready <- c:
	case <-g.done:
		c.Close()
	}
}

// admitProxied reads the PROXY header of a connection from a listed peer;
// without a valid one, the connection is closed: such a peer must send it
// (PROXY protocol spec §2: a receiver must not guess whether it is there).
func (g *guardListener) admitProxied(raw net.Conn) {
	timeout := g.srv.opts.Policy.ProxyHeaderTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	pc := proxyproto.NewConn(raw,
		proxyproto.WithPolicy(proxyproto.REQUIRE),
		proxyproto.SetReadHeaderTimeout(timeout))
	if pc.ProxyHeader() == nil {
		g.srv.log.Warn("connection refused: no valid PROXY header from a proxy peer",
			zap.Stringer("peer", raw.RemoteAddr()))
		raw.Close()
		g.srv.opts.Policy.conns.release()
		return
	}
	if tc := g.admit(pc); tc != nil {
		g.deliver(tc)
	}
}

// admit applies the per-client limits (the global slot is already held)
// and returns the tracked connection, or nil when it refused it.
func (g *guardListener) admit(c net.Conn) *trackedConn {
	pol := g.srv.opts.Policy
	ip := remoteIP(c.RemoteAddr())
	now := time.Now()
	done, refusal := pol.conns.admit(g.srv.ctx, ip, now)
	if refusal != nil {
		pol.conns.release()
		g.refuse(c, ip, refusal)
		return nil
	}
	tc := &trackedConn{Conn: c, srv: g.srv, release: func() { done(); pol.conns.release() }}
	if d := g.srv.opts.IdleTimeout; d > 0 {
		tc.idleUntil = now.Add(d)
	}
	s := g.srv
	s.mu.Lock()
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	return tc
}

// refuse answers a connection the limits turn away, and closes it. This is
// the one reply written outside a session, so it does what session.reply
// does by hand: the status text and the Observer. On the implicit-TLS
// listener no reply is possible without a handshake, which is the cost the
// limit is there to avoid: the connection is just closed.
func (g *guardListener) refuse(c net.Conn, ip fmt.Stringer, e *status.Error) {
	g.srv.log.Warn("connection refused", zap.Stringer("client_ip", ip), zap.Int("code", e.Code), zap.String("reason", e.Message))
	g.srv.opts.Observer.Reply(e.Code)
	if g.srv.opts.Kind != Submissions {
		// A fresh socket's send buffer is empty: this write does not block,
		// and the deadline makes sure of it.
		c.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(c, "%d %s %s\r\n", e.Code, e.Enhanced(), e.Message)
	}
	c.Close()
}

// trackedConn is one admitted connection. It leaves the Server's set and
// gives back its limit slots when closed, and it holds the session's time
// limits: go-smtp sets a read deadline of CommandTimeout before each
// command line, and SetReadDeadline brings that forward to the idle limit,
// or, while DATA runs, to the DATA limit. A timed-out read is go-smtp's
// "421 4.4.2 Idle timeout" and the end of the session.
type trackedConn struct {
	net.Conn
	srv     *Server
	release func()
	once    sync.Once

	mu         sync.Mutex
	idleUntil  time.Time // zero: no idle limit
	dataUntil  time.Time // set while DATA runs
	closeAfter bool      // close once the next reply is written
	inTx       bool      // a transaction is open (MAIL accepted, not ended)

	// readFailed: a read from the client failed (its end, a reset, a
	// timeout): whatever the session reads after that is cut short
	// (cutGuard).
	readFailed atomic.Bool
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.readFailed.Store(true)
	}
	return n, err
}

// setInTx records whether the session has a transaction open: a shutdown
// closes the connections that have none at once, and waits for the others.
func (c *trackedConn) setInTx(v bool) {
	c.mu.Lock()
	c.inTx = v
	c.mu.Unlock()
}

func (c *trackedConn) busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inTx
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
		c.release()
	})
	return c.Conn.Close()
}

func (c *trackedConn) limit() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dataUntil.IsZero() {
		return c.dataUntil
	}
	return c.idleUntil
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if lim := c.limit(); !lim.IsZero() && (t.IsZero() || lim.Before(t)) {
		t = lim
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// Write closes the connection after the write when a session asked for it
// (closeAfterReply): go-smtp writes each reply in one Write (TLS: one
// record), so this is the reply that ends the session.
func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	cl := c.closeAfter
	c.mu.Unlock()
	if cl {
		c.Close()
	}
	return n, err
}

// beginData sets the deadline of the whole DATA (or BDAT) transfer.
func (c *trackedConn) beginData(until time.Time) {
	c.mu.Lock()
	c.dataUntil = until
	c.mu.Unlock()
	c.Conn.SetReadDeadline(until)
}

// endData ends the DATA limit; an accepted message restarts the idle one.
func (c *trackedConn) endData(accepted bool, idle time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dataUntil = time.Time{}
	if accepted && idle > 0 {
		c.idleUntil = time.Now().Add(idle)
	}
}

func (c *trackedConn) closeAfterReply() {
	c.mu.Lock()
	c.closeAfter = true
	c.mu.Unlock()
}

// trackedOf finds the trackedConn under a session's connection (which is a
// *tls.Conn after STARTTLS or on the implicit-TLS listener).
func trackedOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

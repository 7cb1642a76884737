package smtpd

import (
	"net"
	"syscall"
)

// ackNow sends the TCP acknowledgement the kernel holds back for data
// already read, at once (TCP_QUICKACK, tcp(7): setting it flushes a
// pending delayed ACK). See session.Logout for why.
func ackNow(c net.Conn) {
	if r, ok := c.(interface{ Raw() net.Conn }); ok { // a PROXY-protocol connection
		c = r.Raw()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}

//go:build !linux

package smtpd

import "net"

// ackNow does nothing where TCP_QUICKACK does not exist.
func ackNow(net.Conn) {}

package main

import (
	"net"
	"os"
)

// sdNotify tells the service manager about the daemon's state (a
// systemd unit with Type=notify): "READY=1" once every listener accepts,
// "STOPPING=1" when shutdown begins. (A reload on SIGHUP is not
// announced: RELOADING=1 wants a CLOCK_MONOTONIC time stamp with it, and
// the unit's ExecReload only sends the signal.) The protocol (sd_notify(3)) is one datagram on the
// unix socket named by $NOTIFY_SOCKET, "@" for the abstract namespace,
// which Go's net package maps itself. Without $NOTIFY_SOCKET (not run by
// systemd) it does nothing; a failure is returned for the log, and
// changes nothing else: systemd then reports the start as timed out.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

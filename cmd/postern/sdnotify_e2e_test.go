package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSdNotify: serve run by systemd with Type=notify says READY=1 on
// $NOTIFY_SOCKET once it has started, and STOPPING=1 on SIGTERM; on a
// socket path and on an abstract one ("@name").
func TestSdNotify(t *testing.T) {
	t.Parallel()
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprint("abstract=", abstract), func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "notify")
			if abstract {
				name = fmt.Sprintf("@postern-test-%d-notify", os.Getpid())
			}
			sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			in := newInstance(t, testConfig{DeliveryPort: 25})
			in.env = []string{"NOTIFY_SOCKET=" + name}
			in.start()
			read := func() string {
				t.Helper()
				buf := make([]byte, 256)
				sock.SetReadDeadline(time.Now().Add(30 * time.Second))
				n, err := sock.Read(buf)
				if err != nil {
					t.Fatalf("no notification: %v\n%s", err, in.logs.String())
				}
				return string(buf[:n])
			}
			if got := read(); got != "READY=1" {
				t.Errorf("after start: %q, want READY=1", got)
			}
			in.stop()
			if got := read(); got != "STOPPING=1" {
				t.Errorf("after SIGTERM: %q, want STOPPING=1", got)
			}
		})
	}
}

package outbound

import "time"

// SetClock replaces the clock m's connection pool reads (parking times and
// connection ages), for tests that need a connection to look idle longer.
func SetClock(m *MX, now func() time.Time) { m.pool.now = now }

// SetCheckTimeout replaces the NOOP check's time limit until the test ends.
func SetCheckTimeout(t interface{ Cleanup(func()) }, d time.Duration) {
	old := checkTimeout
	checkTimeout = d
	t.Cleanup(func() { checkTimeout = old })
}

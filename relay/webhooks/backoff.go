package webhooks

import "time"

// schedule is the wait after the first failed attempts; after the last
// step it stays at the last step's value.
var schedule = []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour}

// Backoff is the wait after failed attempt n (1 for the first), with
// jitter j in [0, 1) spreading it over ±20 %, so that an endpoint back
// after an outage is not met by every retry at the same second.
func Backoff(n int, j float64) time.Duration {
	d := schedule[min(max(n, 1), len(schedule))-1]
	return time.Duration(float64(d) * (0.8 + 0.4*j))
}

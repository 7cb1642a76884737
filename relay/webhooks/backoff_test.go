package webhooks

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for _, tt := range []struct {
		n    int
		j    float64
		want time.Duration
	}{
		{1, 0.5, 5 * time.Second},
		{2, 0.5, 30 * time.Second},
		{3, 0.5, 2 * time.Minute},
		{4, 0.5, 10 * time.Minute},
		{5, 0.5, 30 * time.Minute},
		{6, 0.5, time.Hour},
		{60, 0.5, time.Hour},
		{1, 0, 4 * time.Second},
		{6, 0.999999, time.Hour*6/5 - 4*time.Millisecond},
	} {
		got := Backoff(tt.n, tt.j)
		if d := got - tt.want; d < -5*time.Millisecond || d > 5*time.Millisecond {
			t.Errorf("Backoff(%d, %v) = %v, want %v", tt.n, tt.j, got, tt.want)
		}
	}
	// At least 24 hours of retries: the schedule's waits, at their
	// shortest, reach a day within a number of attempts.
	var total time.Duration
	for n := 1; total < 24*time.Hour; n++ {
		total += Backoff(n, 0)
		if n > 40 {
			t.Fatalf("%d attempts span only %v", n, total)
		}
	}
}

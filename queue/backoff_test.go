package queue

import (
	"strings"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	r := Retry{Initial: time.Minute, Max: time.Hour}
	tests := []struct {
		name    string
		r       Retry
		attempt int
		u       float64 // jitter draw in [0,1)
		want    time.Duration
	}{
		{"first attempt, no jitter", r, 1, 0.5, time.Minute},
		{"doubles", r, 2, 0.5, 2 * time.Minute},
		{"doubles again", r, 3, 0.5, 4 * time.Minute},
		{"last before cap", r, 6, 0.5, 32 * time.Minute},
		{"capped", r, 7, 0.5, time.Hour},
		{"stays capped", r, 1000, 0.5, time.Hour},
		{"jitter low bound", r, 1, 0, 54 * time.Second},
		{"jitter high end", r, 1, 0.999999, 66 * time.Second},
		{"jitter spreads capped waits too", r, 50, 0, 54 * time.Minute},
		{"floor", Retry{Initial: time.Millisecond, Max: time.Hour}, 1, 0, minBackoff},
		{"floor after doubling", Retry{Initial: time.Millisecond, Max: time.Hour}, 3, 0.5, minBackoff},
		{"attempt 0 treated as first", r, 0, 0.5, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.r.backoff(tt.attempt, tt.u)
			// The high jitter end is open; allow float rounding there.
			if d := got - tt.want; d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("backoff(%d, %v) = %v, want %v", tt.attempt, tt.u, got, tt.want)
			}
		})
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	r := Retry{Initial: time.Minute, Max: time.Hour}
	for attempt := 1; attempt <= 12; attempt++ {
		base := r.backoff(attempt, 0.5)
		lo, hi := time.Duration(float64(base)*0.9), time.Duration(float64(base)*1.1)
		for _, u := range []float64{0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999999} {
			if got := r.backoff(attempt, u); got < lo || got > hi {
				t.Errorf("attempt %d, u=%v: %v outside [%v, %v]", attempt, u, got, lo, hi)
			}
		}
	}
}

// TestApply covers what one result does to a recipient, including the
// retry lifetime, without a database.
func TestApply(t *testing.T) {
	q := &Queue{retry: Retry{Lifetime: 120 * time.Hour}.withDefaults()}
	created := t0
	leaseNext := t0.Add(200 * time.Hour)
	tests := []struct {
		name      string
		age       time.Duration
		res       Result
		wantState State
		wantReply string // substring
	}{
		{"delivered", time.Minute, Result{Outcome: Delivered, Reply: rp(250, "", "ok")}, StateDelivered, "250 ok"},
		{"permanent", time.Minute, Result{Outcome: Permanent, Reply: rp(550, "5.1.1", "no")}, StateFailed, "550 5.1.1 no"},
		{"temporary", time.Minute, Result{Outcome: Temporary, Reply: rp(451, "4.3.0", "later")}, StateDeferred, "451 4.3.0 later"},
		{"temporary at exactly lifetime", 120 * time.Hour, Result{Outcome: Temporary, Reply: rp(451, "", "x")}, StateDeferred, "451 x"},
		{"temporary past lifetime", 120*time.Hour + time.Second, Result{Outcome: Temporary, Reply: rp(451, "", "x")}, StateFailed, "retry lifetime 120h0m0s expired; last reply: 451 x"},
		{"delivered past lifetime still delivered", 300 * time.Hour, Result{Outcome: Delivered, Reply: rp(250, "", "ok")}, StateDelivered, "250 ok"},
		{"unknown outcome counts as temporary", time.Minute, Result{Reply: rp(0, "", "?")}, StateDeferred, "?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Recipient{Address: "a@x", State: StateQueued, Attempts: 3, NextAttempt: leaseNext}
			q.apply(&r, tt.res, created.Add(tt.age), created)
			if r.State != tt.wantState {
				t.Errorf("state = %s, want %s", r.State, tt.wantState)
			}
			if !strings.Contains(r.LastReply.String(), tt.wantReply) {
				t.Errorf("reply = %q, want it to contain %q", r.LastReply, tt.wantReply)
			}
			if !r.NextAttempt.Equal(leaseNext) || r.Attempts != 3 {
				t.Errorf("apply changed the lease: next %v attempts %d", r.NextAttempt, r.Attempts)
			}
		})
	}
}

func TestID(t *testing.T) {
	for _, id := range []uint64{1, 0xABCDEF, 1<<64 - 1} {
		s := formatID(id)
		if len(s) != 16 || strings.ToUpper(s) != s {
			t.Errorf("formatID(%d) = %q", id, s)
		}
		if got, err := parseID(s); err != nil || got != id {
			t.Errorf("parseID(%q) = %d, %v", s, got, err)
		}
	}
	if formatID(9) >= formatID(10) || formatID(255) >= formatID(256) {
		t.Error("printable IDs do not sort like numbers")
	}
	for _, bad := range []string{"", "1", "00000000000000ab", "+000000000000001", "000000000000000G", "00000000000000001"} {
		if _, err := parseID(bad); err == nil {
			t.Errorf("parseID(%q) accepted", bad)
		}
	}
}

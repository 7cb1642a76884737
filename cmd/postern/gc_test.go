package main

import (
	"runtime/debug"
	"testing"
)

// TestTuneGC: serve sets postern's GC defaults, and leaves each alone when
// its environment variable is set.
func TestTuneGC(t *testing.T) {
	oldPct := debug.SetGCPercent(100)
	oldLim := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(oldPct); debug.SetMemoryLimit(oldLim) })

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	tuneGC()
	if got := debug.SetGCPercent(100); got != defaultGOGC {
		t.Errorf("GC percent %d, want %d", got, defaultGOGC)
	}
	if got := debug.SetMemoryLimit(-1); got != defaultMemLimit {
		t.Errorf("memory limit %d, want %d", got, defaultMemLimit)
	}

	// What the runtime read from the environment stays.
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(1 << 30)
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("with GOGC=150: GC percent %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("with GOMEMLIMIT=1GiB: memory limit %d", got)
	}
}

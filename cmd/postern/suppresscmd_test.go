package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSuppressionUsage(t *testing.T) {
	for _, args := range [][]string{
		{"frobnicate"},
		{"list", "extra"},
		{"add"},
		{"del", "a@b.test", "c@d.test"},
		{"add", ""},
		{"list", "--bogus"},
	} {
		err := cmdSuppression(args[0], args[1:], &bytes.Buffer{})
		if !errors.Is(err, errUsage) {
			t.Errorf("suppression %q: err = %v, want a usage error", args, err)
		}
	}
}

// TestWriteSuppressions: one line per suppression, "-" for the relay
// listener's list, relative times, the remote's reply on one line.
func TestWriteSuppressions(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	var ss []apiSuppression
	if err := json.Unmarshal([]byte(`[
	  {"user": "", "address": "gone@dest.test", "reason": "bounce", "created_at": "2026-12-06T09:00:00Z",
	   "reply": {"code": 550, "enhanced_code": "5.1.1", "text": "no such\nuser"}},
	  {"user": "alice", "address": "x@y.test", "reason": "manual", "created_at": "2026-12-04T12:00:00Z", "expires_at": "2026-12-07T12:00:00Z"}
	]`), &ss); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := writeSuppressions(&out, ss, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != "- gone@dest.test bounce 3h ago never 550 5.1.1 no such user" ||
		strings.Join(strings.Fields(lines[2]), " ") != "alice x@y.test manual 2d ago in 1d" {
		t.Errorf("table:\n%s", out.String())
	}
	out.Reset()
	writeSuppressions(&out, nil, now)
	if out.String() != "No suppressed addresses.\n" {
		t.Errorf("empty list: %q", out.String())
	}
}

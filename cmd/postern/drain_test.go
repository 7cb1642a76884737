package main

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDrainCommand: postern drain posts its timeout with the token, shows
// the progress it polls, and returns once the admin API refuses
// connections (the daemon has exited), saying what stayed in the queue.
func TestDrainCommand(t *testing.T) {
	var (
		mu    sync.Mutex
		got   []string
		polls int
	)
	deadline := time.Now().Add(90 * time.Second).UTC().Format(time.RFC3339)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "POST /api/drain":
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"draining":true,"deadline":"`+deadline+`","in_flight":2,"queued":3,"deferred":1}`)
		case "GET /api/drain":
			polls++
			if polls == 2 {
				// The daemon exits: its admin listener goes away.
				w.Header().Set("Connection", "close")
				go srv.Close()
			}
			io.WriteString(w, `{"draining":true,"in_flight":0,"queued":0,"deferred":1,"held":2}`)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	cfg := queueEnv(t, strings.TrimPrefix(srv.URL, "http://"), "tok3n")

	var out bytes.Buffer
	if err := cmdDrain([]string{"--timeout", "90s", cfg}, &out); err != nil {
		t.Fatalf("postern drain: %v\n%s", err, out.String())
	}
	mu.Lock()
	first := got[0]
	mu.Unlock()
	if first != "POST /api/drain?timeout=1m30s Bearer tok3n" {
		t.Errorf("first request %q, want the POST with the timeout and the token", first)
	}
	s := out.String()
	for _, want := range []string{
		"draining postern at ",
		"  2 in flight, 3 queued, 1 deferred\n",
		"  0 in flight, 0 queued, 1 deferred\n",
		" stopped after ",
		"left in its queue at the last look: 1 deferred, 2 held",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

func TestDrainErrors(t *testing.T) {
	down := freeAddr(t)
	for _, tc := range []struct {
		args  []string
		usage bool
		msg   string
	}{
		{[]string{"extra"}, true, ""},
		{[]string{"--timeout", "0s"}, true, ""},
		{[]string{"--timeout", "soon"}, true, ""},
		{[]string{queueEnv(t, down, "")}, false, "postern: cannot reach the admin API at " + down + ": is postern running?"},
		{[]string{queueEnv(t, "", "")}, false, "postern: listen.admin is empty in "},
	} {
		var out bytes.Buffer
		err := cmdDrain(tc.args, &out)
		if tc.usage {
			if !errors.Is(err, errUsage) {
				t.Errorf("drain %q: err = %v, want a usage error", tc.args, err)
			}
			continue
		}
		var ex exitError
		if !errors.As(err, &ex) || ex.code != exitFail || !strings.HasPrefix(ex.msg, tc.msg) {
			t.Errorf("drain %q: err = %v, want exit 1 with %q", tc.args, err, tc.msg)
		}
	}
	var out bytes.Buffer
	if err := cmdDrain([]string{"-h"}, &out); err != nil || !strings.Contains(out.String(), "deferred and held messages stay on this node's\ndisk") {
		t.Errorf("drain -h: %v\n%s", err, out.String())
	}
}

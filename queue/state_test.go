package queue

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

type cached struct {
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// TestState: values survive a reopen, namespaces do not see each other,
// Delete and PutAll do what they say, an undecodable value is named, and
// a closed queue refuses.
func TestState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	q, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewStateStore[cached](q, "a")
	b, _ := NewStateStore[cached](q, "b")
	if _, ok, err := a.Get("x"); ok || err != nil {
		t.Fatalf("Get on an empty namespace: ok %v, err %v", ok, err)
	}
	exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := a.Put("x", cached{"1", exp}); err != nil {
		t.Fatal(err)
	}
	if err := a.PutAll(map[string]cached{"y": {"2", exp}, "z": {"3", exp}}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Get("x"); ok {
		t.Error("namespace b sees a's key")
	}
	if err := a.Delete("z"); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete("never there"); err != nil {
		t.Errorf("Delete of a missing key: %v", err)
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Get("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
	if err := a.Put("x", cached{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", err)
	}

	q, err = Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	a, _ = NewStateStore[cached](q, "a")
	got, err := a.List()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]cached{"x": {"1", exp}, "y": {"2", exp}}
	if len(got) != len(want) || got["x"] != want["x"] || got["y"] != want["y"] {
		t.Errorf("List after reopen = %v, want %v", got, want)
	}
	if v, ok, err := a.Get("y"); !ok || err != nil || v != want["y"] {
		t.Errorf("Get(y) = %v %v %v", v, ok, err)
	}

	// A value another version wrote, which this T cannot read.
	err = q.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bState).Bucket([]byte("a")).Put([]byte("bad"), []byte(`{"id": 7}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.List(); !errors.Is(err, ErrStateValue) {
		t.Errorf("List with a bad value: %v, want ErrStateValue", err)
	}
	if _, _, err := a.Get("bad"); !errors.Is(err, ErrStateValue) {
		t.Errorf("Get of a bad value: %v, want ErrStateValue", err)
	}
	if err := a.Delete("bad"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.List(); err != nil {
		t.Errorf("List once the bad value is gone: %v", err)
	}

	for _, ns := range []string{"", "a/b", string(make([]byte, 65))} {
		if _, err := NewStateStore[cached](q, ns); err == nil {
			t.Errorf("NewStateStore(%q) accepted", ns)
		}
	}
}

// TestRequireTLSReachesDelivery: the REQUIRETLS flag and a TLS-Required:
// No request are kept with the message, across a restart, and reach the
// Deliverer.
func TestRequireTLSReachesDelivery(t *testing.T) {
	h := newHarness(t)
	q := h.open()
	for _, env := range []*Envelope{
		{From: "a@x.test", Rcpts: []string{"b@y.test"}, RequireTLS: true},
		{From: "a@x.test", Rcpts: []string{"c@y.test"}, TLSOptional: true},
		{From: "a@x.test", Rcpts: []string{"d@y.test"}},
	} {
		if _, err := q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	// Restart before delivery: the flags come from the stored record.
	q.Close(context.Background())
	q = h.open()
	q.Start()
	h.wait(3)
	got := map[string][2]bool{}
	for _, c := range h.fake.Calls() {
		got[c.Rcpts[0]] = [2]bool{c.RequireTLS, c.TLSOptional}
	}
	want := map[string][2]bool{"b@y.test": {true, false}, "c@y.test": {false, true}, "d@y.test": {false, false}}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: RequireTLS, TLSOptional = %v, want %v", k, got[k], w)
		}
	}
}

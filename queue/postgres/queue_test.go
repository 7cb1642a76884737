package postgres

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/postgres/pgtest"
	"postern/queue/reply"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// recorder is a Deliverer that records every attempt and answers what
// script says for a recipient (delivered otherwise).
type recorder struct {
	mu     sync.Mutex
	calls  []queue.Delivery
	at     []time.Time         // when each call came
	bodies map[string][]string // id -> bodies seen
	script func(d *queue.Delivery, rcpt string) queue.Result
	block  chan struct{} // when set, Deliver waits for it to close
}

func (r *recorder) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
		}
	}
	f, err := d.Body.Open()
	var b []byte
	if err == nil {
		b, _ = io.ReadAll(f)
		f.Close()
	}
	r.mu.Lock()
	if r.bodies == nil {
		r.bodies = map[string][]string{}
	}
	r.calls = append(r.calls, *d)
	r.at = append(r.at, time.Now())
	r.bodies[d.ID] = append(r.bodies[d.ID], string(b))
	r.mu.Unlock()
	out := make([]queue.Result, len(d.Rcpts))
	for i, a := range d.Rcpts {
		out[i] = queue.Result{Outcome: queue.Delivered, Reply: reply.Reply{Code: 250, Text: "ok"}}
		if r.script != nil {
			out[i] = r.script(d, a)
		}
	}
	return out
}

func (r *recorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.calls) }

func (r *recorder) rcptCalls(addr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		for _, a := range c.Rcpts {
			if a == addr {
				n++
			}
		}
	}
	return n
}

func open(t *testing.T, dsn string, o Options) *Queue {
	t.Helper()
	o.DSN = dsn
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Retry.Initial == 0 {
		o.Retry = queue.Retry{Initial: 200 * time.Millisecond, Max: time.Second}
	}
	if o.Hostname == "" {
		o.Hostname = "mx.test"
	}
	q, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Close(ctx)
	})
	return q
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func enqueue(t *testing.T, q *Queue, from, body string, rcpts ...string) string {
	t.Helper()
	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: from, Rcpts: rcpts}, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func rows(t *testing.T, q *Queue) int {
	t.Helper()
	var n int
	if err := q.pool.QueryRow(context.Background(), `SELECT count(*) FROM postern_messages`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDeliverGroupsByDomainAndRemoves(t *testing.T) {
	dsn := pgtest.DB(t)
	rec := &recorder{}
	q := open(t, dsn, Options{Deliverer: rec})
	id, err := q.EnqueuePrefixed(context.Background(), &queue.Envelope{From: "a@src.test",
		Rcpts: []string{"x@one.test", "y@two.test", "z@one.test"}}, strings.NewReader("Subject: hi\r\n\r\nbody\r\n"),
		func() ([]byte, error) { return []byte("Received: x\r\n"), nil })
	if err != nil {
		t.Fatal(err)
	}
	m, err := q.Get(id)
	if err != nil || m.State != queue.StateQueued || len(m.Rcpts) != 3 || m.Size != int64(len("Received: x\r\nSubject: hi\r\n\r\nbody\r\n")) {
		t.Fatalf("Get = %+v, %v", m, err)
	}
	q.Start()
	eventually(t, "two attempts", func() bool { return rec.count() == 2 })
	eventually(t, "the message removed", func() bool { return rows(t, q) == 0 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, c := range rec.calls {
		want := map[string]int{"one.test": 2, "two.test": 1}[c.Domain]
		if len(c.Rcpts) != want || c.ID != id || c.Attempt != 1 {
			t.Errorf("delivery %+v", c)
		}
	}
	for _, b := range rec.bodies[id] {
		if b != "Received: x\r\nSubject: hi\r\n\r\nbody\r\n" {
			t.Errorf("body %q", b)
		}
	}
	if _, err := q.Get(id); err == nil {
		t.Error("delivered message still found")
	}
}

func TestRetryThenFailWithDSN(t *testing.T) {
	dsn := pgtest.DB(t)
	rec := &recorder{script: func(d *queue.Delivery, rcpt string) queue.Result {
		switch {
		case rcpt == "later@x.test" && d.Attempt == 1:
			return queue.Result{Outcome: queue.Temporary, Reply: reply.Reply{Code: 451, Enhanced: reply.Enhanced{Class: 4, Subject: 3}, Text: "try later"}}
		case rcpt == "gone@x.test":
			return queue.Result{Outcome: queue.Permanent, Reply: reply.Reply{Code: 550, Enhanced: reply.Enhanced{Class: 5, Subject: 1, Detail: 1}, Text: "no such user"}, RemoteMTA: "mx.x.test"}
		}
		return queue.Result{Outcome: queue.Delivered, Reply: reply.Reply{Code: 250, Text: "ok"}}
	}}
	q := open(t, dsn, Options{Deliverer: rec, Suppression: queue.SuppressionOptions{Enabled: true}})
	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: "sender@src.test", User: "alice",
		Rcpts: []string{"later@x.test", "gone@x.test"}}, strings.NewReader("Subject: t\r\n\r\nhello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	eventually(t, "the DSN delivered to the sender", func() bool { return rec.rcptCalls("sender@src.test") == 1 })
	eventually(t, "the retry", func() bool { return rec.rcptCalls("later@x.test") == 2 })
	eventually(t, "the failed record kept", func() bool {
		m, err := q.Get(id)
		return err == nil && m.State == queue.StateFailed
	})
	m, _ := q.Get(id)
	if m.Rcpts[1].LastReply.Code != 550 || m.Rcpts[1].RemoteMTA != "mx.x.test" || m.Rcpts[0].State != queue.StateDelivered || m.Rcpts[0].Attempts != 2 {
		t.Errorf("record %+v", m.Rcpts)
	}
	rec.mu.Lock()
	var report string
	for _, c := range rec.calls {
		if c.From == "" {
			report = rec.bodies[c.ID][0]
		}
	}
	rec.mu.Unlock()
	for _, want := range []string{"Final-Recipient: rfc822; gone@x.test", "Action: failed", "Status: 5.1.1", "Reporting-MTA: dns; mx.test", "Subject: t"} {
		if !strings.Contains(report, want) {
			t.Errorf("DSN lacks %q:\n%s", want, report)
		}
	}
	s, err := q.Suppressed("alice", "GONE@x.test")
	if err != nil || s == nil || s.Reason != queue.SuppressBounce {
		t.Errorf("suppression = %+v, %v", s, err)
	}
}

// A node that leased a message and died (it never records) holds it
// until its lease ends: another node delivers it then, and not before.
func TestDeadNodesLeaseExpires(t *testing.T) {
	dsn := pgtest.DB(t)
	lease := 2 * time.Second
	dead := open(t, dsn, Options{Lease: lease, Node: "dead", Retry: queue.Retry{Initial: 100 * time.Millisecond}})
	id := enqueue(t, dead, "a@src.test", "x\r\n", "r@dst.test")
	jobs, _, err := dead.leaseDue(10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("lease = %v, %v", jobs, err)
	}
	var until time.Time
	if err := dead.pool.QueryRow(context.Background(), `SELECT due FROM postern_messages`).Scan(&until); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	other := open(t, dsn, Options{Deliverer: rec, Lease: lease, Node: "other"})
	other.Start()
	eventually(t, "delivery by the other node", func() bool { return rec.count() == 1 })
	rec.mu.Lock()
	if rec.at[0].Before(until) {
		t.Errorf("delivered at %v, before the dead node's lease ended at %v", rec.at[0], until)
	}
	if c := rec.calls[0]; c.ID != id || c.Attempt != 2 {
		t.Errorf("delivery %+v: the dead node's attempt counts", c)
	}
	rec.mu.Unlock()
	// The dead node, come back, finds its lease gone.
	_, _, _, err = dead.recordOnce(jobs[0], []queue.Result{{Outcome: queue.Delivered}}, nil)
	if err != errLeaseLost {
		t.Errorf("record after losing the lease: %v", err)
	}
}

// A node delivering longer than its lease renews it: no other node
// takes the message meanwhile.
func TestLeaseRenewed(t *testing.T) {
	dsn := pgtest.DB(t)
	// Renewed every third of it: a stall of two thirds (on a loaded
	// machine, under -race) would let b take over, which is right, and
	// fail this test, which would be wrong.
	lease := 3 * time.Second
	slow := &recorder{block: make(chan struct{})}
	a := open(t, dsn, Options{Deliverer: slow, Lease: lease, Node: "a"})
	enqueue(t, a, "a@src.test", "x\r\n", "r@dst.test")
	a.Start()
	eventually(t, "the lease taken", func() bool {
		var owner *string
		a.pool.QueryRow(context.Background(), `SELECT lease_owner FROM postern_messages`).Scan(&owner)
		return owner != nil && strings.HasPrefix(*owner, "a#")
	})
	rec := &recorder{}
	b := open(t, dsn, Options{Deliverer: rec, Lease: lease, Node: "b"})
	b.Start()
	time.Sleep(2 * lease)
	close(slow.block)
	eventually(t, "node a's delivery", func() bool { return slow.count() == 1 })
	eventually(t, "the message removed", func() bool { return rows(t, a) == 0 })
	if n := rec.count(); n != 0 {
		t.Errorf("node b delivered %d times during node a's renewed lease", n)
	}
}

// Two nodes delivering one queue take each message once (SKIP LOCKED).
func TestTwoNodesShareWithoutDuplicates(t *testing.T) {
	dsn := pgtest.DB(t)
	ra, rb := &recorder{}, &recorder{}
	a := open(t, dsn, Options{Deliverer: ra, Node: "a", Workers: 16})
	b := open(t, dsn, Options{Deliverer: rb, Node: "b", Workers: 16})
	a.Start()
	b.Start()
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := a
			if i%2 == 1 {
				q = b
			}
			enqueue(t, q, "s@src.test", fmt.Sprintf("m%d\r\n", i), fmt.Sprintf("r%d@dst.test", i))
		}()
	}
	wg.Wait()
	eventually(t, "all delivered", func() bool { return ra.count()+rb.count() == n })
	time.Sleep(300 * time.Millisecond)
	seen := map[string]int{}
	for _, r := range []*recorder{ra, rb} {
		r.mu.Lock()
		for _, c := range r.calls {
			seen[c.Rcpts[0]]++
		}
		r.mu.Unlock()
	}
	for k, v := range seen {
		if v != 1 {
			t.Errorf("%s delivered %d times", k, v)
		}
	}
	if len(seen) != n || ra.count() == 0 || rb.count() == 0 {
		t.Errorf("%d distinct of %d; a %d, b %d", len(seen), n, ra.count(), rb.count())
	}
}

// A message queued on one node wakes an idle other node (LISTEN/NOTIFY)
// at once, not at its next poll.
func TestNotifyWakesOtherNode(t *testing.T) {
	dsn := pgtest.DB(t)
	rec := &recorder{}
	idle := open(t, dsn, Options{Deliverer: rec, Node: "idle"})
	idle.Start()
	producer := open(t, dsn, Options{Node: "producer"}) // no Deliverer, not started
	producer.wg.Add(1)
	go producer.notifier()
	time.Sleep(300 * time.Millisecond) // idle is now waiting (30 s poll)
	start := time.Now()
	enqueue(t, producer, "s@src.test", "x\r\n", "r@dst.test")
	eventually(t, "delivery by the idle node", func() bool { return rec.count() == 1 })
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("woken after %v", d)
	}
}

func TestAdministration(t *testing.T) {
	dsn := pgtest.DB(t)
	q := open(t, dsn, Options{})
	id := enqueue(t, q, "s@src.test", "x\r\n", "a@dst.test", "b@dst.test")
	for _, step := range []struct {
		name string
		do   func() error
		want error
		st   queue.State
	}{
		{"release not held", func() error { return q.Release(id) }, queue.ErrNotHeld, queue.StateQueued},
		{"hold", func() error { return q.Hold(id) }, nil, queue.StateHeld},
		{"retry held", func() error { return q.Retry(id) }, queue.ErrHeld, queue.StateHeld},
		{"release", func() error { return q.Release(id) }, nil, queue.StateQueued},
		{"retry", func() error { return q.Retry(id) }, nil, queue.StateQueued},
		{"bounce", func() error { return q.Bounce(id) }, nil, queue.StateFailed},
		{"hold final", func() error { return q.Hold(id) }, queue.ErrFinal, queue.StateFailed},
	} {
		err := step.do()
		if err != step.want && !(step.want != nil && strings.Contains(fmt.Sprint(err), step.want.Error())) {
			t.Fatalf("%s: %v, want %v", step.name, err, step.want)
		}
		m, err := q.Get(id)
		if err != nil || m.State != step.st {
			t.Fatalf("%s: state %v (%v), want %s", step.name, m, err, step.st)
		}
	}
	// The bounce went to the sender.
	all, err := q.List(queue.Filter{})
	if err != nil || len(all) != 2 || all[1].Envelope.From != "" || all[1].Rcpts[0].Address != "s@src.test" {
		t.Fatalf("List = %v, %v", all, err)
	}
	if d := q.Depth(); d[queue.StateFailed] != 1 || d[queue.StateQueued] != 1 {
		t.Errorf("Depth = %v", d)
	}
	failed, _ := q.List(queue.Filter{State: queue.StateFailed})
	if len(failed) != 1 || failed[0].ID != id {
		t.Errorf("List(failed) = %v", failed)
	}
	if err := q.Delete(id); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(id); err == nil {
		t.Error("second Delete succeeded")
	}
	if _, err := q.Get("not-an-id"); err == nil {
		t.Error("Get of garbage succeeded")
	}
	if n, err := q.RetryAll(); err != nil || n != 1 {
		t.Errorf("RetryAll = %d, %v", n, err)
	}
}

func TestSuppressionsStateIdempotency(t *testing.T) {
	dsn := pgtest.DB(t)
	q := open(t, dsn, Options{})
	if err := q.Suppress(queue.Suppression{User: "u", Address: "X@d.test"}); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	q.Suppress(queue.Suppression{User: "u", Address: "old@d.test", Expires: past})
	if s, _ := q.Suppressed("u", "x@D.test"); s == nil || s.Reason != queue.SuppressManual {
		t.Errorf("Suppressed = %v", s)
	}
	if s, _ := q.Suppressed("other", "x@d.test"); s != nil {
		t.Errorf("another user's suppression applies: %v", s)
	}
	if l, _ := q.Suppressions("u", false); len(l) != 1 {
		t.Errorf("Suppressions hides no expired entry: %v", l)
	}
	if err := q.Unsuppress("u", "old@d.test"); err == nil {
		t.Error("Unsuppress of an expired entry succeeded")
	}
	if err := q.Unsuppress("u", "x@d.test"); err != nil {
		t.Error(err)
	}

	type val struct{ N int }
	st, _ := queue.NewStateStore[val](q, "ns")
	if err := st.PutAll(map[string]val{"a": {1}, "b": {2}}); err != nil {
		t.Fatal(err)
	}
	st.Delete("b")
	if v, ok, err := st.Get("a"); !ok || err != nil || v.N != 1 {
		t.Errorf("Get = %v %v %v", v, ok, err)
	}
	if l, _ := st.List(); len(l) != 1 {
		t.Errorf("List = %v", l)
	}

	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: "s@src.test", User: "u", IdempotencyKey: "k1",
		MessageID: "<m@x>", Rcpts: []string{"r@d.test"}}, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := q.Idempotent("u", "k1")
	if err != nil || a == nil || a.ID != id || a.MessageID != "<m@x>" {
		t.Errorf("Idempotent = %+v, %v (id %s)", a, err, id)
	}
	if a, _ := q.Idempotent("v", "k1"); a != nil {
		t.Errorf("another user's key: %+v", a)
	}
}

// Nodes starting at once on an empty database migrate it once.
func TestConcurrentMigration(t *testing.T) {
	dsn := pgtest.DB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q, err := Open(context.Background(), Options{DSN: dsn})
			if err == nil {
				q.Close(context.Background())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	q := open(t, dsn, Options{})
	var v, n int
	q.pool.QueryRow(context.Background(), `SELECT max(version), count(*) FROM postern_schema`).Scan(&v, &n)
	if v != len(migrations) || n != 1 {
		t.Errorf("schema version %d in %d rows", v, n)
	}
}

func TestBadDSNNotQuoted(t *testing.T) {
	_, err := Open(context.Background(), Options{DSN: "postgres://u:s3cret@[bad"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v", err)
	}
}

// Held and released while a dead node held its lease, a message is not
// lost: it comes due when that lease ends. Held, it is not leased.
func TestHoldReleaseWhileLeased(t *testing.T) {
	dsn := pgtest.DB(t)
	lease := 1500 * time.Millisecond
	dead := open(t, dsn, Options{Lease: lease, Node: "dead", Retry: queue.Retry{Initial: 100 * time.Millisecond}})
	id := enqueue(t, dead, "a@src.test", "x\r\n", "r@dst.test")
	held := enqueue(t, dead, "a@src.test", "y\r\n", "s@dst.test")
	if err := dead.Hold(held); err != nil {
		t.Fatal(err)
	}
	if jobs, _, err := dead.leaseDue(10); err != nil || len(jobs) != 1 {
		t.Fatalf("lease = %v, %v", jobs, err)
	}
	if err := dead.Hold(id); err != nil {
		t.Fatal(err)
	}
	if err := dead.Release(id); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	other := open(t, dsn, Options{Deliverer: rec, Lease: lease, Node: "other"})
	other.Start()
	eventually(t, "delivery after the lease", func() bool { return rec.rcptCalls("r@dst.test") == 1 })
	time.Sleep(300 * time.Millisecond)
	if n := rec.rcptCalls("s@dst.test"); n != 0 {
		t.Errorf("held message delivered %d times", n)
	}
	if m, err := other.Get(held); err != nil || m.State != queue.StateHeld {
		t.Errorf("held message: %v, %v", m, err)
	}
}

// A node that stops with an attempt cut off gives the message back at
// once: another node delivers it without waiting for the lease to end.
func TestCloseGivesLeasesBack(t *testing.T) {
	dsn := pgtest.DB(t)
	stuck := &recorder{block: make(chan struct{})}
	a := open(t, dsn, Options{Deliverer: stuck, Node: "a", Lease: time.Hour, Retry: queue.Retry{Initial: 50 * time.Millisecond}})
	a.Start()
	enqueue(t, a, "s@src.test", "x\r\n", "r@dst.test")
	eventually(t, "the attempt under way", func() bool {
		var n int
		a.pool.QueryRow(context.Background(), `SELECT count(*) FROM postern_messages WHERE lease_owner LIKE 'a#%'`).Scan(&n)
		return n == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	a.Close(ctx) // the attempt is cut off: its result is not recorded
	cancel()
	rec := &recorder{}
	b := open(t, dsn, Options{Deliverer: rec, Node: "b", Lease: time.Hour})
	b.Start()
	eventually(t, "delivery by b long before a's hour-long lease", func() bool { return rec.count() == 1 })
}

// Two processes given one node name: the one that stops gives back only
// its own leases, not the other's (which would let a third node deliver
// a message the other is still delivering).
func TestSameNodeNameKeepsLeasesApart(t *testing.T) {
	dsn := pgtest.DB(t)
	a := open(t, dsn, Options{Node: "same", Lease: time.Hour})
	b := open(t, dsn, Options{Node: "same", Lease: time.Hour})
	enqueue(t, a, "s@src.test", "x\r\n", "r@dst.test")
	if jobs, _, err := a.leaseDue(10); err != nil || len(jobs) != 1 {
		t.Fatalf("lease = %v, %v", jobs, err)
	}
	b.Close(context.Background())
	var owner *string
	a.pool.QueryRow(context.Background(), `SELECT lease_owner FROM postern_messages`).Scan(&owner)
	if owner == nil || !strings.HasPrefix(*owner, "same#") {
		t.Errorf("a's lease after b stopped: owner %v", owner)
	}
}

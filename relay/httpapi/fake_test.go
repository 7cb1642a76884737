package httpapi

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"postern/queue"
)

// fakeQueue is an in-memory Queue that follows the contract the Queue
// interface documents, with programmable failure (err).
type fakeQueue struct {
	mu    sync.Mutex
	msgs  []*queue.Message // oldest first
	err   error            // if set, every method fails with it
	calls []string
}

var _ Queue = (*fakeQueue)(nil)

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

// newFakeQueue holds four messages: 1 queued, 2 deferred, 3 held, 4 failed
// (a record kept after its last recipient failed).
func newFakeQueue() *fakeQueue {
	f := &fakeQueue{}
	add := func(id string, st queue.State, from string, rcpts ...string) *queue.Message {
		m := &queue.Message{ID: id, Envelope: queue.Envelope{From: from}, Created: t0, Size: 1000, State: st}
		for _, r := range rcpts {
			m.Rcpts = append(m.Rcpts, queue.Recipient{Address: r, State: st})
		}
		f.msgs = append(f.msgs, m)
		return m
	}
	add("0000000000000001", queue.StateQueued, "alice@example.org", "bob@example.com")
	add("0000000000000002", queue.StateDeferred, "alice@example.org", "carol@example.net")
	held := add("0000000000000003", queue.StateDeferred, "", "dave@example.net")
	held.Held, held.State = true, queue.StateHeld
	add("0000000000000004", queue.StateFailed, "alice@example.org", "erin@example.com")
	return f
}

func (f *fakeQueue) call(name, id string) (*queue.Message, error) {
	f.calls = append(f.calls, name+" "+id)
	if f.err != nil {
		return nil, f.err
	}
	for _, m := range f.msgs {
		if m.ID == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
}

// pending returns the state the message has when not held.
func pending(m *queue.Message) queue.State { return m.Rcpts[0].State }

func (f *fakeQueue) List(flt queue.Filter) ([]*queue.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "list "+string(flt.State))
	if f.err != nil {
		return nil, f.err
	}
	var out []*queue.Message
	for _, m := range f.msgs {
		if flt.State == "" || m.State == flt.State {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *fakeQueue) Get(id string) (*queue.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.call("get", id)
}

func (f *fakeQueue) Hold(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.call("hold", id)
	if err != nil {
		return err
	}
	if m.State == queue.StateFailed {
		return queue.ErrFinal
	}
	m.Held, m.State = true, queue.StateHeld
	return nil
}

func (f *fakeQueue) Release(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.call("release", id)
	if err != nil {
		return err
	}
	if !m.Held {
		return fmt.Errorf("%w: %s", queue.ErrNotHeld, id)
	}
	m.Held, m.State = false, pending(m)
	return nil
}

func (f *fakeQueue) Retry(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.call("retry", id)
	switch {
	case err != nil:
		return err
	case m.State == queue.StateFailed:
		return queue.ErrFinal
	case m.Held:
		return queue.ErrHeld
	}
	return nil
}

func (f *fakeQueue) RetryAll() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "retry-all")
	if f.err != nil {
		return 0, f.err
	}
	n := 0
	for _, m := range f.msgs {
		if m.State == queue.StateQueued || m.State == queue.StateDeferred {
			n++
		}
	}
	return n, nil
}

func (f *fakeQueue) Delete(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.call("delete", id); err != nil {
		return err
	}
	f.drop(id)
	return nil
}

func (f *fakeQueue) Bounce(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.call("bounce", id)
	if err != nil {
		return err
	}
	if m.State == queue.StateFailed {
		return queue.ErrFinal
	}
	f.drop(id) // the real queue keeps a failed record; the fake need not
	return nil
}

func (f *fakeQueue) drop(id string) {
	f.msgs = slices.DeleteFunc(f.msgs, func(m *queue.Message) bool { return m.ID == id })
}

func (f *fakeQueue) Depth() map[queue.State]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := map[queue.State]int{}
	for _, m := range f.msgs {
		d[m.State]++
	}
	return d
}

func (f *fakeQueue) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

package outbound

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"postern/queue"
	"postern/queue/reply"
)

var t0 = time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)

// clock is a fake clock for a Shaper.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestShaper(cfg Shaping) (*Shaper, *clock) {
	c := &clock{t: t0}
	cfg.Now = c.now
	return NewShaper(cfg), c
}

var rateLimited = reply.Reply{Code: 421, Enhanced: reply.MustEnhanced("4.7.28"), Text: "rate limited, slow down"}

var testPatterns = []RateLimitPattern{{Enhanced: reply.MustEnhanced("4.7.28")}}

// known returns domain's destination, its MX hosts known and answering.
func known(s *Shaper, domain string, hosts ...string) *unit {
	d := s.destination(domain, hosts)
	s.report(d, attemptReport{started: s.cfg.Now(), answered: true})
	return d
}

func TestProviderMatching(t *testing.T) {
	s, _ := newTestShaper(Shaping{Providers: []Provider{
		{Name: "google", MXSuffixes: []string{".google.com", ".googlemail.com"}},
		{Name: "outlook", MXSuffixes: []string{".outlook.com"}},
		{Name: "office365", MXSuffixes: []string{".mail.protection.outlook.com"}},
	}})
	for _, tc := range []struct {
		hosts []string
		want  string
	}{
		{[]string{"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"}, "google"},
		{[]string{"aspmx.l.google.com", "aspmx2.googlemail.com"}, "google"},
		{[]string{"ASPMX.L.GOOGLE.COM."}, "google"},
		{[]string{"example-com.mail.protection.outlook.com"}, "office365"}, // the longer suffix
		{[]string{"hotmail-com.olc.protection.outlook.com"}, "outlook"},
		{[]string{"mx.example.test"}, ""},
		{[]string{"google.com.evil.test"}, ""},
		{[]string{"notgoogle.com"}, ""}, // a suffix is matched with its dot
		// Most hosts decide: one stray host does not make it Google.
		{[]string{"mx1.example.test", "mx2.example.test", "backup.google.com"}, "google"},
	} {
		d := known(s, "x.test", tc.hosts...)
		got := ""
		if d.provider != nil {
			got = d.provider.name
		}
		if got != tc.want {
			t.Errorf("%v: provider %q, want %q", tc.hosts, got, tc.want)
		}
	}
	// Domains on the same MX hosts share one destination, whatever the
	// order and case of the hosts.
	a := known(s, "a.test", "mx2.example.net", "MX1.example.net.")
	b := known(s, "b.test", "mx1.example.net", "mx2.example.net")
	if a != b || a.name != "mx1.example.net,mx2.example.net" {
		t.Errorf("destinations %q and %q, want one, mx1.example.net,mx2.example.net", a.name, b.name)
	}
}

// TestAdmitConnections: a destination admits its connection limit and
// then refuses with a signal that a release closes; a provider's limit
// holds across its destinations; a domain whose MX hosts are not known
// yet, and a destination none of whose hosts has answered yet, get one
// attempt at a time.
func TestAdmitConnections(t *testing.T) {
	s, c := newTestShaper(Shaping{
		Default:   Limits{Connections: 2},
		Providers: []Provider{{Name: "big", MXSuffixes: []string{".big.test"}, Limits: Limits{Connections: 3}}},
	})
	now := c.now()

	unknown := s.admit("new.test", now, false)
	if !unknown.Admitted() {
		t.Fatal("first attempt at an unknown domain refused")
	}
	if a := s.admit("new.test", now, false); a.Admitted() || a.Wait == nil {
		t.Errorf("second attempt at an unknown domain: %+v, want a refusal with a signal", a)
	}
	d := s.destination("new.test", []string{"mx.new.test"})
	if a := s.admit("new.test", now, false); !a.Admitted() {
		t.Error("refused once the MX hosts are known")
	}
	if a := s.admit("new.test", now, false); a.Admitted() {
		t.Error("two attempts at once before any host answered")
	}
	s.report(d, attemptReport{started: now, answered: true})
	if a := s.admit("new.test", now, false); !a.Admitted() {
		t.Error("refused after a host answered")
	}

	known(s, "one.test", "mx.one.test")
	first, second := s.admit("one.test", now, false), s.admit("one.test", now, false)
	third := s.admit("one.test", now, false)
	if !first.Admitted() || !second.Admitted() || third.Admitted() || third.Wait == nil {
		t.Fatalf("admissions %v %v %+v, want two, then a refusal with a signal", first.Admitted(), second.Admitted(), third)
	}
	select {
	case <-third.Wait:
		t.Fatal("signal before any release")
	default:
	}
	first.Release()
	first.Release() // a second call does nothing
	<-third.Wait
	if a := s.admit("one.test", now, false); !a.Admitted() {
		t.Error("refused after a release")
	}
	if a := s.admit("one.test", now, false); a.Admitted() {
		t.Error("admitted beyond the limit after a double release")
	}

	known(s, "p1.test", "mx.p1.big.test")
	known(s, "p2.test", "mx.p2.big.test")
	for i, dom := range []string{"p1.test", "p2.test", "p1.test"} {
		if !s.admit(dom, now, false).Admitted() {
			t.Fatalf("provider admission %d refused", i)
		}
	}
	if a := s.admit("p2.test", now, false); a.Admitted() || a.Wait == nil {
		t.Errorf("fourth attempt at a provider limited to 3: %+v", a)
	}
}

// TestAdmitRate: a configured rate admits its burst, then one message per
// interval, with the time of the next slot in the refusal.
func TestAdmitRate(t *testing.T) {
	s, c := newTestShaper(Shaping{Default: Limits{Rate: Rate{Messages: 2, Per: time.Second}}})
	known(s, "r.test", "mx.r.test")
	for i := range 2 {
		if a := s.admit("r.test", c.now(), false); !a.Admitted() {
			t.Fatalf("burst admission %d refused", i)
		}
	}
	a := s.admit("r.test", c.now(), false)
	if a.Admitted() || !a.Until.Equal(c.now().Add(500*time.Millisecond)) || !a.Suspended.IsZero() {
		t.Fatalf("past the burst: %+v, want a refusal until +500ms", a)
	}
	c.advance(500 * time.Millisecond)
	if !s.admit("r.test", c.now(), false).Admitted() {
		t.Error("refused at the next slot")
	}
}

// TestSlowDownAndRecover: a rate-limit reply halves the rate the
// destination was delivering at and suspends it briefly; refusals of
// attempts started before that change nothing; a refusal with no
// delivery since doubles the suspension but leaves the rate (it was not
// tried); one after a delivery halves it again; deliveries raise the rate
// step by step until the limit is lifted.
func TestSlowDownAndRecover(t *testing.T) {
	s, c := newTestShaper(Shaping{RateLimitPatterns: testPatterns})
	d := known(s, "p.test", "mx.p.test")
	// 8 deliveries in the destination's first second: 8 a second (not
	// 0.8, its average over the window).
	for range 8 {
		s.report(d, attemptReport{started: c.now(), delivered: true, answered: true})
	}
	c.advance(time.Second)
	refuse := func(started time.Time) {
		r := rateLimited
		p, ok := s.rateLimit(r)
		if !ok {
			t.Fatal("pattern does not match")
		}
		s.report(d, attemptReport{started: started, rateLimited: &r, pattern: p, answered: true})
	}
	early := c.now().Add(-time.Second)
	refuse(early)
	if d.rate != 4 {
		t.Fatalf("rate after the first refusal %v, want 4 (half of 8/s)", d.rate)
	}
	a := s.admit("p.test", c.now(), false)
	if a.Admitted() || !a.Until.Equal(c.now().Add(DefaultSuspendFor)) || !a.Suspended.IsZero() {
		t.Fatalf("right after a refusal: %+v, want parked until +%v", a, DefaultSuspendFor)
	}
	refuse(early) // started before the slow-down: its echo
	if d.rate != 4 || d.rateLimited != 2 || !d.suspended.Equal(c.now().Add(DefaultSuspendFor)) {
		t.Errorf("after an echo: rate %v, %d refusals counted; want 4, 2", d.rate, d.rateLimited)
	}
	c.advance(DefaultSuspendFor)
	refuse(c.now())
	if d.rate != 4 || !d.suspended.Equal(c.now().Add(2*DefaultSuspendFor)) {
		t.Errorf("after a refusal with no delivery since: rate %v, suspended until %v; want 4, +%v", d.rate, d.suspended, 2*DefaultSuspendFor)
	}
	c.advance(2 * DefaultSuspendFor)
	s.report(d, attemptReport{started: c.now(), delivered: true, answered: true}) // 4 → 4.25
	refuse(c.now())
	if want := 4.25 / 2; d.rate != want || !d.suspended.Equal(c.now().Add(DefaultSuspendFor)) {
		t.Errorf("after a refusal following a delivery: rate %v, suspended until %v; want %v, +%v", d.rate, d.suspended, want, DefaultSuspendFor)
	}
	if got := d.describe(c.now()); got.State != "suspended" || got.LastReply != rateLimited || got.Limits.Rate != 4.25/2 {
		t.Errorf("described as %+v", got)
	}

	// Recovery: each delivery raises the rate by a sixteenth, and the
	// limit is lifted at liftRate.
	c.advance(time.Minute)
	n := 0
	for ; d.slowed() && n < 1000; n++ {
		s.report(d, attemptReport{started: c.now(), delivered: true, answered: true})
	}
	if n < 16 || n > 100 || d.rate != 0 {
		t.Errorf("%d deliveries to lift the limit (rate now %v), want a gradual climb from 2/s to %v/s", n, d.rate, liftRate)
	}
	if d.suspendFor != DefaultSuspendFor {
		t.Errorf("suspension %v after deliveries, want back to %v", d.suspendFor, DefaultSuspendFor)
	}
}

// TestSlowDownProvider: a rate-limit reply from one destination of a
// provider slows down and suspends the provider, and with it every
// destination of the provider; a long enough suspension defers instead of
// parking, with the provider's reason.
func TestSlowDownProvider(t *testing.T) {
	s, c := newTestShaper(Shaping{
		Providers: []Provider{{Name: "big", MXSuffixes: []string{".big.test"}}},
		RateLimitPatterns: []RateLimitPattern{
			{Text: regexp.MustCompile(`(?i)go away for an hour`), Suspend: time.Hour},
			{Enhanced: reply.MustEnhanced("4.7.28")},
		},
	})
	d1 := known(s, "one.test", "mx.one.big.test")
	known(s, "two.test", "mx.two.big.test")
	r := reply.Reply{Code: 450, Enhanced: reply.MustEnhanced("4.7.0"), Text: "Go away for an hour"}
	p, _ := s.rateLimit(r)
	s.report(d1, attemptReport{started: c.now(), rateLimited: &r, pattern: p, answered: true})
	a := s.admit("two.test", c.now(), false)
	want := reply.Reply{Enhanced: reply.MustEnhanced("4.7.0"), Text: "delivery temporarily suspended: 450 4.7.0 Go away for an hour"}
	if a.Admitted() || !a.Until.Equal(c.now().Add(time.Hour)) || a.Suspended != want {
		t.Errorf("another destination of the provider: %+v, want suspended for an hour with %q", a, want)
	}
	var got []string
	for _, d := range s.Destinations() {
		got = append(got, d.Kind+" "+d.Name+" "+d.State+" "+d.Provider)
	}
	if want := "provider big suspended |destination mx.one.big.test idle big|destination mx.two.big.test idle big"; strings.Join(got, "|") != want {
		t.Errorf("Destinations:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.ReplaceAll(want, "|", "\n"))
	}
}

// TestDeadDestination: attempts whose every host fails to connect make the
// destination dead after DeadAfter in a row: its work is deferred with
// Postfix's "delivery temporarily suspended" and the cause. When that ends,
// one probe goes; a failed probe makes it dead again for twice as long, a
// host that answers brings it back.
func TestDeadDestination(t *testing.T) {
	s, c := newTestShaper(Shaping{})
	d := known(s, "dead.test", "mx.dead.test")
	cause := reply.Reply{Enhanced: reply.MustEnhanced("4.4.1"), Text: "mx.dead.test[192.0.2.1]: dial tcp 192.0.2.1:25: connect: connection refused"}
	fail := func() { s.report(d, attemptReport{started: c.now(), connFails: 1, connCause: cause}) }

	fail()
	if a := s.admit("dead.test", c.now(), false); !a.Admitted() {
		t.Fatalf("after one failure: %+v, want a probe admitted", a)
	} else if b := s.admit("dead.test", c.now(), false); b.Admitted() {
		t.Error("two attempts at once after a failure, want one probe at a time")
	} else {
		a.Release()
	}
	fail()
	a := s.admit("dead.test", c.now(), false)
	want := reply.Reply{Enhanced: reply.MustEnhanced("4.4.1"), Text: "delivery temporarily suspended: " + cause.Text}
	if a.Admitted() || !a.Until.Equal(c.now().Add(DefaultDeadFor)) || a.Suspended != want {
		t.Fatalf("after %d failures: %+v, want dead for %v with %q", DefaultDeadAfter, a, DefaultDeadFor, want)
	}
	if got := d.describe(c.now()); got.State != "dead" || got.ConnectionFailures != 2 {
		t.Errorf("described as %+v", got)
	}

	// An operator's retry goes through, as a probe: one at a time.
	forced := s.admit("dead.test", c.now(), true)
	if !forced.Admitted() || s.admit("dead.test", c.now(), true).Admitted() {
		t.Fatal("an operator's retries of a dead destination: want exactly one through at a time")
	}
	forced.Release()

	c.advance(DefaultDeadFor)
	probe := s.admit("dead.test", c.now(), false)
	if !probe.Admitted() || s.admit("dead.test", c.now(), false).Admitted() {
		t.Fatal("after the dead time: want exactly one probe")
	}
	fail()
	probe.Release()
	if a := s.admit("dead.test", c.now(), false); !a.Until.Equal(c.now().Add(2 * DefaultDeadFor)) {
		t.Errorf("after a failed probe: until %v, want +%v", a.Until, 2*DefaultDeadFor)
	}

	c.advance(2 * DefaultDeadFor)
	probe = s.admit("dead.test", c.now(), false)
	s.report(d, attemptReport{started: c.now(), answered: true, delivered: true})
	probe.Release()
	for i := range DefaultConnections {
		if !s.admit("dead.test", c.now(), false).Admitted() {
			t.Fatalf("answering again: attempt %d refused, want %d at once", i, DefaultConnections)
		}
	}
}

// TestForget: a destination without traffic is forgotten, a provider's
// slow-down undone.
func TestForget(t *testing.T) {
	s, c := newTestShaper(Shaping{RateLimitPatterns: testPatterns,
		Providers: []Provider{{Name: "big", MXSuffixes: []string{".big.test"}}}})
	d := known(s, "a.test", "mx.big.test")
	r := rateLimited
	s.report(d, attemptReport{started: c.now(), rateLimited: &r, pattern: testPatterns[0], answered: true})
	c.advance(forgetAfter + gcEvery)
	s.admit("other.test", c.now(), false) // runs the collection
	if _, ok := s.units[d.name]; ok {
		t.Error("a destination idle for longer than forgetAfter is kept")
	}
	if s.domains["a.test"] != nil {
		t.Error("its domain still points at it")
	}
	if p := s.units["big"]; p.slowed() {
		t.Errorf("the provider is still slowed to %v/s", p.rate)
	}
}

// TestAgainstRateLimitingProvider plays the case against the
// state machine, on the fake clock: a provider that accepts 10 messages in
// any 10 seconds and answers "421 4.7.28" beyond, 400 messages waiting,
// every attempt taking 50 ms. Over 60 seconds postern may make at most
// one refused attempt per message delivered, and keeps delivering: the
// provider's limit allows 60, so at least 40 must go.
func TestAgainstRateLimitingProvider(t *testing.T) {
	s, c := newTestShaper(Shaping{RateLimitPatterns: testPatterns,
		Providers: []Provider{{Name: "gmail", MXSuffixes: []string{".google.test"}}}})
	d := known(s, "gmail.test", "mx.google.test")
	const latency = 50 * time.Millisecond
	type flight struct {
		started, ends time.Time
		admission     queue.Admission
	}
	var (
		inFlight           []flight
		accepted           []time.Time // by the provider
		delivered, refused int
		pending            = 400
		parkedTill         time.Time
		end                = t0.Add(60 * time.Second)
		wait               <-chan struct{}
	)
	for ; c.now().Before(end); c.advance(10 * time.Millisecond) {
		now := c.now()
		// Attempts that end now get the provider's answer.
		rest := inFlight[:0]
		for _, f := range inFlight {
			if f.ends.After(now) {
				rest = append(rest, f)
				continue
			}
			n := 0
			for _, at := range accepted {
				if now.Sub(at) < 10*time.Second {
					n++
				}
			}
			if n < 10 {
				accepted = append(accepted, now)
				delivered++
				pending--
				s.report(d, attemptReport{started: f.started, delivered: true, answered: true})
			} else {
				refused++
				r := rateLimited
				s.report(d, attemptReport{started: f.started, rateLimited: &r, pattern: testPatterns[0], answered: true})
			}
			f.admission.Release()
		}
		inFlight = rest
		// The queue asks again when parked work comes due or a slot
		// frees, and admits while the Shaper lets it.
		if wait != nil {
			select {
			case <-wait:
				wait = nil
			default:
			}
		}
		if now.Before(parkedTill) || wait != nil {
			continue
		}
		for pending > len(inFlight) {
			a := s.admit("gmail.test", now, false)
			if !a.Admitted() {
				parkedTill, wait = a.Until, a.Wait
				break
			}
			inFlight = append(inFlight, flight{started: now, ends: now.Add(latency), admission: a})
		}
	}
	t.Logf("60 s: %d delivered, %d refused; provider now %+v", delivered, refused, s.units["gmail"].describe(c.now()))
	if refused > delivered {
		t.Errorf("%d refused attempts for %d delivered messages, want at most one per delivery", refused, delivered)
	}
	if delivered < 40 {
		t.Errorf("%d delivered in 60 s, want at least 40 of the 60 the provider allows", delivered)
	}
}

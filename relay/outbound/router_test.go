package outbound_test

import (
	"context"
	"net"
	"strconv"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"postern/queue"
	"postern/relay/outbound"
)

func TestMatchDomain(t *testing.T) {
	for _, tt := range []struct {
		list   []string
		domain string
		want   bool
	}{
		{[]string{"example.test"}, "example.test", true},
		{[]string{"example.test"}, "EXAMPLE.test.", true},
		{[]string{"Example.Test"}, "example.test", true},
		{[]string{"example.test"}, "sub.example.test", false},
		{[]string{".example.test"}, "sub.example.test", true},
		{[]string{".example.test"}, "a.b.example.test", true},
		{[]string{".example.test"}, "example.test", true},
		{[]string{".example.test"}, "badexample.test", false},
		{[]string{"example.test"}, "example.test.evil", false},
		{[]string{"a.test", ".b.test"}, "x.b.test", true},
		{[]string{"a.test"}, "", false},
		{[]string{"."}, "example.test", false},
		{nil, "example.test", false},
	} {
		if got := outbound.MatchDomain(tt.list, tt.domain); got != tt.want {
			t.Errorf("MatchDomain(%q, %q) = %v, want %v", tt.list, tt.domain, got, tt.want)
		}
	}
}

func TestRouterChoose(t *testing.T) {
	mx := outbound.New(outbound.Options{})
	sh := func(name string) *outbound.Smarthost {
		h, err := outbound.NewSmarthost(outbound.SmarthostConfig{Name: name, Address: name + ".test:587"}, outbound.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	provider, backup, corp := sh("provider"), sh("backup"), sh("corp")
	direct := outbound.Path{MX: mx}
	r, err := outbound.NewRouter([]outbound.Route{
		{Name: "routes[0]", RecipientDomains: []string{"corp.test"}, Via: outbound.Path{Smarthosts: outbound.Failover{corp}}},
		{Name: "routes[1]", RecipientDomains: []string{"gmail.test"}, SenderDomains: []string{".app.test"},
			Via: direct, FallbackAfter: 2, Fallback: outbound.Path{Smarthosts: outbound.Failover{provider}}},
		{Name: "routes[2]", SenderDomains: []string{"newsletter.test"}, Via: direct},
	}, outbound.Path{Smarthosts: outbound.Failover{provider, backup}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, from, domain string
		attempt            int
		route, via         string
	}{
		{"recipient domain", "a@any.test", "corp.test", 1, "routes[0]", "smarthost corp"},
		{"first match wins", "a@newsletter.test", "corp.test", 1, "routes[0]", "smarthost corp"},
		{"both must match", "a@other.test", "gmail.test", 1, "default_route", "smarthost provider, backup"},
		{"sender subdomain", "a@eu.app.test", "gmail.test", 1, "routes[1]", "mx"},
		{"sender domain itself", "a@app.test", "gmail.test", 2, "routes[1]", "mx"},
		{"fallback after N attempts", "a@app.test", "gmail.test", 3, "routes[1].fallback", "smarthost provider"},
		{"sender only", "a@NewsLetter.test", "x.test", 1, "routes[2]", "mx"},
		{"null sender matches no sender rule", "", "x.test", 1, "default_route", "smarthost provider, backup"},
		{"no match", "a@x.test", "y.test", 7, "default_route", "smarthost provider, backup"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &queue.Delivery{From: tt.from, Domain: tt.domain, Rcpts: []string{"b@" + tt.domain}, Attempt: tt.attempt}
			route, p := r.Choose(d)
			if route != tt.route || p.String() != tt.via {
				t.Errorf("Choose = %q via %q, want %q via %q", route, p, tt.route, tt.via)
			}
		})
	}

	for _, bad := range [][]outbound.Route{
		{{Name: "r", RecipientDomains: []string{"x.test"}}},                                // no via
		{{Name: "r", Via: direct}},                                                         // matches nothing
		{{Name: "r", RecipientDomains: []string{"x.test"}, Via: direct, FallbackAfter: 1}}, // no fallback
		{{Name: "r", RecipientDomains: []string{"x.test"}, Via: outbound.Path{MX: mx, Smarthosts: outbound.Failover{corp}}}},
	} {
		if _, err := outbound.NewRouter(bad, direct); err == nil {
			t.Errorf("NewRouter(%+v) succeeded", bad)
		}
	}
}

// TestRouterDelivers runs one route through a smarthost and the default
// straight to an MX, and checks each server got its domain only and the
// log names the route.
func TestRouterDelivers(t *testing.T) {
	e := newEnv(t)
	relayRx := e.receiver("127.0.0.3")
	mxRx := e.receiver("127.0.0.2")
	e.mx("direct.test", 10, "mx1.direct.test", "127.0.0.2")
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	h, err := outbound.NewSmarthost(outbound.SmarthostConfig{
		Name: "provider", Address: net.JoinHostPort("127.0.0.3", strconv.Itoa(e.port)), TLS: outbound.NoTLS,
	}, outbound.Options{Hostname: "postern.test", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	mx := e.deliverer(outbound.Options{Logger: log})
	r, err := outbound.NewRouter([]outbound.Route{
		{Name: "routes[0]", RecipientDomains: []string{"relayed.test"}, Via: outbound.Path{Smarthosts: outbound.Failover{h}}},
	}, outbound.Path{MX: mx})
	if err != nil {
		t.Fatal(err)
	}
	check(t, r.Deliver(context.Background(), e.delivery("relayed.test", "b@relayed.test")),
		want{queue.Delivered, "250 ", "127.0.0.3 (smarthost provider)"})
	check(t, r.Deliver(context.Background(), e.delivery("direct.test", "c@direct.test")),
		want{queue.Delivered, "250 ", "mx1.direct.test"})
	if m := relayRx.Messages(); len(m) != 1 || m[0].To[0] != "b@relayed.test" {
		t.Errorf("smarthost got %+v", m)
	}
	if m := mxRx.Messages(); len(m) != 1 || m[0].To[0] != "c@direct.test" {
		t.Errorf("MX got %+v", m)
	}
	lines := logs.FilterMessage("delivery attempt").AllUntimed()
	if len(lines) != 2 {
		t.Fatalf("attempt lines: %v", logs.AllUntimed())
	}
	if f := lines[0].ContextMap(); f["route"] != "routes[0]" || f["smarthost"] != "provider" {
		t.Errorf("first line = %v", f)
	}
	if f := lines[1].ContextMap(); f["route"] != "default_route" || f["mx"] != "mx1.direct.test" {
		t.Errorf("second line = %v", f)
	}
}

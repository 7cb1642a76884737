package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"postern/configs"
	"postern/queue"
	"postern/relay/httpapi"
)

// configs cannot import the queue, so it keeps its own list of the event
// names webhooks may ask for: it must be the queue's.
func TestWebhookEventsAreTheQueues(t *testing.T) {
	var want []string
	for _, e := range queue.EventTypes() {
		want = append(want, string(e))
	}
	if !slices.Equal(configs.WebhookEvents, want) {
		t.Errorf("configs.WebhookEvents = %v, queue.EventTypes() = %v", configs.WebhookEvents, want)
	}
}

func TestWantsEvent(t *testing.T) {
	ev := func(typ queue.EventType, user string) *queue.Event { return &queue.Event{Type: typ, User: user} }
	if wantsEvent(nil, nil) != nil {
		t.Error("no filter should be nil: every event")
	}
	f := wantsEvent([]string{"message.bounced"}, []string{"alice"})
	for _, tc := range []struct {
		e    *queue.Event
		want bool
	}{
		{ev(queue.EventBounced, "alice"), true},
		{ev(queue.EventDelivered, "alice"), false},
		{ev(queue.EventBounced, "bob"), false},
		{ev(queue.EventBounced, ""), false}, // the relay listener's
	} {
		if got := f(tc.e); got != tc.want {
			t.Errorf("wants(%s, %q) = %v", tc.e.Type, tc.e.User, got)
		}
	}
	if f := wantsEvent(nil, []string{"alice"}); !f(ev(queue.EventAccepted, "alice")) || f(ev(queue.EventAccepted, "bob")) {
		t.Error("users only: wrong")
	}
}

// TestWebhookSecretsChecked: config check reads every secret file and
// reports each one that is missing or not a secret, all at once.
func TestWebhookSecretsChecked(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	os.WriteFile(good, []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"), 0o600)
	os.WriteFile(bad, []byte("hunter2\n"), 0o600)
	cfg := &configs.Config{File: "postern.yaml", Webhooks: []configs.Webhook{
		{Name: "a", SecretFile: good}, {Name: "b", SecretFile: bad}, {Name: "c", SecretFile: filepath.Join(dir, "missing")},
	}}
	p := checkWebhookSecrets(cfg)
	if len(p) != 2 || !strings.Contains(p[0], "webhooks[1].secret_file") || !strings.Contains(p[0], "whsec_") ||
		!strings.Contains(p[1], "webhooks[2].secret_file") || !strings.Contains(p[1], "no such file") {
		t.Errorf("problems %q", p)
	}
	if strings.Contains(strings.Join(p, ""), "hunter2") {
		t.Error("a problem quotes the file's content")
	}
}

func TestWebhookTable(t *testing.T) {
	now := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	var b strings.Builder
	writeWebhookTable(&b, []httpapi.WebhookBacklog{
		{Endpoint: "app", Pending: 3, Failing: 1, Deliveries: []httpapi.WebhookDelivery{{
			EventID: "ev_1", Type: queue.EventBounced, QueueID: "00000000000000AA", Recipient: "b@x.test",
			Attempts: 2, NextAttempt: now.Add(30 * time.Second), LastError: "HTTP 500 Internal Server Error: \"down\n\"",
		}}},
		{Endpoint: "crm", Deliveries: []httpapi.WebhookDelivery{}},
	}, now)
	out := b.String()
	for _, want := range []string{"app: 3 pending, 1 failing", "ev_1", "message.bounced", "00000000000000AA", "b@x.test", "in 30s", `HTTP 500 Internal Server Error: "down "`, "and 2 more", "crm: 0 pending, 0 failing"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// TestConfigCheckWebhooks: one run of config check reports a webhook's
// bad URL (from the config) and another's bad secret file (read as serve
// reads it), and passes once both are right.
func TestConfigCheckWebhooks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "hook.secret")
	os.WriteFile(secret, []byte("not a secret\n"), 0o600)
	hooks := func(url string) string {
		return fmt.Sprintf("webhooks:\n  - {name: a, url: %q, secret_file: %s}\n  - {name: b, url: https://hooks.example.com/b, secret_file: %s}\n", url, secret, secret)
	}
	in := newInstance(t, testConfig{Relay: freeAddr(t), Resolver: "127.0.0.1:53", DeliveryPort: 25, Extra: hooks("http://hooks.example.com/a")})
	var out bytes.Buffer
	err := cmdConfigCheck([]string{"--config", in.cfgPath}, &out)
	msg := fmt.Sprint(err)
	for _, want := range []string{"webhooks[0].url", "plain http to a host that is not loopback",
		"webhooks[0].secret_file", "webhooks[1].secret_file", "must start with \"whsec_\"", "3 problem(s)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("config check lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "not a secret") {
		t.Error("config check quotes the secret file")
	}
	os.WriteFile(secret, []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"), 0o600)
	os.WriteFile(in.cfgPath, []byte(testConfig{Relay: in.cfg.Relay, Resolver: "127.0.0.1:53", DeliveryPort: 25, Extra: hooks("http://127.0.0.1:9/a")}.yaml(in.dir)), 0o600)
	out.Reset()
	if err := cmdConfigCheck([]string{"--config", in.cfgPath}, &out); err != nil {
		t.Errorf("a good webhooks section: %v\n%s", err, out.String())
	}
}

package main

// Delivery webhooks end to end (issue 15): the real binary posts its
// events to a receiver in Python's http.server that checks every
// signature with the Standard Webhooks algorithm on its own
// (testdata/webhook_receiver.py).

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"postern/queue/postgres/pgtest"
	"postern/relay/httpapi"
	"postern/relay/relaytest"
)

// hookReceiver is the Python receiver, run as a child process.
type hookReceiver struct {
	t                    testing.TB
	port                 int
	secret, status, logf string
	cmd                  *exec.Cmd
}

// hookRequest is one request the receiver logged.
type hookRequest struct {
	Path      string  `json:"path"`
	At        float64 `json:"at"`
	ID        string  `json:"id"`
	Timestamp string  `json:"timestamp"`
	Valid     bool    `json:"valid"`
	Status    int     `json:"status"`
	Body      string  `json:"body"`
}

// hookBody is the part of a webhook body the tests read.
type hookBody struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Data      struct {
		QueueID   string            `json:"queue_id"`
		MessageID string            `json:"message_id"`
		Recipient string            `json:"recipient"`
		User      string            `json:"user"`
		Tags      []string          `json:"tags"`
		Metadata  map[string]string `json:"metadata"`
		Attempt   int               `json:"attempt"`
		RemoteMTA string            `json:"remote_mta"`
		Reply     *struct {
			Code         int    `json:"code"`
			EnhancedCode string `json:"enhanced_code"`
			Text         string `json:"text"`
		} `json:"reply"`
	} `json:"data"`
}

// startHookReceiver runs the receiver with a fresh secret, answering with
// statuses (see the script).
func startHookReceiver(t testing.TB, statuses string) *hookReceiver {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	h := &hookReceiver{t: t, secret: filepath.Join(dir, "secret"), status: filepath.Join(dir, "status"), logf: filepath.Join(dir, "requests.jsonl")}
	os.WriteFile(h.secret, []byte("whsec_"+base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
	h.setStatus(statuses)
	h.cmd = exec.Command("python3", "testdata/webhook_receiver.py", h.secret, h.status, h.logf)
	h.cmd.Stderr = os.Stderr
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.cmd.Process.Kill(); h.cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if _, err2 := fmt.Sscan(line, &h.port); err != nil || err2 != nil {
		t.Fatalf("the receiver did not say its port: %q %v", line, err)
	}
	return h
}

func (h *hookReceiver) setStatus(s string) {
	if err := os.WriteFile(h.status, []byte(s), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// config is the webhooks section for postern.
func (h *hookReceiver) config() string {
	return fmt.Sprintf("webhooks:\n  - name: app\n    url: http://127.0.0.1:%d/hook\n    secret_file: %s\n", h.port, h.secret)
}

func (h *hookReceiver) requests() []hookRequest {
	h.t.Helper()
	data, err := os.ReadFile(h.logf)
	if err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	var out []hookRequest
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var r hookRequest
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			h.t.Fatalf("receiver log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// accepted returns the requests answered 2xx.
func accepted(rs []hookRequest) []hookRequest {
	var out []hookRequest
	for _, r := range rs {
		if r.Status/100 == 2 {
			out = append(out, r)
		}
	}
	return out
}

// waitAccepted polls the receiver's log until n requests were answered
// 2xx, and returns every request so far.
func (h *hookReceiver) waitAccepted(in *instance, n int, timeout time.Duration) []hookRequest {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rs := h.requests()
		if len(accepted(rs)) >= n {
			return rs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the receiver accepted %d events, want %d; requests: %+v\nlog:\n%s", len(accepted(rs)), n, rs, in.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func decodeBody(t testing.TB, r hookRequest) hookBody {
	t.Helper()
	var b hookBody
	if err := json.Unmarshal([]byte(r.Body), &b); err != nil {
		t.Fatalf("body %q: %v", r.Body, err)
	}
	if b.ID != r.ID {
		t.Errorf("body id %s, webhook-id %s", b.ID, r.ID)
	}
	if _, err := time.Parse(time.RFC3339, b.Timestamp); err != nil {
		t.Errorf("timestamp %q: %v", b.Timestamp, err)
	}
	return b
}

// checkOnceEach fails the test for a request with a bad signature or an
// event accepted twice by one endpoint (each endpoint has its own path;
// two endpoints get the same event with the same id).
func checkOnceEach(t testing.TB, rs []hookRequest) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range rs {
		if !r.Valid {
			t.Errorf("request %s: the signature did not verify", r.ID)
		}
		if r.Status/100 == 2 {
			if seen[r.Path+" "+r.ID] {
				t.Errorf("event %s accepted twice at %s", r.ID, r.Path)
			}
			seen[r.Path+" "+r.ID] = true
		}
	}
}

// TestWebhooksReportEveryOutcome: one message to three recipients, which
// the MX accepts, defers once (451 then 250) and refuses (550 5.1.1): the
// receiver, which refuses the first request with a 500, gets every event
// once, signed, in order per recipient, with the data of each outcome;
// the refused request comes again with the same id and body.
func TestWebhooksReportEveryOutcome(t *testing.T) {
	t.Parallel()
	webhooksReportEveryOutcome(t, false)
}

// The same events, in the same order, from the PostgreSQL queue's outbox.
func TestWebhooksReportEveryOutcomePostgres(t *testing.T) {
	t.Parallel()
	webhooksReportEveryOutcome(t, true)
}

func webhooksReportEveryOutcome(t *testing.T, pg bool) {
	hook := startHookReceiver(t, "500 200")
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	rcv.FailNext(relaytest.CmdRCPT, 451, "4.7.1 greylisted, come back later", 1) // the first RCPT: defer@
	rcv.FailRcpt("bad@dest.test", 550, "5.1.1 no such user")
	cfg := w.config()
	cfg.Extra = hook.config()
	dir := t.TempDir()
	if pg {
		cfg.Extra += postgresQueue(t, dir, pgtest.DB(t), "30s")
	}
	in := newInstanceIn(t, dir, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()
	out, err := submit(t, in, "PLAIN", "alice@example.test", "correct horse", "alice@example.test", "defer@dest.test,ok@dest.test,bad@dest.test")
	if err != nil {
		t.Fatalf("swaks: %v\n%s\npostern's log:\n%s", err, out, in.logs.String())
	}
	m := queuedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no queue ID in:\n%s", out)
	}
	qid := m[1]

	rs := hook.waitAccepted(in, 7, 60*time.Second)
	checkOnceEach(t, rs)
	if rs[0].Status != 500 {
		t.Fatalf("the first request got %d, want the 500 the receiver was told to give", rs[0].Status)
	}
	ok := accepted(rs)
	if len(ok) != 7 {
		t.Fatalf("%d events accepted, want 7: %+v", len(ok), ok)
	}
	if ok[0].ID != rs[0].ID || ok[0].Body != rs[0].Body {
		t.Errorf("the retry of the refused request differs:\nfirst %s %s\nretry %s %s", rs[0].ID, rs[0].Body, ok[0].ID, ok[0].Body)
	}
	perRcpt := map[string][]string{}
	var order []string
	for _, r := range ok {
		b := decodeBody(t, r)
		rcpt := strings.TrimSuffix(b.Data.Recipient, "@dest.test")
		perRcpt[rcpt] = append(perRcpt[rcpt], b.Type)
		order = append(order, b.Type+" "+rcpt)
		if b.Data.QueueID != qid || b.Data.User != "alice@example.test" || b.Data.MessageID != "<e2e-1@example.test>" ||
			b.Data.Tags == nil || b.Data.Metadata == nil {
			t.Errorf("%s: data %+v, want queue id %s, user alice, the Message-ID, empty tags and metadata", b.Type, b.Data, qid)
		}
		var code int
		var enh string
		if b.Data.Reply != nil {
			code, enh = b.Data.Reply.Code, b.Data.Reply.EnhancedCode
		}
		var want struct {
			attempt int
			code    int
			enh     string
		}
		switch b.Type + " " + rcpt {
		case "message.accepted defer", "message.accepted ok", "message.accepted bad":
		case "message.deferred defer":
			want.attempt, want.code, want.enh = 1, 451, "4.7.1"
		case "message.delivered ok":
			want.attempt, want.code = 1, 250
		case "message.bounced bad":
			want.attempt, want.code, want.enh = 1, 550, "5.1.1"
		case "message.delivered defer":
			want.attempt, want.code = 2, 250
		default:
			t.Errorf("unexpected event %s for %s", b.Type, rcpt)
		}
		if b.Data.Attempt != want.attempt || code != want.code || want.enh != "" && enh != want.enh {
			t.Errorf("%s %s: attempt %d reply %d %s, want attempt %d reply %d %s", b.Type, rcpt, b.Data.Attempt, code, enh, want.attempt, want.code, want.enh)
		}
		if want.code != 0 && b.Data.RemoteMTA == "" {
			t.Errorf("%s %s: no remote_mta", b.Type, rcpt)
		}
	}
	for rcpt, want := range map[string][]string{
		"defer": {"message.accepted", "message.deferred", "message.delivered"},
		"ok":    {"message.accepted", "message.delivered"},
		"bad":   {"message.accepted", "message.bounced"},
	} {
		if !slices.Equal(perRcpt[rcpt], want) {
			t.Errorf("%s@ got %v, want %v (all: %v)", rcpt, perRcpt[rcpt], want, order)
		}
	}
	// One message: its events come in the order they were recorded, the
	// three acceptances first.
	if !slices.Equal(order[:3], []string{"message.accepted defer", "message.accepted ok", "message.accepted bad"}) ||
		order[6] != "message.delivered defer" {
		t.Errorf("order %v", order)
	}
}

// webhooksList runs `postern webhooks list --json`.
func webhooksList(t testing.TB, in *instance) []httpapi.WebhookBacklog {
	t.Helper()
	out, err := in.postern("", "webhooks", "list", "--json")
	if err != nil {
		t.Fatalf("webhooks list: %v\n%s", err, out)
	}
	var bs []httpapi.WebhookBacklog
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		t.Fatalf("webhooks list --json: %v\n%s", err, out)
	}
	return bs
}

// TestWebhookSurvivesCrash: the receiver refuses everything; the message
// is delivered, so its "delivered" event is recorded but waits behind the
// failing "accepted" one (order per message), and `postern webhooks list`
// shows both. postern is killed with SIGKILL, the receiver recovers,
// postern starts again: both events arrive, exactly as recorded (the
// same webhook-id, the same body as the refused attempt), once each.
func TestWebhookSurvivesCrash(t *testing.T) {
	t.Parallel()
	hook := startHookReceiver(t, "503")
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.3")
	w.receiver("127.0.2.3")
	cfg := w.config()
	cfg.Admin = freeAddr(t)
	cfg.Extra = hook.config()
	in := newInstance(t, cfg)
	in.start()
	qid := relayOne(t, in, "ok@dest.test")
	in.waitLog(20*time.Second, hasID(qid, "delivered"))

	var app httpapi.WebhookBacklog
	deadline := time.Now().Add(30 * time.Second)
	for {
		bs := webhooksList(t, in)
		if len(bs) != 1 || bs[0].Endpoint != "app" {
			t.Fatalf("webhooks list: %+v, want the one endpoint app", bs)
		}
		app = bs[0]
		if app.Pending == 2 && app.Failing == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks list never showed the failing delivery and the one behind it: %+v", app)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d := app.Deliveries
	if len(d) != 2 || d[0].Type != "message.accepted" || d[0].Attempts < 1 || !strings.Contains(d[0].LastError, "503") ||
		d[1].Type != "message.delivered" || d[1].Attempts != 0 || d[0].QueueID != qid || d[1].Recipient != "ok@dest.test" {
		t.Fatalf("deliveries %+v", d)
	}
	table, err := in.postern("", "webhooks", "list")
	if err != nil || !strings.Contains(table, "app: 2 pending, 1 failing") || !strings.Contains(table, d[0].EventID) || !strings.Contains(table, "503") {
		t.Errorf("webhooks list: %v\n%s", err, table)
	}

	in.kill()
	refused := hook.requests()
	hook.setStatus("200")
	in.start()
	rs := hook.waitAccepted(in, 2, 60*time.Second)
	checkOnceEach(t, rs)
	ok := accepted(rs)
	if len(ok) != 2 || ok[0].ID != d[0].EventID || ok[1].ID != d[1].EventID {
		t.Fatalf("accepted %+v, want the events %s and %s that waited", ok, d[0].EventID, d[1].EventID)
	}
	i := slices.IndexFunc(refused, func(r hookRequest) bool { return r.ID == ok[0].ID })
	if i < 0 {
		t.Fatalf("the receiver never refused %s before the crash: %+v", ok[0].ID, refused)
	}
	if refused[i].Body != ok[0].Body {
		t.Errorf("the event changed across the crash:\nbefore %s\nafter  %s", refused[i].Body, ok[0].Body)
	}
	if b := decodeBody(t, ok[1]); b.Type != "message.delivered" || b.Data.QueueID != qid || b.Data.Reply == nil || b.Data.Reply.Code != 250 {
		t.Errorf("delivered event %+v", b)
	}
	// The receiver logs before it answers, and postern records the
	// answer after: wait for the backlog to empty.
	for deadline := time.Now().Add(30 * time.Second); webhooksList(t, in)[0].Pending != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("deliveries still pending after both were accepted: %+v", webhooksList(t, in))
		}
	}
}

// TestWebhooksCarryTheSendAPIsTags: a message sent through the send API
// with tags and metadata has them in each of its events, with the
// Message-ID and queue id the API answered and the key's user; an
// endpoint limited to delivered events gets only those.
func TestWebhooksCarryTheSendAPIsTags(t *testing.T) {
	t.Parallel()
	hook := startHookReceiver(t, "200")
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.4")
	w.receiver("127.0.2.4")
	cfg := w.config()
	cfg.API = freeAddr(t)
	cfg.Extra = hook.config() + fmt.Sprintf("  - name: delivered-only\n    url: http://127.0.0.1:%d/delivered\n    secret_file: %s\n    events: [message.delivered]\n", hook.port, hook.secret)
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()
	out, err := in.postern("", "user", "key", "add", "alice@example.test", "--label", "webhooks")
	if err != nil {
		t.Fatalf("user key add: %v\n%s", err, out)
	}
	req := `{"from": "alice@example.test", "to": ["bob@dest.test"], "subject": "hi", "text": "hello",
		"tags": ["welcome", "b"], "metadata": {"order": "1234", "plan": "pro"}}`
	status, _, body := curlAPI(t, in, "POST", "/v1/messages", lastLine(out), "application/json", req)
	var sent struct {
		ID        string `json:"id"`
		MessageID string `json:"message_id"`
	}
	if err := json.Unmarshal(body, &sent); status != 202 || err != nil {
		t.Fatalf("POST: %d %s", status, body)
	}
	rs := hook.waitAccepted(in, 3, 60*time.Second) // accepted and delivered to app, delivered to delivered-only
	checkOnceEach(t, rs)
	var types []string
	for _, r := range accepted(rs) {
		b := decodeBody(t, r)
		types = append(types, b.Type)
		d := b.Data
		if d.QueueID != sent.ID || d.MessageID != sent.MessageID || d.User != "alice@example.test" || d.Recipient != "bob@dest.test" ||
			!slices.Equal(d.Tags, []string{"welcome", "b"}) || d.Metadata["order"] != "1234" || d.Metadata["plan"] != "pro" || len(d.Metadata) != 2 {
			t.Errorf("%s: data %+v, want what the API was given and answered (%+v)", b.Type, d, sent)
		}
	}
	slices.Sort(types)
	if want := []string{"message.accepted", "message.delivered", "message.delivered"}; !slices.Equal(types, want) {
		t.Errorf("events %v, want %v (delivered-only gets no accepted)", types, want)
	}
}

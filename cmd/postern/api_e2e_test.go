package main

// End-to-end tests of the send API (listen.api): the real binary, driven
// by curl and by Python's urllib as applications would, with the message
// delivered to an MX and checked there by Python's email parser and by
// dkimpy.

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// curlAPI runs curl against the API and returns the status, the named
// response header's value and the body.
func curlAPI(t testing.TB, in *instance, method, path, key, ctype, body string, headers ...string) (status int, header string, out []byte) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not installed: run `make deps`")
	}
	args := []string{"-sS", "-X", method, "-D", "-", "--data-binary", "@-", "http://" + in.cfg.API + path}
	if key != "" {
		args = append(args, "-H", "Authorization: Bearer "+key)
	}
	if ctype != "" {
		args = append(args, "-H", "Content-Type: "+ctype)
	}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	cmd := exec.Command("curl", args...)
	cmd.Stdin = strings.NewReader(body)
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s %s: %v", method, path, err)
	}
	head, rest, _ := strings.Cut(string(raw), "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	fmt.Sscanf(lines[0], "HTTP/1.1 %d", &status)
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Retry-After") || ok && strings.EqualFold(k, "Idempotent-Replayed") {
			header = strings.TrimSpace(v)
		}
	}
	return status, header, []byte(rest)
}

// pyAPI posts with Python's urllib and returns the status and the JSON
// body (errors included: urllib raises on them, the script reads them).
const pyAPI = `
import json, sys, urllib.request, urllib.error
a = json.loads(sys.argv[1])
req = urllib.request.Request(a["url"], data=a["body"].encode(), method="POST",
    headers={"Authorization": "Bearer " + a["key"], "Content-Type": a["ctype"]})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, body, retry = r.status, r.read(), r.headers.get("Retry-After")
except urllib.error.HTTPError as e:
    status, body, retry = e.code, e.read(), e.headers.get("Retry-After")
print(json.dumps({"status": status, "body": json.loads(body), "retry_after": retry}))
`

type pyAnswer struct {
	Status     int            `json:"status"`
	Body       map[string]any `json:"body"`
	RetryAfter string         `json:"retry_after"`
}

func pyPost(t testing.TB, in *instance, path, key, ctype, body string) pyAnswer {
	t.Helper()
	args, _ := json.Marshal(map[string]string{"url": "http://" + in.cfg.API + path, "key": key, "ctype": ctype, "body": body})
	out, err := exec.Command("/usr/bin/python3", "-c", pyAPI, string(args)).CombinedOutput()
	if err != nil {
		t.Fatalf("urllib: %v\n%s", err, out)
	}
	var a pyAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("urllib printed %q: %v", out, err)
	}
	return a
}

// pyParse reads a delivered message with Python's email package and
// prints its decoded subject and each attachment's file name and content.
const pyParse = `
import email, email.policy, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
atts = [{"filename": p.get_filename(), "content": p.get_content() if isinstance(p.get_content(), str) else p.get_content().decode()} for p in m.iter_attachments()]
body = m.get_body(preferencelist=("plain",))
print(json.dumps({"subject": m["subject"], "to": str(m["to"]), "bcc": m["bcc"], "text": body.get_content() if body else None, "attachments": atts}))
`

func TestSendAPIE2E(t *testing.T) {
	t.Parallel()
	keyDir := t.TempDir()
	file, name, value := keygen(t, keyDir, "example.test", "api", "ed25519")
	w := newWorld(t)
	w.mx("dest.test", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	w.mx("later.test", "127.0.2.3") // nothing listens: mail to it waits
	cfg := w.config()
	cfg.API = freeAddr(t)
	cfg.Extra = fmt.Sprintf("dkim:\n  keys:\n    - {domain: example.test, selector: api, key_file: %s}\n", file)
	cfg.Limits = "{max_message_size: 64KiB, max_recipients: 100, user_messages_per_hour: 5}"
	in := newInstance(t, cfg)
	in.addUser("alice@example.test", "correct horse")
	in.start()
	out, err := in.postern("", "user", "key", "add", "alice@example.test", "--label", "api e2e")
	if err != nil {
		t.Fatalf("user key add: %v\n%s", err, out)
	}
	key := lastLine(out)

	// 1. JSON with a non-ASCII subject, a Bcc and an attachment, with an
	// idempotency key; sent twice, queued once.
	subject := "Grüße aus Köln — ☕ und 日本語, a subject long enough to be folded"
	req, _ := json.Marshal(map[string]any{
		"from": "Alice <alice@example.test>", "to": []string{"Bob <bob@dest.test>"}, "bcc": []string{"audit@dest.test"},
		"subject": subject, "text": "Liebe Grüße\n", "html": "<p>Liebe Grüße</p>",
		"attachments": []map[string]string{{"filename": "Übersicht.txt", "content_type": "text/plain; charset=utf-8", "content": "w5xiZXJzaWNodAo="}},
		"tags":        []string{"welcome"},
	})
	status, _, body := curlAPI(t, in, "POST", "/v1/messages", key, "application/json", string(req), "Idempotency-Key: signup-42")
	var first struct{ ID, MessageID string }
	if err := json.Unmarshal(body, &struct {
		ID        *string `json:"id"`
		MessageID *string `json:"message_id"`
	}{&first.ID, &first.MessageID}); status != 202 || err != nil || first.ID == "" || !strings.HasPrefix(first.MessageID, "<") {
		t.Fatalf("POST: %d %s", status, body)
	}
	status, replayed, body := curlAPI(t, in, "POST", "/v1/messages", key, "application/json", string(req), "Idempotency-Key: signup-42")
	if status != 202 || replayed != "true" || !strings.Contains(string(body), first.ID) {
		t.Errorf("replay: %d (Idempotent-Replayed %q) %s", status, replayed, body)
	}

	// 2. A raw message through urllib, its envelope from its header.
	raw := "From: alice@example.test\r\nTo: carol@dest.test\r\nSubject: raw from urllib\r\n\r\nhello\r\n"
	if a := pyPost(t, in, "/v1/messages", key, "message/rfc822", raw); a.Status != 202 || a.Body["id"] == nil {
		t.Errorf("raw: %+v", a)
	}

	// 3. Each refusal, with its status and code; none counts against the
	// rate limit and none is queued.
	ok := `{"from": "alice@example.test", "to": ["bob@dest.test"], "text": "t"}`
	for _, c := range []struct {
		key, ctype, body string
		status           int
		code             string
	}{
		{"pk_wrong_key", "application/json", ok, 401, "unauthorized"},
		{key, "application/json", `{"from": "mallory@example.test", "to": ["bob@dest.test"], "text": "t"}`, 403, "sender_not_allowed"},
		{key, "application/json", `{"from": "alice@example.test", "to": ["nobody"], "text": "t"}`, 400, "invalid_request"},
		{key, "text/plain", "hello", 415, "unsupported_media_type"},
		{key, "application/json", `{"from": "alice@example.test", "to": ["bob@dest.test"], "text": "` + strings.Repeat("x", 70<<10) + `"}`, 413, "message_too_large"},
	} {
		a := pyPost(t, in, "/v1/messages", c.key, c.ctype, c.body)
		e, _ := a.Body["error"].(map[string]any)
		if a.Status != c.status || e["code"] != c.code || e["message"] == "" {
			t.Errorf("%s: %+v, want %d %s", c.code, a, c.status, c.code)
		}
	}

	// 4. The rate limit (5 an hour, 2 used): three more (one to a
	// destination that is down), then 429 with Retry-After.
	waiting := pyPost(t, in, "/v1/messages", key, "application/json", `{"from": "alice@example.test", "to": ["dan@later.test"], "text": "t"}`)
	if waiting.Status != 202 {
		t.Fatalf("message 3: %+v", waiting)
	}
	for i := range 2 {
		if a := pyPost(t, in, "/v1/messages", key, "application/json", ok); a.Status != 202 {
			t.Fatalf("message %d under the limit: %+v", i+4, a)
		}
	}
	if a := pyPost(t, in, "/v1/messages", key, "application/json", ok); a.Status != 429 || a.RetryAfter == "" {
		t.Errorf("over the limit: %+v", a)
	}

	// 5. Delivered: four messages, the first as Python reads it, signed.
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 30*time.Second), 4)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	var jsonMsg []byte
	for _, m := range msgs {
		if strings.Contains(string(m.Data), first.MessageID) {
			jsonMsg = m.Data
			if strings.Join(m.To, ",") != "bob@dest.test,audit@dest.test" {
				t.Errorf("envelope recipients %v", m.To)
			}
		}
	}
	if jsonMsg == nil {
		t.Fatalf("the JSON message (%s) was not delivered", first.MessageID)
	}
	if len(msgs) != 4 {
		t.Errorf("%d messages delivered, want 4 (the replay queued nothing)", len(msgs))
	}
	cmd := exec.Command("/usr/bin/python3", "-c", pyParse)
	cmd.Stdin = strings.NewReader(string(jsonMsg))
	parsedOut, err := cmd.Output()
	if err != nil {
		t.Fatalf("python email: %v", err)
	}
	var parsed struct {
		Subject, To, Text string
		Bcc               *string
		Attachments       []struct{ Filename, Content string }
	}
	if err := json.Unmarshal(parsedOut, &parsed); err != nil {
		t.Fatal(err)
	}
	if parsed.Subject != subject || parsed.Bcc != nil || strings.ReplaceAll(parsed.Text, "\r\n", "\n") != "Liebe Grüße\n" ||
		len(parsed.Attachments) != 1 || parsed.Attachments[0].Filename != "Übersicht.txt" || parsed.Attachments[0].Content != "Übersicht\n" {
		t.Errorf("as Python reads it: %s", parsedOut)
	}
	for _, l := range strings.Split(string(jsonMsg), "\r\n") {
		if len(l) > 76 && strings.Contains(l, "=?utf-8?") { // RFC 2047 §2
			t.Errorf("header or text line of %d characters: %q", len(l), l)
		}
	}
	if v := dkimpy(t, map[string]string{name: value}, jsonMsg); strings.Join(v, " ") != "pass" {
		t.Errorf("dkimpy: %v", v)
	}

	// 6. The waiting message's state, for its owner; a delivered one is
	// not kept.
	status, _, body = curlAPI(t, in, "GET", "/v1/messages/"+waiting.Body["id"].(string), key, "", "")
	var m struct {
		Recipients []struct{ Address, State string }
	}
	if err := json.Unmarshal(body, &m); status != 200 || err != nil || len(m.Recipients) != 1 || m.Recipients[0].Address != "dan@later.test" ||
		m.Recipients[0].State == "delivered" {
		t.Errorf("GET the waiting message: %d %s", status, body)
	}
	if status, _, body = curlAPI(t, in, "GET", "/v1/messages/"+first.ID, key, "", ""); status != 404 {
		t.Errorf("GET a delivered message: %d %s", status, body)
	}
}

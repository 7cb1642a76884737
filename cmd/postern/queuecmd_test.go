package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"postern/queue"
	"postern/relay/httpapi"
)

// queueListJSON is what GET /api/queue returns for three messages: one
// fresh, one deferred with a multi-line reply, one held from the null
// sender with two recipients.
const queueListJSON = `[
{"id":"0000000000000001","from":"alice@example.org","size":1843,"created_at":"2026-11-24T09:58:00Z","held":false,"state":"queued",
 "recipients":[{"address":"bob@example.com","state":"queued","attempts":0,"next_attempt":"2026-11-24T10:00:00Z"}]},
{"id":"000000000000002A","from":"alice@example.org","size":52310,"created_at":"2026-11-24T07:14:09Z","held":false,"state":"deferred",
 "recipients":[{"address":"carol@example.net","state":"deferred","attempts":3,"next_attempt":"2026-11-24T10:12:00Z",
   "last_attempt":"2026-11-24T09:42:00Z","last_reply":"451-4.7.1 Greylisted,\n451 4.7.1 try again later","remote_mta":"mx.example.net"}]},
{"id":"000000000000002B","from":"","size":4096,"created_at":"2026-11-23T22:00:00Z","held":true,"state":"held",
 "recipients":[
   {"address":"dave@example.net","state":"deferred","attempts":1,"next_attempt":"2026-11-24T11:00:00Z","last_attempt":"2026-11-23T22:00:05Z",
    "last_reply":"421 4.3.2 shutting down","remote_mta":"mx2.example.net"},
   {"address":"erin@example.com","state":"delivered","attempts":1,"last_attempt":"2026-11-23T22:00:04Z",
    "last_reply":"250 2.0.0 Ok: queued as 4Xz","remote_mta":"mx.example.com"}]}
]
`

// The fixed clock of the golden outputs.
var queueTestNow = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

const wantQueueTable = `-Queue ID-        --Size-- ----Arrival Time---  -Sender/Recipient-------
0000000000000001      1843 Tue Nov 24 09:58:00  alice@example.org
                                                bob@example.com  (queued, next now)

000000000000002A     52310 Tue Nov 24 07:14:09  alice@example.org
                                                carol@example.net  (deferred, 3 attempts, next in 12m)
                                                  451-4.7.1 Greylisted, 451 4.7.1 try again later

000000000000002B!     4096 Mon Nov 23 22:00:00  <>
                                                dave@example.net  (deferred, 1 attempt, next in 1h)
                                                  421 4.3.2 shutting down
                                                erin@example.com  (delivered, 1 attempt)
                                                  250 2.0.0 Ok: queued as 4Xz

-- 57 Kbytes in 3 messages.
`

const wantQueueShow = `ID:            000000000000002B
State:         held
Held:          yes (release with ` + "`postern queue release 000000000000002B`" + `)
From:          <>
Size:          4096 bytes
Arrived:       2026-11-23 22:00:00 UTC (12h ago)
Recipients:    2

  dave@example.net
    State:         deferred
    Attempts:      1
    Last attempt:  2026-11-23 22:00:05 UTC (12h ago)
    Next attempt:  2026-11-24 11:00:00 UTC (in 1h)
    Remote MTA:    mx2.example.net
    Last reply:    421 4.3.2 shutting down

  erin@example.com
    State:         delivered
    Attempts:      1
    Last attempt:  2026-11-23 22:00:04 UTC (12h ago)
    Next attempt:  -
    Remote MTA:    mx.example.com
    Last reply:    250 2.0.0 Ok: queued as 4Xz
`

// fakeAdmin is a stand-in for the admin API: canned replies per
// "METHOD path", and a record of what was asked and with which token.
type fakeAdmin struct {
	mu      sync.Mutex
	replies map[string]fakeReply
	got     []string // "METHOD /path?query authorization"
}

type fakeReply struct {
	code int
	body string
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
	rep, ok := f.replies[r.Method+" "+r.URL.Path]
	if !ok {
		rep = fakeReply{404, `{"error":"no such endpoint"}`}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.code)
	io.WriteString(w, rep.body)
}

func (f *fakeAdmin) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.got...)
}

// queueEnv writes a config whose listen.admin is addr and whose token file
// holds token ("" = no token_file), and returns the --config argument.
func queueEnv(t *testing.T, addr, token string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := "listen: {admin: \"" + addr + "\"}\n"
	if token != "" {
		// A trailing newline, as an editor or `echo` leaves it.
		if err := os.WriteFile(filepath.Join(dir, "admin-token"), []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += "admin: {token_file: admin-token}\n"
	}
	path := filepath.Join(dir, "postern.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return "--config=" + path
}

func startFakeAdmin(t *testing.T, replies map[string]fakeReply) (*fakeAdmin, string) {
	t.Helper()
	f := &fakeAdmin{replies: replies}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, strings.TrimPrefix(srv.URL, "http://")
}

func fixQueueClock(t *testing.T) {
	old := queueNow
	queueNow = func() time.Time { return queueTestNow }
	t.Cleanup(func() { queueNow = old })
}

func runQueue(sub string, args ...string) (stdout string, err error) {
	var out, errOut bytes.Buffer
	err = cmdQueue(sub, args, &out, &errOut)
	return out.String(), err
}

func TestQueueListTable(t *testing.T) {
	fixQueueClock(t)
	f, addr := startFakeAdmin(t, map[string]fakeReply{"GET /api/queue": {200, queueListJSON}})
	cfg := queueEnv(t, addr, "tok3n")
	out, err := runQueue("list", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if out != wantQueueTable {
		t.Errorf("table:\n%s\nwant:\n%s", out, wantQueueTable)
	}
	if got := f.requests(); len(got) != 1 || got[0] != "GET /api/queue Bearer tok3n" {
		t.Errorf("requests = %q", got)
	}
}

func TestQueueListEmpty(t *testing.T) {
	_, addr := startFakeAdmin(t, map[string]fakeReply{"GET /api/queue": {200, "[]\n"}})
	out, err := runQueue("list", queueEnv(t, addr, ""))
	if err != nil || out != "Mail queue is empty\n" {
		t.Errorf("empty queue: %q, %v", out, err)
	}
}

func TestQueueListJSON(t *testing.T) {
	f, addr := startFakeAdmin(t, map[string]fakeReply{"GET /api/queue": {200, queueListJSON}})
	// Flags after the subcommand, in any order, as parseFlags allows.
	out, err := runQueue("list", "--json", queueEnv(t, addr, ""), "--state", "deferred")
	if err != nil {
		t.Fatal(err)
	}
	if out != queueListJSON {
		t.Errorf("--json output differs from the API's body:\n%s", out)
	}
	if got := f.requests(); len(got) != 1 || got[0] != "GET /api/queue?state=deferred " {
		t.Errorf("requests = %q (no token file: no Authorization)", got)
	}
}

func TestQueueShow(t *testing.T) {
	fixQueueClock(t)
	list := strings.TrimSpace(queueListJSON)
	held := list[strings.Index(list, `{"id":"000000000000002B"`) : len(list)-1]
	f, addr := startFakeAdmin(t, map[string]fakeReply{"GET /api/queue/000000000000002B": {200, held}})
	out, err := runQueue("show", queueEnv(t, addr, ""), "000000000000002B")
	if err != nil {
		t.Fatal(err)
	}
	if out != wantQueueShow {
		t.Errorf("show:\n%s\nwant:\n%s", out, wantQueueShow)
	}
	if got := f.requests(); len(got) != 1 || got[0] != "GET /api/queue/000000000000002B " {
		t.Errorf("requests = %q", got)
	}
}

func TestQueueActions(t *testing.T) {
	const id = "000000000000002A"
	ok := fakeReply{200, `{"id":"` + id + `"}`}
	f, addr := startFakeAdmin(t, map[string]fakeReply{
		"POST /api/queue/" + id + "/retry":   ok,
		"POST /api/queue/" + id + "/hold":    ok,
		"POST /api/queue/" + id + "/release": ok,
		"POST /api/queue/" + id + "/bounce":  ok,
		"DELETE /api/queue/" + id:            ok,
		"POST /api/queue/retry":              {200, `{"retried":2}`},
	})
	cfg := queueEnv(t, addr, "tok3n")
	for _, tc := range []struct {
		args    []string
		request string
		out     string
	}{
		{[]string{"retry", id}, "POST /api/queue/" + id + "/retry", id + ": due for delivery now\n"},
		{[]string{"retry", "--all"}, "POST /api/queue/retry", "2 messages due for delivery now\n"},
		{[]string{"hold", id}, "POST /api/queue/" + id + "/hold", id + ": held: no delivery until `postern queue release`\n"},
		{[]string{"release", id}, "POST /api/queue/" + id + "/release", id + ": released\n"},
		{[]string{"bounce", id}, "POST /api/queue/" + id + "/bounce", id + ": bounced: the sender gets a failure notice\n"},
		{[]string{"delete", id}, "DELETE /api/queue/" + id, id + ": deleted; no bounce sent\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			n := len(f.requests())
			out, err := runQueue(tc.args[0], append(tc.args[1:], cfg)...)
			if err != nil {
				t.Fatal(err)
			}
			if out != tc.out {
				t.Errorf("output %q, want %q", out, tc.out)
			}
			if got := f.requests()[n:]; len(got) != 1 || got[0] != tc.request+" Bearer tok3n" {
				t.Errorf("requests = %q, want [%q]", got, tc.request+" Bearer tok3n")
			}
		})
	}
}

func TestQueueErrors(t *testing.T) {
	_, addr := startFakeAdmin(t, map[string]fakeReply{
		"POST /api/queue/0000000000000001/retry": {409, `{"error":"queue: message is held: 0000000000000001"}`},
		"GET /api/queue":                         {401, `{"error":"wrong bearer token"}`},
		"POST /api/queue/0000000000000002/hold":  {500, "not json"},
	})
	cfg := queueEnv(t, addr, "tok3n")
	down := freeAddr(t) // nothing listens there
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"show", "00000000000000FF", cfg}, "postern: no message 00000000000000FF in the queue"},
		{[]string{"delete", "00000000000000FF", cfg}, "postern: no message 00000000000000FF in the queue"},
		{[]string{"retry", "0000000000000001", cfg}, "postern: queue: message is held: 0000000000000001"},
		{[]string{"list", cfg}, "postern: the admin API at " + addr + " refused the token (admin.token_file): wrong bearer token"},
		{[]string{"hold", "0000000000000002", cfg}, "postern: not json"},
		{[]string{"list", queueEnv(t, down, "")},
			"postern: cannot reach the admin API at " + down + ": is postern running? (dial tcp " + down + ": connect: connection refused)"},
		{[]string{"list", queueEnv(t, "", "")}, "postern: listen.admin is empty in "},
	} {
		t.Run(strings.Join(tc.args[:len(tc.args)-1], " "), func(t *testing.T) {
			out, err := runQueue(tc.args[0], tc.args[1:]...)
			var ex exitError
			if !errors.As(err, &ex) {
				t.Fatalf("err = %v, want an exitError", err)
			}
			if ex.code != exitFail || !strings.HasPrefix(ex.msg, tc.msg) || strings.Contains(ex.msg, "\n") {
				t.Errorf("exit %d %q, want exit 1 and one line starting %q", ex.code, ex.msg, tc.msg)
			}
			if out != "" {
				t.Errorf("stdout = %q on failure", out)
			}
		})
	}
}

func TestQueueUsage(t *testing.T) {
	for _, args := range [][]string{
		{"frobnicate"},
		{"list", "extra"},
		{"show"},
		{"hold", "a", "b"},
		{"retry"},
		{"retry", "0000000000000001", "--all"},
		{"list", "--bogus"},
	} {
		_, err := runQueue(args[0], args[1:]...)
		if !errors.Is(err, errUsage) {
			t.Errorf("queue %q: err = %v, want a usage error", args, err)
		}
	}
}

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8025": "127.0.0.1:8025",
		"[::1]:8025":     "[::1]:8025",
		":8025":          "127.0.0.1:8025",
		"0.0.0.0:8025":   "127.0.0.1:8025",
		"[::]:8025":      "[::1]:8025",
		"admin.lan:8025": "admin.lan:8025",
	} {
		if got := dialAddr(in); got != want {
			t.Errorf("dialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		45 * time.Second:                 "45s",
		90 * time.Second:                 "1m30s",
		12 * time.Minute:                 "12m",
		3*time.Hour + 5*time.Minute + 29: "3h5m",
		3 * time.Hour:                    "3h",
		50*time.Hour + 10*time.Minute:    "2d2h",
		48 * time.Hour:                   "2d",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestReadAdminToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := readAdminToken(""); tok != "" || err != nil {
		t.Errorf(`readAdminToken("") = %q, %v; want no token`, tok, err)
	}
	if tok, err := readAdminToken(write("ok", "  s3cret\r\n")); tok != "s3cret" || err != nil {
		t.Errorf("padded token: %q, %v", tok, err)
	}
	if _, err := readAdminToken(write("empty", "\n")); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty token file: %v, want an error", err)
	}
	if _, err := readAdminToken(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing token file: %v", err)
	}
}

// TestQueueCommandsAgainstRealAPI runs the commands against the real admin
// handler over a real queue, so the CLI's wire types cannot drift from
// queue.Message's JSON.
func TestQueueCommandsAgainstRealAPI(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(queue.Options{Path: filepath.Join(dir, "queue.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: "alice@example.org", Rcpts: []string{"bob@example.com"}},
		strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.NewHandler(httpapi.Options{Queue: q, Token: "tok3n"}))
	defer srv.Close()
	cfg := queueEnv(t, strings.TrimPrefix(srv.URL, "http://"), "tok3n")

	out, err := runQueue("show", id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ID:            " + id, "State:         queued", "From:          alice@example.org",
		"Size:          22 bytes", "  bob@example.com\n    State:         queued"} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	if out, err := runQueue("hold", id, cfg); err != nil || out != id+": held: no delivery until `postern queue release`\n" {
		t.Fatalf("hold: %q, %v", out, err)
	}
	out, err = runQueue("list", "--state=held", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, id+"!") || !strings.Contains(out, "bob@example.com  (queued") || !strings.HasSuffix(out, "-- 1 Kbytes in 1 message.\n") {
		t.Errorf("list --state=held:\n%s", out)
	}
	_, err = runQueue("retry", id, cfg)
	if ex, ok := err.(exitError); !ok || ex.msg != "postern: queue: message is held" {
		t.Errorf("retry of a held message: %v", err)
	}
	if out, err := runQueue("list", "--state", "queued", cfg); err != nil || out != "Mail queue is empty\n" {
		t.Errorf("list --state queued: %q, %v", out, err)
	}
}

// destinationsJSON is what GET /api/destinations returns for a suspended
// provider, a dead destination and an idle one.
const destinationsJSON = `[
{"name":"google","kind":"provider","state":"suspended","until":"2026-11-24T10:00:30Z","active":1,
 "limits":{"connections":5,"rate":0.5},"last_reply":{"code":421,"enhanced_code":"4.7.28","text":"rate limited,\ntry later"},
 "last_reply_at":"2026-11-24T09:59:58Z","delivered":40,"rate_limited":3,"connection_failures":0},
{"name":"alt1.aspmx.l.google.com,aspmx.l.google.com","kind":"destination","provider":"google","domains":["example.com","example.org"],
 "state":"idle","active":1,"limits":{"connections":20,"messages_per_connection":50},"delivered":40,"rate_limited":0,"connection_failures":0},
{"name":"mx1.dead.test","kind":"destination","domains":["dead.test"],"state":"dead","until":"2026-11-24T10:02:00Z","active":0,
 "limits":{"connections":1,"rate":0.004,"configured_rate":10},"last_reply":{"enhanced_code":"4.4.1","text":"mx1.dead.test[192.0.2.1]: connection refused"},
 "last_reply_at":"2026-11-24T09:58:00Z","delivered":0,"rate_limited":0,"connection_failures":2}
]
`

const wantDestinations = `KIND         DESTINATION                                          STATE      ACTIVE  RATE                   UNTIL   DELIVERED  RATE-LIMITED  FAILED
provider     google                                               suspended  1/5     30/min (of unlimited)  in 30s  40         3             0
    last reply (2s ago): 421-4.7.28 rate limited, 421 4.7.28 try later
destination  alt1.aspmx.l.google.com,aspmx.l.google.com [google]  idle       1/20    -                      -       40         0             0
    domains: example.com example.org
destination  mx1.dead.test                                        dead       0/1     14.4/h (of 10/s)       in 2m   0          0             2
    domains: dead.test
    last reply (2m ago): 4.4.1 mx1.dead.test[192.0.2.1]: connection refused
`

func TestQueueDestinations(t *testing.T) {
	fixQueueClock(t)
	f, addr := startFakeAdmin(t, map[string]fakeReply{"GET /api/destinations": {200, destinationsJSON}})
	cfg := queueEnv(t, addr, "tok3n")
	out, err := runQueue("destinations", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if out != wantDestinations {
		t.Errorf("table:\n%s\nwant:\n%s", out, wantDestinations)
	}
	out, err = runQueue("destinations", "--json", cfg)
	if err != nil || out != destinationsJSON {
		t.Errorf("--json: %v\n%s", err, out)
	}
	if got := f.requests(); len(got) != 2 || got[0] != "GET /api/destinations Bearer tok3n" {
		t.Errorf("requests = %q", got)
	}
	if _, err := runQueue("destinations", cfg, "extra"); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
		t.Errorf("with an argument: %v", err)
	}
	_, addr = startFakeAdmin(t, map[string]fakeReply{"GET /api/destinations": {200, "[]\n"}})
	if out, err := runQueue("destinations", queueEnv(t, addr, "")); err != nil || !strings.HasPrefix(out, "No destination has delivery state") {
		t.Errorf("empty: %q, %v", out, err)
	}
}

package main

// Tests of `postern sendmail` and `postern mailq`: the option parser, the
// message reader and the header rules of -t as units, then the built
// binary (as postern sendmail and through a symlink named sendmail)
// submitting to a running server whose MX is a relaytest receiver.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"postern/queue"
	"postern/relay/httpapi"
)

func TestParseSendmailArgs(t *testing.T) {
	def := func(f func(o *sendmailOpts)) *sendmailOpts {
		o := &sendmailOpts{dotEnds: true}
		if f != nil {
			f(o)
		}
		return o
	}
	for _, tt := range []struct {
		args []string
		want *sendmailOpts // nil: a usage error (exit 64)
	}{
		{nil, def(nil)},
		{[]string{"b@x.test", "c@x.test"}, def(func(o *sendmailOpts) { o.rcpts = []string{"b@x.test", "c@x.test"} })},
		{[]string{"-t"}, def(func(o *sendmailOpts) { o.extract = true })},
		{[]string{"-t", "-i"}, def(func(o *sendmailOpts) { o.extract, o.dotEnds = true, false })},
		{[]string{"-ti"}, def(func(o *sendmailOpts) { o.extract, o.dotEnds = true, false })},
		{[]string{"-oi", "b@x.test"}, def(func(o *sendmailOpts) { o.dotEnds, o.rcpts = false, []string{"b@x.test"} })},
		{[]string{"-f", "me@x.test"}, def(func(o *sendmailOpts) { o.from, o.fromSet = "me@x.test", true })},
		{[]string{"-fme@x.test"}, def(func(o *sendmailOpts) { o.from, o.fromSet = "me@x.test", true })},
		{[]string{"-r", "me@x.test"}, def(func(o *sendmailOpts) { o.from, o.fromSet = "me@x.test", true })},
		{[]string{"-f", "<>"}, def(func(o *sendmailOpts) { o.from, o.fromSet = "<>", true })},
		{[]string{"-tif", "me@x.test"}, def(func(o *sendmailOpts) { o.extract, o.dotEnds, o.from, o.fromSet = true, false, "me@x.test", true })},
		{[]string{"-F", "Cron Daemon"}, def(func(o *sendmailOpts) { o.fullName = "Cron Daemon" })},
		{[]string{"-FCronDaemon"}, def(func(o *sendmailOpts) { o.fullName = "CronDaemon" })},
		// Debian's cron: sendmail -FCronDaemon -i -B8BITMIME -oem root
		{[]string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"},
			def(func(o *sendmailOpts) { o.fullName, o.dotEnds, o.rcpts = "CronDaemon", false, []string{"root"} })},
		{[]string{"-oem", "-odb", "-odi", "-oee", "-om", "-bm", "-U", "-G", "-n", "-m", "-L", "tag", "-X", "/tmp/log",
			"-h", "5", "-O", "DeliveryMode=b", "-Am", "-pSMTP", "-B", "7BIT"}, def(nil)},
		{[]string{"-v"}, def(func(o *sendmailOpts) { o.verbose = true })},
		{[]string{"-bp"}, def(func(o *sendmailOpts) { o.listQ = true })},
		{[]string{"-C", "/etc/p.yaml"}, def(func(o *sendmailOpts) { o.config = "/etc/p.yaml" })},
		{[]string{"--config", "/etc/p.yaml"}, def(func(o *sendmailOpts) { o.config = "/etc/p.yaml" })},
		{[]string{"--config=/etc/p.yaml"}, def(func(o *sendmailOpts) { o.config = "/etc/p.yaml" })},
		{[]string{"-N", "success,delay", "-R", "hdrs", "-V", "env1"},
			def(func(o *sendmailOpts) { o.notify, o.ret, o.envID = []string{"SUCCESS", "DELAY"}, "HDRS", "env1" })},
		{[]string{"-N", "never"}, def(func(o *sendmailOpts) { o.notify = []string{"NEVER"} })},
		{[]string{"--", "-weird@x.test"}, def(func(o *sendmailOpts) { o.rcpts = []string{"-weird@x.test"} })},
		{[]string{"-t", "b@x.test", "-i"}, def(func(o *sendmailOpts) { o.extract, o.dotEnds, o.rcpts = true, false, []string{"b@x.test"} })},

		{[]string{"-"}, nil},
		{[]string{"b@x.test", "-"}, nil},
		{[]string{"-k"}, nil},
		{[]string{"-tk"}, nil},
		{[]string{"-f"}, nil},
		{[]string{"-bs"}, nil},
		{[]string{"-bd"}, nil},
		{[]string{"-q"}, nil},
		{[]string{"-q30m"}, nil},
		{[]string{"-oX"}, nil},
		{[]string{"-N", "never,success"}, nil},
		{[]string{"-N", "sometimes"}, nil},
		{[]string{"-R", "all"}, nil},
		{[]string{"--verbose"}, nil},
		{[]string{"-V", "tab\there"}, nil},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := parseSendmailArgs(tt.args)
			if tt.want == nil {
				var ex exitError
				if !errors.As(err, &ex) || ex.code != exUsage || !strings.HasPrefix(ex.msg, "postern sendmail: ") || strings.Contains(ex.msg, "\n") {
					t.Fatalf("got %+v, %v; want a one-line usage error (64)", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestArgv(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"/usr/local/bin/postern", "serve"}, []string{"serve"}},
		{[]string{"/usr/sbin/sendmail", "-t", "-i"}, []string{"sendmail", "-t", "-i"}},
		{[]string{"sendmail"}, []string{"sendmail"}},
		{[]string{"/usr/bin/mailq"}, []string{"mailq"}},
		{[]string{"postern"}, []string{}},
	} {
		if got := argv(tt.in); !reflect.DeepEqual(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
			t.Errorf("argv(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestReadMessage(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		dotEnds  bool
		want     string
	}{
		{"LF becomes CRLF", "To: b@x\nSubject: s\n\nbody\n", true, "To: b@x\r\nSubject: s\r\n\r\nbody\r\n"},
		{"CRLF stays", "To: b@x\r\n\r\nbody\r\n", true, "To: b@x\r\n\r\nbody\r\n"},
		{"bare CR becomes CRLF", "To: b@x\r\n\r\na\rb\n", true, "To: b@x\r\n\r\na\r\nb\r\n"},
		{"no final line end", "To: b@x\n\nbody", true, "To: b@x\r\n\r\nbody\r\n"},
		{"a lone dot ends the message", "To: b@x\n\nbody\n.\nnot this\n", true, "To: b@x\r\n\r\nbody\r\n"},
		{"a lone dot with CRLF", "To: b@x\r\n\r\nbody\r\n.\r\nnot this\r\n", true, "To: b@x\r\n\r\nbody\r\n"},
		{"-i keeps a lone dot", "To: b@x\n\nbody\n.\nmore\n", false, "To: b@x\r\n\r\nbody\r\n.\r\nmore\r\n"},
		{"dots in text stay", "To: b@x\n\n.leading\n..two\n", true, "To: b@x\r\n\r\n.leading\r\n..two\r\n"},
		{"empty", "", true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readMessage(strings.NewReader(tt.in), tt.dotEnds, 1<<20)
			if err != nil || string(got) != tt.want {
				t.Errorf("readMessage(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	if _, err := readMessage(strings.NewReader(strings.Repeat("x\n", 100)), true, 50); !errors.Is(err, errTooLarge) {
		t.Errorf("over the limit: %v", err)
	}
}

func TestHeaderRecipients(t *testing.T) {
	msg := "From: me@x.test\r\n" +
		"To: Bob <b@y.test>,\r\n  \"Doe, Carl\" <c@y.test>\r\n" +
		"cc: root\r\n" +
		"BCC: hidden@z.test,\r\n\tsecret@z.test\r\n" +
		"Subject: To: not@a.recipient\r\n" +
		"\r\n" +
		"To: body@is.not.read\r\n"
	fields, body := splitHeader([]byte(msg))
	got, err := headerRecipients(fields, "host.test")
	want := []string{"b@y.test", "c@y.test", "root@host.test", "hidden@z.test", "secret@z.test"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("headerRecipients = %q, %v; want %q", got, err, want)
	}
	out := string(joinMessage(withoutField(fields, "Bcc"), body))
	wantOut := "From: me@x.test\r\nTo: Bob <b@y.test>,\r\n  \"Doe, Carl\" <c@y.test>\r\ncc: root\r\nSubject: To: not@a.recipient\r\n\r\nTo: body@is.not.read\r\n"
	if out != wantOut {
		t.Errorf("without Bcc:\n%q\nwant\n%q", out, wantOut)
	}

	for _, tt := range []struct {
		name, msg string
		want      []string
		err       bool
	}{
		{"group", "To: friends: a@x.test, b@x.test;\r\n\r\n", []string{"a@x.test", "b@x.test"}, false},
		{"undisclosed recipients", "To: undisclosed-recipients:;\r\nBcc: a@x.test\r\n\r\n", []string{"a@x.test"}, false},
		{"empty To", "To: \r\nCc: a@x.test\r\n\r\n", []string{"a@x.test"}, false},
		{"garbage", "To: <<<\r\n\r\n", nil, true},
		{"no header at all", "just a body line\r\n", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := splitHeader([]byte(tt.msg))
			got, err := headerRecipients(f, "host.test")
			if (err != nil) != tt.err || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, %v; want %q (error %v)", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestSplitHeaderWithoutBlankLine(t *testing.T) {
	// sendmail's rule: the first line that is not a header field starts
	// the body, and the blank line is put back.
	fields, body := splitHeader([]byte("Subject: s\r\nhello there\r\n"))
	if got := string(joinMessage(fields, body)); got != "Subject: s\r\n\r\nhello there\r\n" {
		t.Errorf("got %q", got)
	}
	fields, body = splitHeader([]byte("hello: there is a colon\r\nbut this is text\r\n"))
	if got := string(joinMessage(fields, body)); got != "hello: there is a colon\r\n\r\nbut this is text\r\n" {
		t.Errorf("got %q", got)
	}
}

func TestAddFrom(t *testing.T) {
	f := addFrom(nil, "me@x.test", "Cron Daemon")
	if len(f) != 1 || f[0].raw != "From: \"Cron Daemon\" <me@x.test>\r\n" {
		t.Errorf("addFrom = %+v", f)
	}
	f = addFrom([]headerField{{"from", "from: a@b.test\r\n"}}, "me@x.test", "X")
	if len(f) != 1 || f[0].raw != "from: a@b.test\r\n" {
		t.Errorf("an existing From was changed: %+v", f)
	}
	if f := addFrom(nil, "me@x.test", ""); f[0].raw != "From: <me@x.test>\r\n" {
		t.Errorf("without -F: %q", f[0].raw)
	}
}

// FuzzSendmailHeader feeds anything to the -t path: reading, splitting,
// recipient extraction and Bcc removal. Whatever the input, nothing
// panics, splitting what joinMessage wrote gives the same fields and
// body back, a Bcc field never survives, and no recipient carries a line
// break.
func FuzzSendmailHeader(f *testing.F) {
	for _, s := range []string{
		"To: b@example.org\nSubject: hi\n\nbody\n",
		"To: a@x, \"B, C\" <b@y>\r\nBcc: s@z,\r\n t@z\r\n\r\n.\r\n",
		"bcc:x\n bcc: y\nBcc\n: z\n\n",
		"To: g: a@x, b@y;\nCc: root\n\nx",
		" leading space\n",
		"To:\r\r\nBcc: \r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		msg, err := readMessage(bytes.NewReader(in), false, 1<<20)
		if err != nil {
			return
		}
		fields, body := splitHeader(msg)
		rcpts, err := headerRecipients(fields, "host.test")
		if err == nil {
			for _, r := range rcpts {
				if r == "" || strings.ContainsAny(r, "\r\n") {
					t.Fatalf("recipient %q from %q", r, msg)
				}
			}
		}
		out := joinMessage(withoutField(fields, "Bcc"), body)
		f2, b2 := splitHeader(out)
		if !reflect.DeepEqual(f2, withoutField(fields, "Bcc")) || !bytes.Equal(b2, body) {
			t.Fatalf("split(join) differs for %q:\n%q\n%q", msg, f2, b2)
		}
		for _, fl := range f2 {
			if strings.EqualFold(fl.name, "bcc") {
				t.Fatalf("Bcc survived in %q", out)
			}
		}
	})
}

// sendmailCmd runs the built binary as sendmail with stdin.
func sendmailCmd(t *testing.T, bin string, env []string, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return runCmd(t, cmd, stdin)
}

// runCmd runs cmd with stdin and returns its output and exit code.
func runCmd(t *testing.T, cmd *exec.Cmd, stdin string) (string, int) {
	t.Helper()
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("running %s: %v", cmd.Path, err)
	return "", -1
}

func currentUser(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user:", err)
	}
	return u.Username
}

func TestSendmailDelivers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.mx("example.org", "127.0.2.2")
	rcv := w.receiver("127.0.2.2")
	in := newInstance(t, w.config())
	in.start()
	// A symlink named sendmail, as /usr/sbin/sendmail would be.
	link := filepath.Join(t.TempDir(), "sendmail")
	if err := os.Symlink(binPath, link); err != nil {
		t.Fatal(err)
	}
	me := currentUser(t)

	// The line: printf 'To: b@example.org\nSubject: hi\n\nbody\n' | postern sendmail -t
	const input = "To: b@example.org\nSubject: hi\n\nbody\n"
	if out, code := sendmailCmd(t, binPath, nil, input, "sendmail", "-t", "--config", in.cfgPath); code != 0 || out != "" {
		t.Fatalf("postern sendmail -t: exit %d\n%s", code, out)
	}
	msgs, err := rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	m := msgs[0]
	if m.From != me+"@postern.test" || !reflect.DeepEqual(m.To, []string{"b@example.org"}) {
		t.Errorf("envelope = %q -> %q, want %s@postern.test -> b@example.org", m.From, m.To, me)
	}
	data := string(m.Data)
	for _, want := range []string{"\r\nTo: b@example.org\r\nSubject: hi\r\n", "\r\nFrom: <" + me + "@postern.test>\r\n", "\r\nDate: ", "\r\nMessage-ID: <", "\r\n\r\nbody\r\n"} {
		if !strings.Contains(data, want) {
			t.Errorf("delivered message lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(strings.ReplaceAll(data, "\r\n", ""), "\n") {
		t.Errorf("a bare LF reached the MX:\n%q", data)
	}

	// -f sets the envelope sender; -F names the From it adds; recipients
	// as arguments; a lone dot ends the message without -i. Through the
	// symlink, with the config from $POSTERN_CONFIG.
	env := []string{"POSTERN_CONFIG=" + in.cfgPath}
	out, code := sendmailCmd(t, link, env, "Subject: second\n\nline\n.\nafter the dot\n", "-f", "app@example.test", "-F", "The App", "-v", "c@example.org")
	if code != 0 || !strings.HasPrefix(out, "250 2.0.0 OK: queued as ") {
		t.Fatalf("sendmail -f: exit %d\n%s", code, out)
	}
	msgs, err = rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 2)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	m = msgs[1]
	if m.From != "app@example.test" || !reflect.DeepEqual(m.To, []string{"c@example.org"}) {
		t.Errorf("envelope = %q -> %q, want app@example.test -> c@example.org", m.From, m.To)
	}
	if d := string(m.Data); !strings.Contains(d, "\r\nFrom: \"The App\" <app@example.test>\r\n") ||
		!strings.HasSuffix(d, "\r\n\r\nline\r\n") {
		t.Errorf("message:\n%s", d)
	}

	// -t with Bcc: every recipient gets it, nobody sees the Bcc.
	out, code = sendmailCmd(t, link, env, "To: b@example.org\nBcc: hidden@example.org\nSubject: hidden copy\n\nx\n", "-t", "-i")
	if code != 0 {
		t.Fatalf("sendmail -t with Bcc: exit %d\n%s", code, out)
	}
	msgs, err = rcv.WaitMessages(ctxTimeout(t, 20*time.Second), 3)
	if err != nil {
		t.Fatalf("%v\n%s", err, in.logs.String())
	}
	m = msgs[2]
	if !reflect.DeepEqual(m.To, []string{"b@example.org", "hidden@example.org"}) || strings.Contains(strings.ToLower(string(m.Data)), "bcc") {
		t.Errorf("Bcc message: to %q\n%s", m.To, m.Data)
	}
}

func TestSendmailExitCodes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := newInstance(t, w.config())
	in.start()
	run := func(stdin string, args ...string) (string, int) {
		return sendmailCmd(t, binPath, nil, stdin, append([]string{"sendmail", "--config", in.cfgPath}, args...)...)
	}
	for _, tt := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		msg   string
	}{
		{"unknown flag", "", []string{"-k", "b@example.org"}, exUsage, "unknown option -k"},
		{"no recipients", "Subject: x\n\ny\n", nil, exDataErr, "no recipients"},
		{"no recipients with -t", "Subject: x\n\ny\n", []string{"-t"}, exDataErr, "no recipients"},
		{"bad address", "Subject: x\n\ny\n", []string{"b@@example.org"}, exDataErr, "b@@example.org"},
		{"recipient refused by the server", "Subject: x\n\ny\n", []string{"b@-bad-.example"}, exNoUser, "recipient <b@-bad-.example>: server said 5"},
		// All or nothing: the good recipient does not get it either (the
		// check below finds nothing accepted).
		{"one of two recipients refused", "Subject: x\n\ny\n", []string{"good@example.org", "b@-bad-.example"}, exNoUser, "recipient <b@-bad-.example>: server said 5"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(tt.stdin, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.msg) || strings.Count(out, "\n") != 1 {
				t.Errorf("exit %d, output %q; want %d and one line with %q", code, out, tt.code, tt.msg)
			}
		})
	}
	if n := len(in.logs.all(func(e logEntry) bool { return e.isMsg("accepted") })); n != 0 {
		t.Errorf("%d messages accepted; every case above must send nothing", n)
	}

	// With the server stopped: the message waits in the maildrop, exit 0
	// (cron and PHP do not retry; maildrop_e2e_test.go follows it to the
	// MX).
	in.stop()
	maildrop := filepath.Join(in.dir, "data", "maildrop")
	out, code := run("To: b@example.org\n\nx\n", "-t")
	if code != 0 || out != "" || len(drops(t, maildrop)) != 1 {
		t.Errorf("server stopped: exit %d, %q, drops %q; want 0, silent, one drop", code, out, drops(t, maildrop))
	}
	// A message the pickup would refuse is not left there: it fails now,
	// as the server's 5xx would have made it fail.
	out, code = run("Subject: x\n\n"+strings.Repeat("x", 2001)+"\n", "b@example.org")
	if code != exDataErr || !strings.Contains(out, "the maildrop would refuse it: 554 5.6.0 Message line too long") {
		t.Errorf("a line too long with the server stopped: exit %d, %q; want 65", code, out)
	}
	// Only when the maildrop cannot take it either: EX_TEMPFAIL, so that
	// cron and PHP report it rather than bounce.
	if err := os.RemoveAll(maildrop); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(maildrop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = run("To: b@example.org\n\nx\n", "-t")
	if code != exTempFail || !strings.Contains(out, "cannot reach postern at "+in.cfg.Relay) ||
		!strings.Contains(out, "it cannot be left in the maildrop") || strings.Count(out, "\n") != 1 {
		t.Errorf("server stopped and no maildrop: exit %d, %q; want 75 on one line", code, out)
	}

	// No relay listener: a configuration error.
	cfg := w.config()
	cfg.Submission, cfg.Relay = freeAddr(t), ""
	norelay := newInstance(t, cfg)
	out, code = sendmailCmd(t, binPath, nil, "x\n", "sendmail", "--config", norelay.cfgPath, "b@example.org")
	if code != exConfig || !strings.Contains(out, "listen.relay is empty") {
		t.Errorf("no relay listener: exit %d, %q; want 78", code, out)
	}

	// hostname: localhost (the built-in config's) cannot qualify a bare
	// name: root@localhost would be refused by postern's own relay
	// listener. Said before connecting, as a configuration error.
	data, err := os.ReadFile(in.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(filepath.Dir(in.cfgPath), "localhost.yaml")
	if err := os.WriteFile(local, bytes.Replace(data, []byte("hostname: postern.test"), []byte("hostname: localhost"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"b@example.org"},               // the sender: the invoking user
		{"-f", "cron", "b@example.org"}, // -f with a bare name
		{"-f", "cron@example.org", "root"},
	} {
		out, code := sendmailCmd(t, binPath, nil, "Subject: x\n\ny\n", append([]string{"sendmail", "--config", local}, args...)...)
		if code != exConfig || !strings.Contains(out, `has no domain, and hostname "localhost" is not a fully qualified name`) ||
			!strings.Contains(out, "set hostname in "+local) {
			t.Errorf("sendmail %q with hostname localhost: exit %d, %q; want 78 saying what to set", args, code, out)
		}
	}
}

// TestMailq: mailq, as a command, through a symlink and as sendmail -bp,
// prints what queue list prints. The admin API is served in-process over
// a real queue, so that this test needs nothing of serve's wiring.
func TestMailq(t *testing.T) {
	t.Parallel()
	q, err := queue.Open(queue.Options{Path: filepath.Join(t.TempDir(), "queue.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	id, err := q.Enqueue(context.Background(), &queue.Envelope{From: "app@example.test", Rcpts: []string{"bob@dest.test"}},
		strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(httpapi.NewHandler(httpapi.Options{Queue: q}))
	defer srv.Close()
	in := newInstance(t, testConfig{Relay: freeAddr(t), Admin: strings.TrimPrefix(srv.URL, "http://"), Resolver: "127.0.0.1:53", DeliveryPort: 25})

	var want bytes.Buffer
	if err := cmdQueue("list", []string{"--config", in.cfgPath}, &want, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(want.String(), id) || !strings.Contains(want.String(), "bob@dest.test") {
		t.Fatalf("queue list:\n%s", want.String())
	}
	link := filepath.Join(t.TempDir(), "mailq")
	if err := os.Symlink(binPath, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{binPath, "mailq", "--config", in.cfgPath},
		{link, "--config", in.cfgPath},
		{binPath, "sendmail", "-bp", "-C", in.cfgPath},
	} {
		out, code := sendmailCmd(t, c[0], nil, "", c[1:]...)
		// The table's times are relative to the moment each command
		// runs ("now", "2s ago"): compare without them.
		relative := regexp.MustCompile(`next [^)]*\)|[0-9]`)
		if code != 0 || !strings.Contains(out, id) || relative.ReplaceAllString(out, "") != relative.ReplaceAllString(want.String(), "") {
			t.Errorf("%q: exit %d\n%s\nwant\n%s", c, code, out, want.String())
		}
	}
}

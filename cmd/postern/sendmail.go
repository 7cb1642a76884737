package main

// postern sendmail: the command-line interface of /usr/sbin/sendmail that
// cron, PHP's mail(), logwatch, smartd and countless legacy programs call. It reads one message, submits it to the relay listener
// of the local server with SMTP, and exits with a sysexits code, so that
// a caller that knows sendmail's codes (cron, PHP) reacts as it would.
// When the server cannot take the message (down, unreachable, a broken
// connection, a 4xx), it leaves it in the maildrop for the server to
// pick up (relay/pickup) and exits 0: those callers do not retry.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"postern/configs"
	"postern/queue/message"
	"postern/relay/pickup"
)

// The exit codes of sysexits.h that sendmail's callers know.
const (
	exUsage    = 64 // EX_USAGE: the command line is wrong
	exDataErr  = 65 // EX_DATAERR: the message or an address is wrong
	exNoUser   = 67 // EX_NOUSER: the server refused a recipient for good
	exSoftware = 70 // EX_SOFTWARE: the server refused for a reason not ours to fix
	exIOErr    = 74 // EX_IOERR: standard input could not be read
	exTempFail = 75 // EX_TEMPFAIL: try again later (server down or 4xx, and the maildrop unusable)
	exConfig   = 78 // EX_CONFIG: postern's configuration is unusable
)

// sendmailTimeout bounds the whole SMTP session with the local server.
const sendmailTimeout = 5 * time.Minute

// argv returns the command line as dispatch expects it. The same binary
// installed as sendmail or mailq (a symlink) runs that command, as every
// MTA's does.
func argv(args []string) []string {
	if len(args) == 0 {
		return nil
	}
	switch filepath.Base(args[0]) {
	case "sendmail", "mailq":
		return append([]string{filepath.Base(args[0])}, args[1:]...)
	}
	return args[1:]
}

// sendmailOpts is the parsed command line.
type sendmailOpts struct {
	config   string // -C FILE or --config FILE
	from     string // -f / -r; "" with fromSet means the null sender
	fromSet  bool
	fullName string // -F
	extract  bool   // -t: recipients from To, Cc, Bcc
	dotEnds  bool   // a line with a single dot ends the message (no -i)
	verbose  bool   // -v: print the server's final reply
	listQ    bool   // -bp: print the queue (mailq)
	notify   []string
	ret      string
	envID    string
	rcpts    []string // arguments
}

// Flags that take a value, attached (-fme@x) or as the next argument
// (-f me@x), as getopt does.
const sendmailValueFlags = "ABCFLNORVXbfhopr"

// parseSendmailArgs parses sendmail's command line. Flags may be combined
// ("-ti"); the first argument that is not a flag, or "--", starts the
// recipients. Accepted and ignored, as Postfix's sendmail ignores them:
// -B type, -X file, -L tag, -h hops, -O option=value, -A m|c, -p
// protocol, -U, -G, -n, -m, -o with e (error mode: -oem, -oee...), d
// (delivery mode: -odb, -odi...) or m, and -bm (the default mode).
func parseSendmailArgs(args []string) (*sendmailOpts, error) {
	o := &sendmailOpts{dotEnds: true}
	usage := func(format string, a ...any) error {
		return exitError{exUsage, "postern sendmail: " + fmt.Sprintf(format, a...)}
	}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			o.rcpts = append(o.rcpts, args[i+1:]...)
			break
		}
		if name, ok := strings.CutPrefix(arg, "--"); ok {
			name, val, hasVal := strings.Cut(name, "=")
			if name != "config" {
				return nil, usage("unknown option --%s", name)
			}
			if !hasVal {
				if i+1 >= len(args) {
					return nil, usage("--config needs a file")
				}
				i++
				val = args[i]
			}
			o.config = val
			continue
		}
		if arg == "-" {
			// Not an option, and no address either: a script that
			// meant "read stdin" would otherwise get a refused RCPT.
			return nil, usage("\"-\" is neither an option nor a recipient (the message is always read from standard input)")
		}
		if len(arg) < 2 || arg[0] != '-' {
			o.rcpts = append(o.rcpts, arg)
			continue
		}
		for j := 1; j < len(arg); j++ {
			c := arg[j]
			var val string
			if strings.IndexByte(sendmailValueFlags, c) >= 0 {
				val = arg[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						return nil, usage("option -%c needs a value", c)
					}
					i++
					val = args[i]
				}
				j = len(arg) // the value took the rest of the argument
			}
			switch c {
			case 't':
				o.extract = true
			case 'i':
				o.dotEnds = false
			case 'v':
				o.verbose = true
			case 'U', 'G', 'n', 'm':
			case 'B', 'X', 'L', 'h', 'O', 'A', 'p':
			case 'C':
				o.config = val
			case 'f', 'r':
				o.from, o.fromSet = val, true
			case 'F':
				o.fullName = val
			case 'N':
				n, err := parseNotify(val)
				if err != nil {
					return nil, usage("-N %s: %v", val, err)
				}
				o.notify = n
			case 'R':
				switch r := strings.ToUpper(val); r {
				case "FULL", "HDRS":
					o.ret = r
				default:
					return nil, usage("-R %s: want full or hdrs", val)
				}
			case 'V':
				// RFC 3461 §4.4: printable ASCII, at most 100 characters.
				if len(val) > 100 || strings.IndexFunc(val, func(r rune) bool { return r < ' ' || r > '~' }) >= 0 {
					return nil, usage("-V: the envelope ID must be printable ASCII, at most 100 characters")
				}
				o.envID = val
			case 'o':
				switch {
				case val == "i":
					o.dotEnds = false
				case val == "m", strings.HasPrefix(val, "e"), strings.HasPrefix(val, "d"):
				default:
					return nil, usage("unsupported option -o%s", val)
				}
			case 'b':
				switch val {
				case "m":
				case "p":
					o.listQ = true
				case "s":
					return nil, usage("-bs (SMTP on standard input) is not supported: give the message on standard input with -t -i, or talk SMTP to listen.relay")
				default:
					return nil, usage("unsupported mode -b%s", val)
				}
			case 'q':
				return nil, usage("-q is not supported: postern runs its queue itself (postern queue retry --all retries now)")
			default:
				return nil, usage("unknown option -%c", c)
			}
		}
	}
	return o, nil
}

// parseNotify reads -N's value: "never", or a comma list of success,
// failure and delay (RFC 3461 §4.1).
func parseNotify(v string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, p := range strings.Split(strings.ToUpper(v), ",") {
		p = strings.TrimSpace(p)
		switch p {
		case "NEVER", "SUCCESS", "FAILURE":
		case "DELAY", "DELAYED":
			p = "DELAY"
		default:
			return nil, fmt.Errorf("%q is not never, success, failure or delay", p)
		}
		if seen[p] {
			return nil, fmt.Errorf("%s given twice", p)
		}
		seen[p] = true
		out = append(out, p)
	}
	if seen["NEVER"] && len(out) > 1 {
		return nil, errors.New("never goes alone")
	}
	return out, nil
}

func cmdSendmail(args []string, stdin io.Reader, stdout io.Writer, stderr io.Writer) error {
	o, err := parseSendmailArgs(args)
	if err != nil {
		return err
	}
	if o.listQ {
		var qargs []string
		if o.config != "" {
			qargs = []string{"--config", o.config}
		}
		return cmdQueue("list", qargs, stdout, stderr)
	}
	fail := func(code int, format string, a ...any) error {
		return exitError{code, "postern sendmail: " + fmt.Sprintf(format, a...)}
	}
	cfg, err := loadConfig(o.config)
	if err != nil {
		// Config errors list every problem; one line is the promise.
		first, _, _ := strings.Cut(strings.TrimPrefix(err.Error(), "postern: "), "\n")
		return fail(exConfig, "%s (see postern config check)", first)
	}
	if cfg.Listen.Relay == "" {
		return fail(exConfig, "listen.relay is empty in %s: sendmail submits through the relay listener", cfg.File)
	}

	msg, err := readMessage(stdin, o.dotEnds, int64(cfg.Limits.MaxMessageSize))
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return fail(exDataErr, "the message is larger than limits.max_message_size (%s)", cfg.Limits.MaxMessageSize)
		}
		return fail(exIOErr, "reading the message: %v", err)
	}

	from := o.from
	if !o.fromSet {
		if from, err = invokingUser(cfg.Hostname); errors.Is(err, errUnqualified) {
			return fail(exConfig, "the sender %v; %s", err, unqualifiedHelp(cfg.File))
		} else if err != nil {
			return fail(exDataErr, "%v: give the sender with -f", err)
		}
	} else if from, err = envelopeSender(from, cfg.Hostname); errors.Is(err, errUnqualified) {
		return fail(exConfig, "-f %v; %s", err, unqualifiedHelp(cfg.File))
	} else if err != nil {
		return fail(exDataErr, "-f %s: %v", o.from, err)
	}

	hdr, body := splitHeader(msg)
	var rcpts []string
	for _, a := range o.rcpts {
		list, err := parseAddressList(a, cfg.Hostname)
		if errors.Is(err, errUnqualified) {
			return fail(exConfig, "recipient %v; %s", err, unqualifiedHelp(cfg.File))
		} else if err != nil {
			return fail(exDataErr, "recipient %q: %v", a, err)
		}
		rcpts = append(rcpts, list...)
	}
	if o.extract {
		list, err := headerRecipients(hdr, cfg.Hostname)
		if errors.Is(err, errUnqualified) {
			return fail(exConfig, "%v; %s", err, unqualifiedHelp(cfg.File))
		} else if err != nil {
			return fail(exDataErr, "%v", err)
		}
		rcpts = append(rcpts, list...)
	}
	rcpts = dedupe(rcpts)
	if len(rcpts) == 0 {
		if o.extract {
			return fail(exDataErr, "no recipients: none in To, Cc or Bcc, and none given as arguments")
		}
		return fail(exDataErr, "no recipients: give them as arguments, or use -t to read To, Cc and Bcc")
	}
	hdr = withoutField(hdr, "Bcc")
	fromHeader := from
	if fromHeader == "" { // the null sender: the From is whoever runs us
		fromHeader, _ = invokingUser(cfg.Hostname)
	}
	hdr = addFrom(hdr, fromHeader, o.fullName)
	data := joinMessage(hdr, body)

	reply, err := submitMessage(dialAddr(cfg.Listen.Relay), cfg.Hostname, from, rcpts, data, o)
	if tf, ok := errors.AsType[tempFailure](err); ok {
		d := &pickup.Drop{From: from, Rcpts: rcpts, Notify: o.notify, Ret: o.ret, EnvID: o.envID}
		path, err := dropMessage(cfg, d, data)
		if err != nil {
			return err.withReason(tf)
		}
		if o.verbose {
			fmt.Fprintf(stdout, "postern could not take the message (%s): left in the maildrop as %s, it is queued when postern runs\n", tf, path)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if o.verbose {
		fmt.Fprintln(stdout, reply)
	}
	return nil
}

// tempFailure is why the server could not take a message for now: it was
// not reachable, the connection broke, or it answered 4xx.
type tempFailure string

func (t tempFailure) Error() string { return string(t) }

// dropFailure is why a message could not be left in the maildrop, with
// its exit code.
type dropFailure struct {
	code int
	msg  string
}

func (f *dropFailure) withReason(why tempFailure) error {
	return exitError{f.code, fmt.Sprintf("postern sendmail: %s, and %s; message not sent", why, f.msg)}
}

// dropMessage leaves data with envelope d in the maildrop, after the
// checks the pickup would make: a message it would refuse for good is not
// left there to be refused unseen, but fails now, with the exit code the
// server's 5xx would have given.
func dropMessage(cfg *configs.Config, d *pickup.Drop, data []byte) (string, *dropFailure) {
	err := d.Validate()
	if err == nil {
		err = maildropLimits(cfg).Check(d)
	}
	if err == nil {
		err = maildropLimits(cfg).CheckMessage(bytes.NewReader(data))
	}
	if err != nil {
		code := exDataErr
		if errors.Is(err, pickup.ErrRcpt) {
			code = exNoUser
		}
		return "", &dropFailure{code, fmt.Sprintf("the maildrop would refuse it: %v", err)}
	}
	path, err := pickup.Write(cfg.MaildropDir(), d, data, time.Now())
	if err != nil {
		return "", &dropFailure{exTempFail, fmt.Sprintf("it cannot be left in the maildrop: %v", err)}
	}
	return path, nil
}

// submitMessage runs the SMTP transaction with the relay listener. All or
// nothing: when the server refuses any recipient, no message is sent, so
// that a caller retrying after a failure never sends a second copy to the
// others. A temporary failure is a tempFailure (the caller turns to the
// maildrop); a permanent one an exitError.
func submitMessage(addr, helo, from string, rcpts []string, data []byte, o *sendmailOpts) (string, error) {
	fail := func(code int, format string, a ...any) (string, error) {
		return "", exitError{code, "postern sendmail: " + fmt.Sprintf(format, a...)}
	}
	temp := func(format string, a ...any) (string, error) {
		return "", tempFailure(fmt.Sprintf(format, a...))
	}
	conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return temp("cannot reach postern at %s (listen.relay): %v", addr, unwrapOpErr(err))
	}
	conn.SetDeadline(time.Now().Add(sendmailTimeout))
	c := smtp.NewClient(conn)
	defer c.Close()
	// classify turns a failure at step into an exit: 4xx and broken
	// connections are temporary, 5xx says which input was wrong. A
	// connection that broke after the message was sent may have queued
	// it: the maildrop then makes a second copy, which is better than
	// none.
	classify := func(step string, permanent int, err error) (string, error) {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return temp("%s: %v", step, unwrapOpErr(err))
		}
		line := oneLineReply(se)
		if se.Code/100 == 4 {
			return temp("%s: server said %s", step, line)
		}
		return fail(permanent, "%s: server said %s; message not sent", step, line)
	}
	if err := c.Hello(helo); err != nil {
		return classify("greeting", exSoftware, err)
	}
	mo := &smtp.MailOptions{Return: smtp.DSNReturn(o.ret), EnvelopeID: o.envID}
	if err := c.Mail(from, mo); err != nil {
		return classify("sender <"+from+">", exDataErr, err)
	}
	var ro *smtp.RcptOptions
	if len(o.notify) > 0 {
		ro = &smtp.RcptOptions{}
		for _, n := range o.notify {
			ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
		}
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, ro); err != nil {
			return classify("recipient <"+r+">", exNoUser, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return classify("DATA", exDataErr, err)
	}
	if _, err := w.Write(data); err != nil {
		return classify("sending the message", exDataErr, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return classify("message", exDataErr, err)
	}
	c.Quit()
	return "250 " + resp.StatusText, nil
}

// oneLineReply is a server reply on one line: "550 5.1.1 no such user".
func oneLineReply(se *smtp.SMTPError) string {
	s := fmt.Sprint(se.Code)
	if ec := se.EnhancedCode; ec != smtp.NoEnhancedCode && ec != smtp.EnhancedCodeNotSet {
		s += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return s + " " + strings.ReplaceAll(se.Message, "\n", " ")
}

// unwrapOpErr shortens "dial tcp 127.0.0.1:2525: connect: connection
// refused" to its cause.
func unwrapOpErr(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

var errTooLarge = errors.New("message too large")

// readMessage reads the message from r and returns it with CRLF line
// ends: a bare LF or CR becomes CRLF (message.CRLFReader, the one line-end
// fixer), so that the server never sees a bare line end, and the last line
// gets one too. Unless dotEnds is false (-i), a line holding a single dot
// ends the message, as in sendmail; the rest of the input is not read.
// More than max bytes is errTooLarge.
func readMessage(r io.Reader, dotEnds bool, max int64) ([]byte, error) {
	cr := message.NewCRLFReader(io.LimitReader(r, max+2)) // +2: room for the final line end
	defer cr.Release()
	br := bufio.NewReader(cr)
	var out bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if dotEnds && (string(line) == ".\r\n" || string(line) == ".") {
				break
			}
			out.Write(line)
			if line[len(line)-1] != '\n' {
				out.WriteString("\r\n")
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if int64(out.Len()) > max {
			return nil, errTooLarge
		}
	}
	if int64(out.Len()) > max {
		return nil, errTooLarge
	}
	return out.Bytes(), nil
}

// headerField is one header field as it appears: its name and every line
// of it, continuation lines included, each ending in CRLF.
type headerField struct {
	name string
	raw  string
}

// value is the field's unfolded value (RFC 5322 §2.2.3).
func (f headerField) value() string {
	_, v, _ := strings.Cut(f.raw, ":")
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.TrimSpace(v)
}

// splitHeader splits a message with CRLF line ends into its header fields
// and its body (after the blank line, which neither holds), reading the
// header section as every part of postern does (queue/message). A message
// that does not start with header fields, or whose header section ends
// in a line that is not a field, gets its body from that line on: sendmail
// does the same, and the caller puts the blank line back.
func splitHeader(msg []byte) ([]headerField, []byte) {
	h := message.ParseHeader(msg)
	var fields []headerField
	for _, f := range h.Fields {
		raw := string(h.Raw[f.Start:f.End])
		if !strings.HasSuffix(raw, "\r\n") {
			raw += "\r\n"
		}
		fields = append(fields, headerField{name: f.Name, raw: raw})
	}
	switch h.Ending {
	case message.AtEmptyLine:
		return fields, msg[len(h.Raw):]
	case message.AtBody:
		return fields, msg[h.End:]
	}
	return fields, nil
}

// joinMessage puts fields and body back together with the blank line
// between them.
func joinMessage(fields []headerField, body []byte) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		b.WriteString(f.raw)
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// withoutField drops every field called name (case-insensitive).
func withoutField(fields []headerField, name string) []headerField {
	var out []headerField
	for _, f := range fields {
		if !strings.EqualFold(f.name, name) {
			out = append(out, f)
		}
	}
	return out
}

func hasField(fields []headerField, name string) bool {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return true
		}
	}
	return false
}

// headerRecipients are the addresses of every To, Cc and Bcc field, as -t
// reads them. Resent-* fields are not read.
func headerRecipients(fields []headerField, host string) ([]string, error) {
	var out []string
	for _, f := range fields {
		switch strings.ToLower(f.name) {
		case "to", "cc", "bcc":
		default:
			continue
		}
		v := f.value()
		if v == "" {
			continue
		}
		list, err := parseAddressList(v, host)
		if err != nil {
			return nil, fmt.Errorf("bad address in the %s: field: %w", f.name, err)
		}
		out = append(out, list...)
	}
	return out, nil
}

// parseAddressList reads a list of addresses as found in an argument or a
// header field: "a@x, B <b@y>", groups ("friends: a@x;"), and bare user
// names ("root"), which get "@host" as sendmail qualifies them.
func parseAddressList(s, host string) ([]string, error) {
	if list, err := mail.ParseAddressList(s); err == nil {
		var out []string
		for _, a := range list {
			out = append(out, a.Address)
		}
		return out, nil
	}
	// net/mail wants a domain: qualify bare names and try each again.
	var out []string
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if isGroupSyntax(p) {
			return nil, fmt.Errorf("%q: cannot read this list", s)
		}
		q := p
		if !strings.ContainsAny(p, "@<>\" ") {
			if !strings.Contains(host, ".") {
				return nil, fmt.Errorf("%q %w, and hostname %q is not a fully qualified name to add", p, errUnqualified, host)
			}
			q = p + "@" + host
		}
		a, err := mail.ParseAddress(q)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", p, err)
		}
		out = append(out, a.Address)
	}
	return out, nil
}

// errUnqualified: a bare name needs a domain, and the configured hostname
// is not one anyone could deliver to (the default config's "localhost"):
// postern's own relay listener would refuse user@localhost (RFC 5321
// §2.3.5 wants fully qualified names), so say why here instead.
var errUnqualified = errors.New("has no domain")

// unqualifiedHelp is what to do about errUnqualified.
func unqualifiedHelp(file string) string {
	return fmt.Sprintf("set hostname in %s to this host's fully qualified name, or give whole addresses (-f for the sender)", file)
}

func isGroupSyntax(s string) bool { return strings.ContainsAny(s, ":;") }

// envelopeSender reads -f's value: "<>" or "" is the null sender; a bare
// name gets "@host".
func envelopeSender(s, host string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "<>" {
		return "", nil
	}
	list, err := parseAddressList(s, host)
	if err != nil {
		return "", err
	}
	if len(list) != 1 {
		return "", errors.New("one address only")
	}
	return list[0], nil
}

// invokingUser is the default sender: the login name of whoever runs the
// command, at the configured hostname.
func invokingUser(host string) (string, error) {
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	for _, env := range []string{"LOGNAME", "USER"} {
		if name == "" {
			name = os.Getenv(env)
		}
	}
	if name == "" {
		return "", errors.New("cannot tell who is running this command")
	}
	return envelopeSender(name, host)
}

func dedupe(list []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range list {
		k := strings.ToLower(a)
		if !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// addFrom adds a From field when the message has none (RFC 5322 §3.6.2
// requires one): the sender, with -F's full name as display name. Date
// and Message-ID are not added here: every postern listener, the relay
// one included, adds them when missing (RFC 6409 §8.2, §8.3), in one
// place, with the server's clock and hostname.
func addFrom(fields []headerField, addr, fullName string) []headerField {
	if hasField(fields, "From") || addr == "" {
		return fields
	}
	from := (&mail.Address{Name: fullName, Address: addr}).String()
	return append(fields, headerField{"From", "From: " + from + "\r\n"})
}

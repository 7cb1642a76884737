package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"
)

// cmdSuppression runs "postern suppression SUB": like the queue commands,
// a client of the running server's admin API.
func cmdSuppression(sub string, args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("suppression " + sub)
	var asJSON bool
	user := fs.String("user", "", `the user whose list it is; "" is mail without AUTH (the relay listener)`)
	switch sub {
	case "list":
		fs.BoolVar(&asJSON, "json", false, "print the API's JSON array")
	case "add", "del":
	default:
		return usageErr("unknown command \"suppression %s\"", sub)
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	userSet := false
	fs.Visit(func(f *flag.Flag) { userSet = userSet || f.Name == "user" })
	switch {
	case sub == "list" && len(pos) > 0:
		return usageErr("suppression list takes no arguments, got %q", pos)
	case sub != "list" && (len(pos) != 1 || pos[0] == ""):
		return usageErr("suppression %s needs one address", sub)
	}
	c, err := adminClientFor(*cfgFlag)
	if err != nil {
		return err
	}

	if sub == "list" {
		path := "/api/suppressions"
		if userSet { // --user "" lists the relay listener's
			path += "?user=" + url.QueryEscape(*user)
		}
		var ss []apiSuppression
		return c.get(path, "", asJSON, stdout, &ss, func() error { return writeSuppressions(stdout, ss, queueNow()) })
	}

	method, done := http.MethodPut, "suppressed: mail to it is refused at RCPT"
	if sub == "del" {
		method, done = http.MethodDelete, "no longer suppressed"
	}
	path := "/api/suppressions/" + url.PathEscape(pos[0]) + "?user=" + url.QueryEscape(*user)
	body, err := c.call(method, path, "")
	if err != nil {
		return err
	}
	var r struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("the admin API at %s sent an unreadable reply: %v", c.addr, err)
	}
	fmt.Fprintf(stdout, "%s for %s: %s\n", r.Address, listOwner(*user), done)
	return nil
}

// apiSuppression is the admin API's JSON for a suppression (the CLI's own
// copy of the wire format).
type apiSuppression struct {
	User    string    `json:"user"`
	Address string    `json:"address"`
	Reason  string    `json:"reason"`
	QueueID string    `json:"queue_id"`
	Created time.Time `json:"created_at"`
	Expires time.Time `json:"expires_at"`
	Reply   *struct {
		Code     int    `json:"code"`
		Enhanced string `json:"enhanced_code"`
		Text     string `json:"text"`
	} `json:"reply"`
}

func listOwner(user string) string {
	if user == "" {
		return "mail without AUTH"
	}
	return "user " + user
}

// writeSuppressions prints one line per suppression: user, address, why,
// since when, until when, and the remote's reply for a bounce.
func writeSuppressions(w io.Writer, ss []apiSuppression, now time.Time) error {
	if len(ss) == 0 {
		_, err := fmt.Fprintln(w, "No suppressed addresses.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tADDRESS\tREASON\tSINCE\tEXPIRES\tREPLY")
	for _, s := range ss {
		user := s.User
		if user == "" {
			user = "-"
		}
		expires := "never"
		if !s.Expires.IsZero() {
			expires = relative(s.Expires, now)
		}
		rep := ""
		if s.Reply != nil {
			rep = oneLine(fmt.Sprintf("%d %s %s", s.Reply.Code, s.Reply.Enhanced, s.Reply.Text))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", user, s.Address, s.Reason, relative(s.Created, now), expires, rep)
	}
	return tw.Flush()
}

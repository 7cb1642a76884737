package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"postern/configs"
	"postern/queue"
	"postern/relay/httpapi"
	"postern/relay/webhooks"
)

// webhookEndpoints turns the config's webhooks into the senders'
// endpoints and the queue's subscribers (same names, same order), reading
// every secret file; the error lists every file that is wrong.
func webhookEndpoints(cfg *configs.Config) ([]webhooks.Endpoint, []queue.Subscriber, error) {
	var (
		eps  []webhooks.Endpoint
		subs []queue.Subscriber
		errs []error
	)
	for i, w := range cfg.Webhooks {
		secret, err := webhooks.ReadSecretFile(w.SecretFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("webhooks[%d].secret_file: %s: %w", i, w.SecretFile, unwrapFileErr(err)))
			continue
		}
		eps = append(eps, webhooks.Endpoint{Name: w.Name, URL: w.URL, Secret: secret, RetryFor: w.RetryFor.D()})
		subs = append(subs, queue.Subscriber{Name: w.Name, Wants: wantsEvent(w.Events, w.Users)})
	}
	return eps, subs, errors.Join(errs...)
}

// wantsEvent is a subscriber's filter: events empty means every type,
// users empty every message (the relay listener's too, which have no
// user).
func wantsEvent(events, users []string) func(*queue.Event) bool {
	if len(events) == 0 && len(users) == 0 {
		return nil
	}
	return func(e *queue.Event) bool {
		return (len(events) == 0 || slices.Contains(events, string(e.Type))) &&
			(len(users) == 0 || slices.Contains(users, e.User))
	}
}

// unwrapFileErr drops the path a file error repeats.
func unwrapFileErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkWebhookSecrets reads every webhook's secret file as serve will.
func checkWebhookSecrets(cfg *configs.Config) (problems []string) {
	if _, _, err := webhookEndpoints(cfg); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			problems = append(problems, fmt.Sprintf("%s: %s", cfg.File, line))
		}
	}
	return problems
}

// cmdWebhooks runs "postern webhooks list": a client of the admin API,
// like the queue commands.
func cmdWebhooks(sub string, args []string, stdout io.Writer) error {
	flags, cfgFlag := newFlags("webhooks " + sub)
	var (
		asJSON bool
		limit  int
	)
	switch sub {
	case "list":
		flags.BoolVar(&asJSON, "json", false, "print the API's JSON array")
		flags.IntVar(&limit, "limit", 100, "deliveries shown per endpoint (the counts cover all)")
	default:
		return usageErr("unknown command \"webhooks %s\"", sub)
	}
	if pos, err := parseFlags(flags, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("webhooks list takes no arguments, got %q", pos)
	}
	c, err := adminClientFor(*cfgFlag)
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodGet, fmt.Sprintf("/api/webhooks?limit=%d", limit), "")
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var bs []httpapi.WebhookBacklog
	if err := json.Unmarshal(body, &bs); err != nil {
		return fmt.Errorf("the admin API at %s sent an unreadable list: %v", c.addr, err)
	}
	return writeWebhookTable(stdout, bs, queueNow())
}

// writeWebhookTable prints each endpoint's counts, then its deliveries
// waiting, oldest first, with the last error of those that failed.
func writeWebhookTable(w io.Writer, bs []httpapi.WebhookBacklog, now time.Time) error {
	if len(bs) == 0 {
		_, err := fmt.Fprintln(w, "No webhooks configured")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for i, b := range bs {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		fmt.Fprintf(tw, "%s: %d pending, %d failing\n", b.Endpoint, b.Pending, b.Failing)
		if len(b.Deliveries) == 0 {
			continue
		}
		fmt.Fprintln(tw, "  EVENT\tTYPE\tQUEUE ID\tRECIPIENT\tATTEMPTS\tNEXT\tLAST ERROR")
		for _, d := range b.Deliveries {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.EventID, d.Type, d.QueueID, d.Recipient,
				d.Attempts, relative(d.NextAttempt, now), oneLine(d.LastError))
		}
		if n := b.Pending - len(b.Deliveries); n > 0 {
			fmt.Fprintf(tw, "  ... and %d more\n", n)
		}
	}
	return tw.Flush()
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"postern/queue"
)

// queueDestinations is `postern queue destinations`: how the running
// server shapes each destination and provider.
func queueDestinations(c *adminClient, asJSON bool, stdout io.Writer) error {
	body, err := c.call(http.MethodGet, "/api/destinations", "")
	if err != nil {
		return err
	}
	if asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var ds []queue.Destination
	if err := json.Unmarshal(body, &ds); err != nil {
		return fmt.Errorf("the admin API at %s sent an unreadable list: %v", c.addr, err)
	}
	return writeDestinations(stdout, ds, queueNow())
}

// writeDestinations prints one row per destination, with its domains and
// the reply that last changed its state on lines of their own below.
func writeDestinations(w io.Writer, ds []queue.Destination, now time.Time) error {
	if len(ds) == 0 {
		_, err := fmt.Fprintln(w, "No destination has delivery state (nothing sent yet, or delivery.mode capture)")
		return err
	}
	rows := [][]string{{"KIND", "DESTINATION", "STATE", "ACTIVE", "RATE", "UNTIL", "DELIVERED", "RATE-LIMITED", "FAILED"}}
	for _, d := range ds {
		active := fmt.Sprint(d.Active)
		if d.Limits.Connections > 0 {
			active += "/" + fmt.Sprint(d.Limits.Connections)
		}
		rate := "-"
		if d.Limits.Rate > 0 {
			rate = perTime(d.Limits.Rate)
			if d.Limits.ConfiguredRate != d.Limits.Rate {
				rate += " (of " + orUnlimited(d.Limits.ConfiguredRate) + ")"
			}
		}
		until := "-"
		if !d.Until.IsZero() {
			until = relative(d.Until, now)
		}
		name := d.Name
		if d.Provider != "" {
			name += " [" + d.Provider + "]"
		}
		rows = append(rows, []string{d.Kind, name, d.State, active, rate, until,
			fmt.Sprint(d.Delivered), fmt.Sprint(d.RateLimited), fmt.Sprint(d.ConnectionFailures)})
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, cell := range r {
			widths[i] = max(widths[i], len(cell))
		}
	}
	var b strings.Builder
	line := func(r []string) {
		for i, cell := range r {
			if i == len(r)-1 {
				b.WriteString(cell)
			} else {
				fmt.Fprintf(&b, "%-*s  ", widths[i], cell)
			}
		}
		b.WriteString("\n")
	}
	line(rows[0])
	for i, d := range ds {
		line(rows[i+1])
		if len(d.Domains) > 0 {
			fmt.Fprintf(&b, "    domains: %s\n", strings.Join(d.Domains, " "))
		}
		if !d.LastReply.IsZero() {
			fmt.Fprintf(&b, "    last reply (%s): %s\n", relative(d.LastReplyAt, now), oneLine(d.LastReply.String()))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// perTime writes a rate in the unit that keeps it readable: "12/s",
// "1.5/min", "0.5/h".
func perTime(perSecond float64) string {
	for _, u := range []struct {
		name string
		secs float64
	}{{"s", 1}, {"min", 60}, {"h", 3600}} {
		if v := perSecond * u.secs; v >= 1 || u.name == "h" {
			return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".") + "/" + u.name
		}
	}
	return ""
}

func orUnlimited(perSecond float64) string {
	if perSecond == 0 {
		return "unlimited"
	}
	return perTime(perSecond)
}

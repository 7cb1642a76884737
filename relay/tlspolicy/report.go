package tlspolicy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"strings"
	"time"
)

// TLS reports (RFC 8460): what is counted, and the report made of it.

// DayCounts are one UTC day's counts for one policy domain, as the
// reporter keeps them in the queue database (namespace "tlsrpt", key
// "YYYY-MM-DD/domain").
type DayCounts struct {
	Day      string         `json:"day"`    // "2006-01-02", UTC
	Domain   string         `json:"domain"` // the policy domain
	Policies []PolicyCounts `json:"policies"`
}

// PolicyCounts are the sessions counted under one policy.
type PolicyCounts struct {
	Policy   ReportPolicy   `json:"policy"`
	Success  int64          `json:"success"`
	Failures []FailureCount `json:"failures,omitempty"`
}

// FailureCount counts failed sessions of one kind, as RFC 8460 §4.4's
// failure-details group them.
type FailureCount struct {
	Result      ResultType `json:"result"`
	SendingIP   string     `json:"sending_ip,omitempty"`
	ReceivingIP string     `json:"receiving_ip,omitempty"`
	ReceivingMX string     `json:"receiving_mx,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	Count       int64      `json:"count"`
}

func (f FailureCount) sameKind(o FailureCount) bool {
	return f.Result == o.Result && f.SendingIP == o.SendingIP && f.ReceivingIP == o.ReceivingIP &&
		f.ReceivingMX == o.ReceivingMX && f.Reason == o.Reason
}

// add counts one session.
func (d *DayCounts) add(policy ReportPolicy, f FailureCount) {
	var pc *PolicyCounts
	for i := range d.Policies {
		if d.Policies[i].Policy.equal(policy) {
			pc = &d.Policies[i]
			break
		}
	}
	if pc == nil {
		d.Policies = append(d.Policies, PolicyCounts{Policy: policy})
		pc = &d.Policies[len(d.Policies)-1]
	}
	if f.Result == "" {
		pc.Success++
		return
	}
	for i := range pc.Failures {
		if pc.Failures[i].sameKind(f) {
			pc.Failures[i].Count++
			return
		}
	}
	f.Count = 1
	pc.Failures = append(pc.Failures, f)
}

func (d *DayCounts) clone() DayCounts {
	c := DayCounts{Day: d.Day, Domain: d.Domain, Policies: make([]PolicyCounts, len(d.Policies))}
	for i, p := range d.Policies {
		p.Failures = append([]FailureCount(nil), p.Failures...)
		c.Policies[i] = p
	}
	return c
}

// The report's JSON (RFC 8460 §4.4). Field order follows the RFC's
// example.
type reportJSON struct {
	Organization string       `json:"organization-name"`
	DateRange    dateRange    `json:"date-range"`
	Contact      string       `json:"contact-info"`
	ReportID     string       `json:"report-id"`
	Policies     []policyJSON `json:"policies"`
}

type dateRange struct {
	Start string `json:"start-datetime"`
	End   string `json:"end-datetime"`
}

type policyJSON struct {
	Policy  ReportPolicy  `json:"policy"`
	Summary summaryJSON   `json:"summary"`
	Details []failureJSON `json:"failure-details,omitempty"`
}

type summaryJSON struct {
	Success int64 `json:"total-successful-session-count"`
	Failure int64 `json:"total-failure-session-count"`
}

type failureJSON struct {
	Result      ResultType `json:"result-type"`
	SendingIP   string     `json:"sending-mta-ip,omitempty"`
	ReceivingMX string     `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP string     `json:"receiving-ip,omitempty"`
	Count       int64      `json:"failed-session-count"`
	Reason      string     `json:"failure-reason-code,omitempty"`
}

// dayRange is the start and end of a UTC day, as the report states them
// (RFC 8460 §4.4's example: 00:00:00Z to 23:59:59Z).
func dayRange(day string) (time.Time, time.Time, error) {
	start, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	return start, start.Add(24*time.Hour - time.Second), nil
}

// reportMeta is who reports, and the report's identity.
type reportMeta struct {
	Organization string // organization-name
	Contact      string // contact-info
	Submitter    string // the reporting domain (postern's host name)
	ReportID     string
}

// composeReport is the report's JSON, indented for whoever reads it.
func composeReport(d DayCounts, m reportMeta) ([]byte, error) {
	start, end, err := dayRange(d.Day)
	if err != nil {
		return nil, err
	}
	r := reportJSON{
		Organization: m.Organization,
		DateRange:    dateRange{start.Format(time.RFC3339), end.Format(time.RFC3339)},
		Contact:      m.Contact,
		ReportID:     m.ReportID,
		Policies:     []policyJSON{},
	}
	for _, p := range d.Policies {
		pj := policyJSON{Policy: p.Policy, Summary: summaryJSON{Success: p.Success}}
		for _, f := range p.Failures {
			pj.Summary.Failure += f.Count
			pj.Details = append(pj.Details, failureJSON{Result: f.Result, SendingIP: f.SendingIP,
				ReceivingMX: f.ReceivingMX, ReceivingIP: f.ReceivingIP, Count: f.Count, Reason: f.Reason})
		}
		r.Policies = append(r.Policies, pj)
	}
	return json.MarshalIndent(r, "", "  ")
}

func gzipped(data []byte) ([]byte, error) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// reportFilename is RFC 8460 §5.1's: submitter!policy-domain!begin!end!id
// with the times in seconds since the epoch, and .json.gz.
func reportFilename(d DayCounts, m reportMeta) string {
	start, end, _ := dayRange(d.Day)
	id := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '-'
	}, m.ReportID)
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", m.Submitter, d.Domain, start.Unix(), end.Unix(), id)
}

// composeMail is the report as a message (RFC 8460 §5.3): a
// multipart/report of report-type "tlsrpt" whose parts are a short text
// for people and the gzipped JSON as application/tlsrpt+gzip, with the
// TLS-Report-Domain and TLS-Report-Submitter fields and the subject the
// RFC spells out. Lines end in CRLF.
func composeMail(d DayCounts, m reportMeta, from, to string, gz []byte, now time.Time) ([]byte, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	text, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(text, "This is an aggregate TLS report (RFC 8460) from %s\r\nfor the mail its servers sent to %s on %s (UTC).\r\n",
		m.Organization, d.Domain, d.Day)
	att, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"application/tlsrpt+gzip"},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {fmt.Sprintf("attachment; filename=%q", reportFilename(d, m))},
	})
	if err != nil {
		return nil, err
	}
	writeBase64Lines(att, gz)
	if err := mw.Close(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", "<"+from+">")
	h("To", "<"+to+">")
	h("Date", now.Format(time.RFC1123Z))
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", d.Domain, m.Submitter, m.ReportID))
	h("TLS-Report-Domain", d.Domain)
	h("TLS-Report-Submitter", m.Submitter)
	h("Message-ID", "<"+m.ReportID+">")
	h("MIME-Version", "1.0")
	h("Content-Type", fmt.Sprintf("multipart/report; report-type=\"tlsrpt\"; boundary=%q", mw.Boundary()))
	b.WriteString("\r\n")
	b.Write(body.Bytes())
	return b.Bytes(), nil
}

// writeBase64Lines writes data in base64, 76 characters a line (RFC 2045
// §6.8).
func writeBase64Lines(w io.Writer, data []byte) {
	s := base64.StdEncoding.EncodeToString(data)
	for len(s) > 76 {
		w.Write([]byte(s[:76] + "\r\n"))
		s = s[76:]
	}
	w.Write([]byte(s + "\r\n"))
}

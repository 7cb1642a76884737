package doctor

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"postern/relay/spf"
)

// domain makes the checks of one sending domain.
func (d *doctor) domain(ctx context.Context, dom string) {
	spfPass := d.spf(ctx, dom)
	signers := d.dkim(ctx, dom)
	d.dmarc(ctx, dom, spfPass, signers)
	d.mx(ctx, dom)
	d.mtaSTS(ctx, dom)
	d.tlsRPT(ctx, dom)
}

// spfTerm is the mechanism to add for this host: a:hostname when the
// hostname's records cover every outgoing address (it follows an address
// change), else the addresses themselves.
func (d *doctor) spfTerm() string {
	covered := len(d.hostAddrs) > 0
	for _, a := range d.addrs {
		covered = covered && slices.Contains(d.hostAddrs, a)
	}
	if covered || len(d.addrs) == 0 {
		return "a:" + d.o.Hostname
	}
	var terms []string
	for _, a := range d.addrs {
		if a.Is4() {
			terms = append(terms, "ip4:"+a.String())
		} else {
			terms = append(terms, "ip6:"+a.String())
		}
	}
	return strings.Join(terms, " ")
}

// withTerm puts term into record before its all or redirect= (where a
// term still counts), or at its end.
func withTerm(record, term string) string {
	fields := strings.Fields(record)
	for i, f := range fields {
		l := strings.ToLower(strings.TrimLeft(f, "+-~?"))
		if i > 0 && (l == "all" || strings.HasPrefix(l, "redirect=")) {
			return strings.Join(slices.Insert(fields, i, term), " ")
		}
	}
	return strings.Join(append(fields, term), " ")
}

// spf checks that each outgoing address passes dom's SPF for a sender at
// dom (postern's envelope sender is the user's address), and reports
// whether all did.
func (d *doctor) spf(ctx context.Context, dom string) bool {
	term := d.spfTerm()
	fresh := ZoneTXT(dom, SPFValue(term))
	if len(d.addrs) == 0 {
		d.add(Finding{Subject: dom, Check: "SPF", Severity: Warning, Summary: "not checked: no outgoing address known (see above)"})
		return false
	}
	var pass []string
	for _, a := range d.addrs {
		out := spf.CheckHost(ctx, d.o.Resolver, a, dom, "postmaster@"+dom, d.o.Hostname)
		switch out.Result {
		case spf.ResultPass:
			pass = append(pass, fmt.Sprintf("%s (%s; %d of %d DNS lookups)", a, out.Matched, out.Lookups, spf.MaxLookups))
			continue
		case spf.ResultNone:
			d.add(Finding{Subject: dom, Check: "SPF", Severity: Error,
				Summary: dom + " has no SPF record: receivers cannot tell this host may send for it",
				Fix:     "publish one (~all marks other senders suspect; -all refuses them, once you know there are none)",
				Records: []string{fresh}})
		case spf.ResultTempError:
			d.add(Finding{Subject: dom, Check: "SPF", Severity: Warning, Summary: "DNS failed: " + out.Err.Error(),
				Fix: "check delivery.resolver, or try again"})
		case spf.ResultPermError:
			d.add(Finding{Subject: dom, Check: "SPF", Severity: Error,
				Summary: fmt.Sprintf("the SPF record is broken, which receivers treat as a failure: %v", out.Err),
				Fix:     "correct it; a record for this host alone is", Records: []string{fresh}})
		default:
			d.add(Finding{Subject: dom, Check: "SPF", Severity: Error,
				Summary: fmt.Sprintf("%s's SPF gives %s for this host's %s%s: the record does not include this host", dom, out.Result, a, because(out)),
				Fix:     "add " + term + " to it", Records: []string{ZoneTXT(dom, withTerm(out.Record, term))}})
		}
		return false
	}
	d.add(Finding{Subject: dom, Check: "SPF", Severity: OK, Summary: "pass for " + strings.Join(pass, ", ")})
	return true
}

// dkim checks every key configured for dom, and returns the domains (d=)
// of the keys that sign dom's mail.
func (d *doctor) dkim(ctx context.Context, dom string) []string {
	var signers []string
	for _, k := range d.o.Keys {
		if k.Domain == dom || k.SignSubdomains && strings.HasSuffix(dom, "."+k.Domain) {
			if !slices.Contains(signers, k.Domain) {
				signers = append(signers, k.Domain)
			}
		}
		if k.Domain == dom {
			d.dkimKey(ctx, k)
		}
	}
	switch {
	case len(signers) == 0:
		d.add(Finding{Subject: dom, Check: "DKIM", Severity: Warning,
			Summary: "no DKIM key signs mail from " + dom + ": DMARC then rests on SPF alone, and Gmail and Yahoo want both for bulk mail",
			Fix: fmt.Sprintf("make keys and add them to dkim.keys: postern dkim keygen --domain %s --selector s1 --algorithm ed25519 "+
				"(and once more with --algorithm rsa and another selector), then publish what it prints", dom)})
	case !slices.Contains(signers, dom):
		d.add(Finding{Subject: dom, Check: "DKIM", Severity: OK,
			Summary: fmt.Sprintf("signed with the keys of %s (sign_subdomains)", strings.Join(signers, ", "))})
	}
	return signers
}

// dkimKey checks that key k is published, and that the published key is
// the public half of the one postern signs with.
func (d *doctor) dkimKey(ctx context.Context, k Key) {
	name := k.Selector + "._domainkey." + k.Domain
	check := "DKIM " + k.Selector
	want, _ := tags(k.Record)
	rec := ZoneTXT(name, k.Record)
	all, err := d.o.Resolver.LookupTXT(ctx, name)
	if err != nil && !notFound(err) {
		d.add(Finding{Subject: k.Domain, Check: check, Severity: Warning, Summary: fmt.Sprintf("looking up %s failed: %v", name, err)})
		return
	}
	if len(all) == 0 {
		d.add(Finding{Subject: k.Domain, Check: check, Severity: Error,
			Summary: fmt.Sprintf("no key published at %s: receivers cannot check the signatures, so DKIM fails", name),
			Fix:     "publish the key (postern dkim dns prints it too)", Records: []string{rec}})
		return
	}
	revoked := false
	for _, t := range all {
		got, err := tags(t)
		if err != nil {
			continue
		}
		p := strings.Join(strings.Fields(got["p"]), "")
		if p == "" {
			revoked = true
			continue
		}
		if p == want["p"] && (got["k"] == "" && want["k"] == "rsa" || strings.EqualFold(got["k"], want["k"])) {
			d.add(Finding{Subject: k.Domain, Check: check, Severity: OK,
				Summary: fmt.Sprintf("%s publishes the public half of %s (%s)", name, k.File, want["k"])})
			return
		}
	}
	f := Finding{Subject: k.Domain, Check: check, Severity: Error, Records: []string{rec},
		Fix: "publish the key of " + k.File + " instead (or configure the private key that goes with the published one)"}
	if revoked {
		f.Summary = fmt.Sprintf("%s is revoked (empty p=): every signature with this selector fails", name)
	} else {
		f.Summary = fmt.Sprintf("%s publishes another key than the public half of %s: every signature fails", name, k.File)
	}
	d.add(f)
}

// dmarc checks dom's DMARC policy (or its organizational domain's, RFC
// 7489 §6.6.3) and whether postern's mail from dom aligns with it.
func (d *doctor) dmarc(ctx context.Context, dom string, spfPass bool, signers []string) {
	at := "_dmarc." + dom
	recs, err := d.txt(ctx, at, "v=DMARC1")
	org := orgDomain(dom)
	if err == nil && len(recs) == 0 && org != dom {
		at = "_dmarc." + org
		recs, err = d.txt(ctx, at, "v=DMARC1")
	}
	f := Finding{Subject: dom, Check: "DMARC"}
	switch {
	case err != nil:
		f.Severity, f.Summary = Warning, fmt.Sprintf("looking up _dmarc.%s failed: %v", dom, err)
		d.add(f)
		return
	case len(recs) == 0:
		f.Severity = Warning
		f.Summary = "no DMARC record: Gmail and Yahoo require one of bulk senders, and receivers trust mail with one more"
		f.Fix = "publish one; start with p=none and reports, and tighten it once the reports show your mail passing"
		f.Records = []string{ZoneTXT("_dmarc."+dom, DMARCValue(dom))}
		d.add(f)
		return
	case len(recs) > 1:
		f.Severity, f.Summary = Error, fmt.Sprintf("%s has %d DMARC records: receivers then apply none (RFC 7489 §6.6.3)", at, len(recs))
		f.Fix = "keep one"
		d.add(f)
		return
	}
	t, err := tags(recs[0])
	policy := t["p"]
	if at != "_dmarc."+dom && t["sp"] != "" {
		policy = t["sp"] // a subdomain's policy, from its organizational domain
	}
	if err != nil || !slices.Contains([]string{"none", "quarantine", "reject"}, strings.ToLower(policy)) {
		f.Severity, f.Summary = Error, fmt.Sprintf("%s is not a valid DMARC record (%q): receivers ignore it", at, recs[0])
		if err != nil {
			f.Summary += ": " + err.Error()
		}
		f.Fix = "correct it"
		f.Records = []string{ZoneTXT(at, DMARCValue(dom))}
		d.add(f)
		return
	}
	policy = strings.ToLower(policy)
	strictDKIM := strings.EqualFold(t["adkim"], "s")
	var aligned []string
	for _, s := range signers {
		if s == dom || !strictDKIM && orgDomain(s) == orgDomain(dom) {
			aligned = append(aligned, s)
		}
	}
	var parts []string
	where := ""
	if at != "_dmarc."+dom {
		where = " (from " + at + ")"
	}
	parts = append(parts, "p="+policy+where)
	if len(aligned) > 0 {
		parts = append(parts, fmt.Sprintf("DKIM aligned (d=%s%s)", strings.Join(aligned, ", d="), map[bool]string{true: ", adkim=s", false: ""}[strictDKIM]))
	}
	if spfPass {
		parts = append(parts, "SPF aligned (the envelope sender is at "+dom+")")
	}
	f.Summary = strings.Join(parts, "; ")
	switch {
	case len(aligned) == 0 && !spfPass:
		f.Severity = Warning
		if policy != "none" {
			f.Severity = Error
		}
		f.Summary += fmt.Sprintf("; DMARC fails for mail from %s: no aligned DKIM signature, and SPF does not pass (see above)", dom)
		f.Fix = "fix SPF or DKIM above; either one aligned and passing is enough"
	case policy == "none":
		f.Severity = Info
		f.Fix = "p=none only watches: once the reports (rua=) show your mail passing, move to p=quarantine, then p=reject"
	default:
		f.Severity = OK
	}
	d.add(f)
}

// mx checks that dom can receive mail: the replies and bounces to its
// senders go there, and some receivers refuse senders whose domain
// cannot.
func (d *doctor) mx(ctx context.Context, dom string) {
	mxs, err := d.o.Resolver.LookupMX(ctx, dom)
	f := Finding{Subject: dom, Check: "MX"}
	switch {
	case err != nil && !notFound(err):
		f.Severity, f.Summary = Warning, fmt.Sprintf("looking up MX %s failed: %v", dom, err)
	case len(mxs) == 1 && strings.TrimSuffix(mxs[0].Host, ".") == "":
		f.Severity = Warning
		f.Summary = dom + " says it receives no mail (null MX, RFC 7505): replies and bounces to its senders are lost, and some receivers refuse mail from it"
		f.Fix = "point its MX at the server that receives its mail"
	case len(mxs) == 0:
		if addrs, _ := d.lookupAddrs(ctx, dom); len(addrs) > 0 {
			f.Severity = Info
			f.Summary = dom + " has no MX record: mail to it goes to its address record (RFC 5321 §5.1)"
		} else {
			f.Severity = Warning
			f.Summary = dom + " has no MX record and no address: replies and bounces to its senders cannot arrive, and some receivers refuse mail from it"
			f.Fix = "publish an MX record for the server that receives its mail"
			f.Records = []string{mxPlaceholder(dom)}
		}
	default:
		sort.Slice(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
		var hosts []string
		for _, m := range mxs {
			hosts = append(hosts, fmt.Sprintf("%s (%d)", strings.TrimSuffix(m.Host, "."), m.Pref))
		}
		f.Severity, f.Summary = OK, "mail to "+dom+" goes to "+strings.Join(hosts, ", ")
	}
	d.add(f)
}

// mtaSTS checks that an MTA-STS record, if any, is well formed (RFC 8461
// §3.1) and, when Options.FetchSTSPolicy is set, that the policy it
// announces can be fetched and lets in every MX host of the domain: a
// policy in enforce mode that leaves one out makes senders that honour
// it refuse to deliver there. It is about mail sent to the domain, not
// from it: no record is only worth knowing.
func (d *doctor) mtaSTS(ctx context.Context, dom string) {
	name := "_mta-sts." + dom
	if !d.reportingRecord(ctx, dom, "MTA-STS", name, "v=STSv1", "id",
		"optional: it makes servers that send to "+dom+" insist on TLS (RFC 8461)", "") || d.o.FetchSTSPolicy == nil {
		return
	}
	url := "https://mta-sts." + dom + "/.well-known/mta-sts.txt"
	f := Finding{Subject: dom, Check: "MTA-STS policy"}
	p, err := d.o.FetchSTSPolicy(ctx, dom)
	if err != nil {
		f.Severity, f.Summary = Warning, fmt.Sprintf("%s announces a policy, but %s cannot be used: %v; senders then apply none", name, url, err)
		f.Fix = "serve the policy there (HTTPS with a certificate valid for mta-sts." + dom + ", text/plain), or remove the record"
		d.add(f)
		return
	}
	mxs, _ := d.o.Resolver.LookupMX(ctx, dom)
	var left []string
	for _, m := range mxs {
		if h := strings.TrimSuffix(m.Host, "."); h != "" && !p.Allows(h) {
			left = append(left, h)
		}
	}
	switch {
	case len(left) > 0 && p.Mode == "enforce":
		f.Severity = Error
		f.Summary = fmt.Sprintf("the policy (mode enforce, mx %s) leaves out the MX host(s) %s: senders that honour it will not deliver there",
			strings.Join(p.MX, " "), strings.Join(left, " "))
		f.Fix = "add them as mx: lines to " + url + ", and change the record's id= so that senders fetch it again"
	case len(left) > 0:
		f.Severity = Warning
		f.Summary = fmt.Sprintf("the policy (mode %s, mx %s) leaves out the MX host(s) %s: in enforce mode, senders would not deliver there",
			p.Mode, strings.Join(p.MX, " "), strings.Join(left, " "))
		f.Fix = "add them as mx: lines to " + url + " before changing to enforce"
	case p.Mode == "none":
		f.Severity, f.Summary = Info, "mode none: the domain has withdrawn its policy"
	case p.Mode == "enforce":
		f.Severity, f.Summary = OK, fmt.Sprintf("mode enforce, mx %s: every MX host is in it", strings.Join(p.MX, " "))
	default:
		f.Severity, f.Summary = Info, fmt.Sprintf("mode %s, mx %s: every MX host is in it; senders only report failures until mode is enforce", p.Mode, strings.Join(p.MX, " "))
	}
	d.add(f)
}

// tlsRPT checks that a TLS-RPT record, if any, is well formed (RFC 8460
// §3).
func (d *doctor) tlsRPT(ctx context.Context, dom string) {
	name := "_smtp._tls." + dom
	d.reportingRecord(ctx, dom, "TLS-RPT", name, "v=TLSRPTv1", "rua",
		"optional: servers that send to "+dom+" report TLS failures to the address in it (RFC 8460)",
		ZoneTXT(name, TLSRPTValue(dom)))
}

// reportingRecord is the shape both MTA-STS and TLS-RPT checks share: one
// optional TXT record with a version and one required tag. It reports
// whether the record is there and well formed.
func (d *doctor) reportingRecord(ctx context.Context, dom, check, name, version, required, absent, example string) bool {
	recs, err := d.txt(ctx, name, version)
	f := Finding{Subject: dom, Check: check}
	switch {
	case err != nil:
		f.Severity, f.Summary = Warning, fmt.Sprintf("looking up %s failed: %v", name, err)
	case len(recs) == 0:
		f.Severity, f.Summary = Info, "no "+name+" record; "+absent
		if example != "" {
			f.Records = []string{example}
		}
	case len(recs) > 1:
		f.Severity, f.Summary = Warning, fmt.Sprintf("%s has %d %s records: senders ignore them all", name, len(recs), version)
	default:
		t, err := tags(recs[0])
		if err != nil || t[required] == "" {
			f.Severity, f.Summary = Warning, fmt.Sprintf("%s (%q) has no %s= tag: senders ignore it", name, recs[0], required)
		} else {
			f.Severity, f.Summary = OK, fmt.Sprintf("%s: %s", name, recs[0])
		}
	}
	d.add(f)
	return f.Severity == OK
}

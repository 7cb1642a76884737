// Package doctor checks what decides whether mail from this host arrives:
// the host's DNS (address, reverse DNS, EHLO name), outbound port 25, the
// DNS of every domain it sends for (SPF, DKIM, DMARC, MX, MTA-STS,
// TLS-RPT) and the TLS certificate in use. Each Finding says what was
// found, how serious it is, what to change, and the exact DNS records to
// publish, so that `postern doctor` can be followed line by line.
//
// It reads DNS through an spf.Resolver (cmd/postern gives it one on
// delivery.resolver, tests one on relaytest's DNS server) and never
// writes anything. The only connections it makes beyond DNS are the port
// 25 probe, only when asked (Options.ProbeDomain), and the MTA-STS policy
// fetch of a domain that announces one, through Options.FetchSTSPolicy
// (cmd/postern's uses relay/tlspolicy, which doctor may not import).
//
// It imports spf (the SPF evaluator) and dkim (TXT record splitting), and
// nothing of the mail path: cmd/postern turns the configuration into
// Options.
package doctor

// Package spf reads SPF records and evaluates them (RFC 7208): Parse takes
// a record apart, CheckHost answers whether an address may send mail for a
// domain, the way a receiving server decides.
//
// postern sends mail; it does not receive any, so nothing in the mail path
// uses this package. `postern doctor` does: it asks whether this host's
// address passes each sending domain's SPF, and if not, why, so that it
// can say which record to publish. That is why Outcome says which term
// matched and how many of the 10 DNS lookups the evaluation took.
//
// What CheckHost does, by RFC 7208's sections:
//
//   - §4.3-4.5: the record is the one TXT record at the domain that starts
//     with "v=spf1"; none is None, two are PermError, a DNS failure is
//     TempError.
//   - §5: every mechanism (all, include, a, mx, ptr, ip4, ip6, exists) with
//     its qualifier and CIDR lengths; §6: redirect= (exp= is parsed and
//     not used: its text is for a receiver's rejection message), unknown
//     modifiers ignored.
//   - §4.6.4: at most 10 terms that query DNS (include, a, mx, ptr, exists,
//     redirect) in the whole evaluation, at most 10 names for one mx or
//     ptr, and at most 2 lookups that find nothing ("void"): beyond, a
//     PermError.
//   - §7: macros in domain-specs, with transformers and delimiters; %{p}
//     expands to "unknown" (§7.3 allows it, and validating it would cost
//     lookups for a macro the RFC says not to use).
//
// It imports nothing of postern; Resolver is what it needs of DNS, and
// *net.Resolver has it.
package spf

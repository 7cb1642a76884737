// Package smtpd is postern's inbound SMTP server: the submission (587,
// STARTTLS), submissions (465, implicit TLS) and trusted-relay listeners,
// built on go-smtp's server.
//
// A session checks who the client is (AUTH over TLS, or a trusted
// network) and what it may send as, then hands the message to the
// submission pipeline (relay/submit), which applies the header rules, adds
// the Received header, signs it (DKIM) and queues it. The queue answers
// only once the message is synced to disk; only then does the client get
// 250. Every reply the session decides passes
// through relay/status, the one place where errors become SMTP replies.
//
// Files: server.go (listeners, options and the interfaces this package
// consumes: Enqueuer, Authenticator, Signer, Observer), listener.go (the
// connection wrapper: limits, PROXY protocol, time limits), session.go (the
// SMTP dialogue), newline.go (bare line ends), policy.go (limits and relay
// rules). Bare line ends are fixed by queue/message, which every reader of
// messages in postern shares.
//
// It may import auth, queue and its leaves (the envelope it fills in, the
// message format), relay/submit and relay/status. It
// must not import delivery (relay/outbound, relay/capture) or the HTTP
// surface (relay/httpapi): the daemon wires those together in cmd/postern.
package smtpd

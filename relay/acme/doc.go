// Package acme obtains and renews the listeners' TLS certificates from an
// ACME certificate authority (Let's Encrypt by default; RFC 8555), in the
// background, and hands them to relay/certs, which serves them on every
// TLS listener.
//
// It is a thin layer over github.com/caddyserver/certmagic, which does
// the protocol, the renewal windows (a third of the lifetime before
// expiry, or when the CA's renewal information says so) and the storage
// (files under data_dir/acme, keys 0600 in 0700 directories). What this
// package adds is postern's part:
//
//   - the choice of one challenge: tls-alpn-01 or http-01 on a listener
//     certmagic opens only while a challenge is being solved, or dns-01
//     through a hook command the operator writes (hook.go);
//   - certificates only for the names configured, never on demand;
//   - events turned into postern's log lines: a certificate obtained or
//     renewed, and a failure with what it means (the old certificate, or
//     the self-signed one, stays in service) and how long the one in
//     service has left.
//
// A Manager never blocks serve: it starts in the background, and until a
// certificate exists for a name, Certificate returns nil and relay/certs
// serves its own (the configured files or the self-signed one). A CA that
// cannot be reached at start therefore leaves postern running, with a
// warning, and certmagic retries with backoff.
//
// certmagic keeps some state per name in package globals (its job queue
// dedupes renewals by name): a process runs one Manager.
//
// It imports nothing of postern.
package acme

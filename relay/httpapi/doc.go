// Package httpapi is the daemon's HTTP surface: one handler for the
// listen.admin listener that mounts each group of endpoints with the
// authentication it needs (the queue API and the destinations' shaping state, the liveness and readiness
// probes, and the Prometheus metrics served from relay/metrics' Handler),
// and one for listen.api, the send API for applications (NewSendHandler,
// send.go; the MIME message it builds from a JSON request is compose.go's
// job, done with go-message). Both share the guard against foreign Host
// names (DNS rebinding) and cross-origin state changes.
//
// The send API holds no mail logic either: it submits through the same
// pipeline as SMTP (relay/submit: header rules, Received, DKIM, durable
// before its 202), authenticates keys through the auth store, and spends
// the user's allowance through the SMTP policy's limiter, each through an
// interface defined here (SendQueue, Submitter, KeyAuthenticator,
// Limiter).
//
// It holds no mail logic. Every queue action is one call on the Queue
// interface, which this package defines and *queue.Queue implements; the
// package only validates the request, maps the queue's errors to HTTP
// statuses in one place (statusOf) and logs who asked for what.
//
// It may import queue (for its types) and the standard library's net/http;
// it must not import the SMTP rooms (relay/smtpd, relay/outbound): what it
// needs of them it gets through interfaces, wired by cmd/postern. The queue,
// for its part, imports nothing of HTTP.
//
// # Endpoints
//
//	GET    /api/queue?state=S        messages, oldest first; S is queued,
//	                                 deferred, held or failed ("" = all)
//	GET    /api/queue/{id}           one message
//	POST   /api/queue/{id}/retry     make every pending recipient due now
//	POST   /api/queue/retry          the same for every message: {"retried": n}
//	POST   /api/queue/{id}/hold      stop delivery attempts until release
//	POST   /api/queue/{id}/release   undo hold
//	POST   /api/queue/{id}/bounce    fail every pending recipient (a bounce is sent)
//	DELETE /api/queue/{id}           remove the message silently
//	GET    /api/webhooks?limit=N     per webhook endpoint: pending and failing
//	                                 counts and the first N deliveries (100)
//	GET    /api/suppressions?user=U  suppressed addresses, by user then
//	                                 address; no user parameter: every
//	                                 user's; user= (empty): mail without
//	                                 AUTH (the relay listener)
//	PUT    /api/suppressions/{addr}?user=U     suppress addr for U (manual)
//	DELETE /api/suppressions/{addr}?user=U     let mail to addr through again
//	GET    /api/destinations         how each destination and provider is
//	                                 shaped: JSON array of queue.Destination
//	POST   /api/drain?timeout=D      stop taking mail, deliver what is due
//	                                 (for at most D, 5m by default), exit:
//	                                 202 with the drain's status
//	GET    /api/drain                the drain's status (draining, in_flight,
//	                                 due, queued, deferred, held)
//	GET    /metrics                  Prometheus text exposition
//	GET    /healthz                  200 "ok" while the process serves HTTP
//	GET    /readyz                   200 when Options.Ready returns nil, else 503
//
// Successful API calls answer 200 with a JSON body. Errors answer
// {"error": "..."} with 400 (bad state filter, address or limit), 401
// (missing or wrong bearer token), 404 (unknown message, address not
// suppressed, or path), 405 (wrong method), 409 (the message is not in a
// state that allows the action, such as retrying a held message), 503 (the
// queue is closed) or 500.
//
// # Authentication
//
// When Options.Token is set, every /api/ request must carry
// "Authorization: Bearer TOKEN". The token is compared in constant time, on
// SHA-256 digests so that not even its length leaks through timing.
//
// /healthz, /readyz and /metrics never ask for the token. Probes are run by
// supervisors (systemd, Kubernetes, load balancers) that are awkward to give
// secrets to, and the answers say nothing but "up" or "not ready because X".
// Metrics carry no secrets either: counters, reply codes, listener names and
// queue depths, webhook endpoint names, never an address, a message ID or
// a user name. What they do reveal is traffic volume; an operator who
// minds that keeps listen.admin on loopback (the default) or behind a
// firewall, which the queue API without a token needs anyway.
package httpapi

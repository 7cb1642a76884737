// Package webhooks delivers the queue's events to HTTP endpoints, signed
// as the Standard Webhooks specification says (https://www.standardwebhooks.com,
// "Signature scheme": webhook-id, webhook-timestamp and webhook-signature
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>").
//
// The queue writes each event in the transaction of the state change it
// reports, one delivery row per subscriber (an outbox, queue/events.go);
// this room only reads them back (Source), posts them, and records what
// came of each attempt: EventDone after a 2xx answer or when it gives up,
// EventRetry with the next attempt otherwise. A delivery is marked done
// only after the endpoint answered, so a crash or a shutdown that cuts a
// request off leaves it due: delivery is at least once, and receivers
// deduplicate on webhook-id (the event's id, the same on every attempt,
// as is the body).
//
// Each endpoint has a Sender of its own, so one slow or failing endpoint
// never holds up another. A Sender runs a few requests at once; the queue
// hands out at most one delivery per message at a time, so each message's
// events arrive in order while different messages go concurrently.
//
// Imports: the queue and its leaves, the standard library and zap; not
// the SMTP rooms (smtpd, outbound), not httpapi, not configs (cmd/postern
// turns the configuration into Endpoints). relay/layout_test.go holds it
// to that.
package webhooks

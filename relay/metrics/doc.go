// Package metrics holds postern's Prometheus metrics: what the queue, the
// SMTP listeners and delivery report, in one registry of postern's own.
// It implements the observer interfaces those packages define
// (queue.Observer, smtpd.Observer), reads the queue's depth and delivery's
// destinations (Depther, Destinations) at scrape time, and serves the
// exposition through Handler, which the HTTP surface (relay/httpapi)
// mounts on /metrics.
//
// It may import queue for its types and Prometheus; nothing here knows of
// HTTP routing, SMTP sessions or storage.
package metrics

// Package relaytest provides real in-process peers for tests of SMTP
// delivery, in the spirit of net/http/httptest: a DNS server that answers
// from an in-memory zone, SMTP receivers that record what they get (the
// messages, and the commands in the order and grouping they arrived in, to
// count a client's round trips), hide extensions on request, and fail
// on command (and, as smarthosts, may require AUTH and record the
// credentials they were given), self-signed certificates, free loopback
// ports, and real programs run as child processes: Let's Encrypt's Pebble
// (ACME) and HAProxy in front of a fleet of SMTP servers (PROXY v2, with
// /readyz health checks).
//
// Everything listens on loopback addresses only (127.0.0.0/8, ::1) and is
// stopped by t.Cleanup, so a test never leaves a peer behind and never sends
// traffic off the machine.
//
// MX hosts differ by IP address, not by port: the delivery port is one
// setting for the whole relay. A test that needs several MX hosts therefore
// runs several Receivers on different 127.0.0.x addresses sharing one port;
// FreePort picks a port that is free on all of them.
//
// The Start* constructors return errors instead of taking a testing.TB, for
// TestMain functions and runnable examples; the New* constructors are the
// usual entry points for tests.
package relaytest

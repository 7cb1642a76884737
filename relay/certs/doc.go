// Package certs holds the TLS certificate of postern's listeners: loaded
// from the configured files or, when none is configured, a self-signed one
// made once under data_dir; swapped on SIGHUP while sessions run. A
// Source (relay/acme's certificates, obtained and renewed by themselves)
// goes in front of it; the Store's own certificate is served for whatever
// the Source has nothing for yet.
//
// It is shared by everything that terminates TLS (the SMTP listeners in
// relay/smtpd, and the HTTP surface) and imports nothing of postern.
package certs

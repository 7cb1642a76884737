// Package dkim loads DKIM keys and signs outgoing mail with them
// (RFC 6376; Ed25519 keys per RFC 8463), using go-msgauth for the
// cryptography and canonicalization.
//
// The flow in postern: at start and on SIGHUP the configuration's
// dkim.keys go through LoadKeys, which reports every problem at once, and
// the keys become one immutable Signer that is swapped in whole. A session
// calls Signer.Sign once per message, after DATA and before queueing, and
// prepends what it returns; if Sign fails, the session answers with a
// temporary error and queues nothing, since mail that should be signed
// must not go out unsigned.
//
// What a signature covers: relaxed/relaxed canonicalization, SHA-256, a t=
// timestamp, and of RFC 6376 §5.4.1's recommended header fields those the
// message has, with From, Subject, Date, To, Cc and Message-ID oversigned
// so that a copy added on the way breaks the signature. No l= (body length)
// tag: with it, text appended to the body would still verify.
//
// Keys are published with DNSRecord, SplitTXT and RecordName; GenerateKey,
// MarshalPrivateKey and WriteKeyFile back `postern dkim keygen`.
package dkim

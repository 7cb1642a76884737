// Package auth is postern's user database: who may authenticate, with what
// password, and which envelope senders each user may submit with. It also
// provides the SASL servers (PLAIN and LOGIN) the SMTP session hands to
// go-smtp.
//
// # The users file
//
// One user per line, in the manner of htpasswd:
//
//	# comment
//	NAME:HASH:ALLOW
//
//	alice@example.test:$2b$12$…53 characters…:alice@example.test,@example.test
//	bob@example.test:$2b$12$…53 characters…
//	webapp:$2b$12$…53 characters…:noreply@example.test
//
// Lines are separated by LF (a trailing CR is ignored); blank lines and
// lines starting with '#' are ignored, as is whitespace around a line and
// around each pattern.
//
// NAME is the user name given to AUTH: 1 to 255 bytes of UTF-8 without ':',
// whitespace or control characters, not starting with '#'. Names are
// matched ignoring ASCII case, so two names differing only in case are a
// duplicate (an error); see Pattern for why case is folded.
//
// HASH is a bcrypt hash ($2a$, $2b$ or $2y$, as written by `postern user
// passwd` or `htpasswd -nB`); see BcryptCost and MaxPasswordLen. Parse
// errors never quote it.
//
// ALLOW is a comma-separated list of sender patterns (see Pattern):
// alice@example.test for one address, @example.test for any address at that
// domain but not its subdomains, * for any address. Every user with a
// non-empty list may also use the null sender <> (see User.MaySendAs). When
// ALLOW is empty or absent, the user may send as their own name if
// it is an address, and as nobody otherwise (the server logs a warning for
// such a user; `postern user add` refuses to create one, see DefaultAllow).
//
// Every problem in the file is reported at once, one per line as
// "path:line: problem" (see ParseError).
//
// # Editing
//
// Add, SetPassword and Delete rewrite the file atomically (temporary file
// in the same directory, mode 0600, fsync, rename, directory fsync),
// keeping comments and the other lines as they are. They refuse to touch an
// invalid file. A missing file reads as no users; Add creates it.
//
// # Application passwords
//
// A user may also have application passwords, one per application, kept
// in a keys file beside the users file (DefaultKeysFile: the users file's
// path plus ".keys"), one per line:
//
//	ID:USER:SHA256:CREATED:LABEL
//	4lay3rpszo232:alice@example.test:9f86d0…64 hex digits…:20261206T101500Z:nightly backup
//
// AddKey makes one and returns it once: "pk_" + ID + "_" + 160 random bits,
// in lowercase base32. It works wherever its user's password does, with
// the same rights, and names its own ID, so that Store.AuthenticateKey
// finds its user without a name. Only its SHA-256 is stored: bcrypt's cost
// protects passwords people chose, and 160 random bits need none.
// DeleteKey revokes one; the keys file follows the users file's rules of
// syntax, errors (never quoting a hash) and atomic rewriting.
//
// # Serving
//
// A Store serves a users file and its keys file to the SMTP server and
// picks up changes to them without a restart. Store.Authenticate makes
// every failure take the same time, known user or not.
//
// A bcrypt check at cost 12 takes about a quarter of a second of CPU,
// which caps a client that opens a connection per message at a few
// messages a second. So a password that passed a full check is remembered
// for Store.CacheTTL, as an HMAC under a key the process draws at start
// (never the password, never an unkeyed hash), tied to the stored hash it
// was checked against: the same password again costs one HMAC, anything
// else (another password, a changed or deleted user, the first
// authentication after a start) a full check. Application passwords need
// neither. Only successes are cached, so the failure timing is unchanged.
//
// At most Store.MaxChecks full checks (runtime.NumCPU() by default) run at
// once, the dummy check of an unknown user included; an attempt that finds
// none free waits up to Store.CheckWait and then fails with ErrBusy, which
// the SMTP session answers 454 4.7.0, so that an AUTH flood cannot take the
// CPU from sessions already sending. Cache hits and application passwords
// need no slot, and the failure padding does not hold one.
package auth

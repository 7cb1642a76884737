package main

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"postern/auth"
	"postern/dkim"
	"postern/relay/doctor"
)

// daemonUser is the system user the .deb creates and the systemd unit runs
// postern as: init run as root gives it the files it writes.
const daemonUser = "postern"

// initAnswers is everything `postern init` asks.
type initAnswers struct {
	Hostname  string
	Domains   []string
	User      string
	ACMEEmail string
	Addresses []netip.Addr
	Dir       string // where the config, users and DKIM keys go
	DataDir   string
}

// cmdInit is `postern init`: a first configuration, user and DKIM keys,
// and the DNS records to publish. Interactive, or with --yes from flags
// alone, for scripts.
func cmdInit(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by run
	yes := fs.Bool("yes", false, "ask nothing: take the flags and the defaults")
	hostname := fs.String("hostname", "", "this server's public name (the EHLO name; its PTR should give it)")
	domains := fs.String("domain", "", "the domains mail is sent from, comma-separated (default: the hostname's parent)")
	userName := fs.String("user", "", "the first user (default postmaster@DOMAIN)")
	acmeEmail := fs.String("acme-email", "", "get the certificate from Let's Encrypt, with this contact address")
	ips := fs.String("ip", "", "this host's public addresses, comma-separated (for the A and PTR records)")
	dir := fs.String("dir", "/etc/postern", "where to write postern.yaml, the users file and the DKIM keys")
	dataDir := fs.String("data-dir", "/var/lib/postern", "data_dir: the queue, spool and certificates")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("init takes no arguments, got %q", pos)
	}
	a := initAnswers{Hostname: *hostname, User: *userName, ACMEEmail: *acmeEmail, Dir: *dir, DataDir: *dataDir,
		Domains: splitList(*domains)}
	if a.Hostname == "" {
		if h, err := os.Hostname(); err == nil && strings.Contains(h, ".") {
			a.Hostname = h
		}
	}
	ipList := *ips
	if !*yes {
		in := bufio.NewReader(stdin)
		ask := func(question, def string) string {
			if def != "" {
				fmt.Fprintf(stderr, "%s [%s]: ", question, def)
			} else {
				fmt.Fprintf(stderr, "%s: ", question)
			}
			line, _ := in.ReadString('\n') // EOF: the default
			if line = strings.TrimSpace(line); line != "" {
				return line
			}
			return def
		}
		a.Hostname = ask("This server's public host name (its reverse DNS should give it)", a.Hostname)
		a.Domains = splitList(ask("Domains you send mail from, comma-separated", strings.Join(defaultDomains(a), ",")))
		a.User = ask("The first user's name (an address: it may send as any address of those domains)", defaultUser(a))
		a.ACMEEmail = ask("Contact address for a Let's Encrypt certificate (empty: self-signed for now)", a.ACMEEmail)
		ipList = ask("This host's public IP addresses, comma-separated (empty: not known)", ipList)
	}
	if len(a.Domains) == 0 {
		a.Domains = defaultDomains(a)
	}
	if a.User == "" {
		a.User = defaultUser(a)
	}
	for _, s := range splitList(ipList) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return usageErr("init: %q is not an IP address", s)
		}
		a.Addresses = append(a.Addresses, ip.Unmap())
	}
	if err := a.check(); err != nil {
		return err
	}
	return a.write(stdout)
}

// defaultDomains: the hostname's parent domain (example.com for
// mail.example.com).
func defaultDomains(a initAnswers) []string {
	if _, parent, ok := strings.Cut(a.Hostname, "."); ok && strings.Contains(parent, ".") {
		return []string{parent}
	}
	return nil
}

func defaultUser(a initAnswers) string {
	if len(a.Domains) > 0 {
		return "postmaster@" + a.Domains[0]
	}
	if d := defaultDomains(a); len(d) > 0 {
		return "postmaster@" + d[0]
	}
	return ""
}

// configName is the file init writes in Dir.
const configName = "postern.yaml"

// check refuses, before anything is written, what would make a config
// that does not load or would overwrite one.
func (a *initAnswers) check() error {
	var errs []error
	if a.Hostname == "" || !strings.Contains(a.Hostname, ".") || dkim.CheckDomain(a.Hostname) != nil {
		errs = append(errs, fmt.Errorf("the hostname %q is not a fully qualified domain name (--hostname mail.example.com)", a.Hostname))
	}
	if len(a.Domains) == 0 {
		errs = append(errs, errors.New("no sending domain (--domain example.com)"))
	}
	for i, d := range a.Domains {
		a.Domains[i] = strings.ToLower(strings.TrimSuffix(d, "."))
		if dkim.CheckDomain(a.Domains[i]) != nil || !strings.Contains(d, ".") {
			errs = append(errs, fmt.Errorf("%q is not a domain name", d))
		}
	}
	if a.ACMEEmail != "" && !strings.Contains(a.ACMEEmail, "@") {
		errs = append(errs, fmt.Errorf("the ACME contact %q is not an address", a.ACMEEmail))
	}
	if err := auth.CheckAdd(filepath.Join(a.Dir, "users"), a.User, a.allow()); err != nil {
		errs = append(errs, fmt.Errorf("user %q: %w", a.User, err))
	}
	if _, err := os.Stat(filepath.Join(a.Dir, configName)); err == nil {
		errs = append(errs, fmt.Errorf("%s exists: init writes a new configuration, it does not change one", filepath.Join(a.Dir, configName)))
	}
	if len(errs) > 0 {
		return exitError{exitFail, "postern init: " + errors.Join(errs...).Error()}
	}
	return nil
}

// allow is the first user's allow list: any address of the domains.
func (a *initAnswers) allow() []string {
	var l []string
	for _, d := range a.Domains {
		l = append(l, "@"+d)
	}
	return l
}

// initKey is one DKIM key init makes.
type initKey struct{ Domain, Selector, File, Alg string }

// write makes the DKIM keys, the user and the config, in that order (the
// config last: it names the others), then prints the secrets and the DNS
// records to publish.
func (a *initAnswers) write(stdout io.Writer) error {
	// The directory and the config are readable by all: sendmail, run by
	// any local user, reads the config (it holds no secrets). The users,
	// their application passwords and the DKIM keys are 0600.
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(a.Dir, "dkim"), 0o700); err != nil {
		return err
	}
	var written []string
	year := strconv.Itoa(time.Now().Year())
	var keys []initKey
	var zkeys []doctor.Key
	for _, d := range a.Domains {
		// Ed25519 (RFC 8463) is small and fast, but not every receiver
		// checks it yet: RSA-2048 beside it is what they all verify.
		for _, alg := range []string{dkim.AlgEd25519, dkim.AlgRSA} {
			k := initKey{Domain: d, Selector: "s" + year + alg[:1], Alg: alg}
			k.File = filepath.Join("dkim", d+"."+k.Selector+".key")
			signer, err := dkim.GenerateKey(alg, dkim.RecommendedRSABits)
			if err != nil {
				return err
			}
			pem, err := dkim.MarshalPrivateKey(signer)
			if err != nil {
				return err
			}
			path := filepath.Join(a.Dir, k.File)
			if err := dkim.WriteKeyFile(path, pem); err != nil {
				return err
			}
			written = append(written, path)
			rec, err := dkim.DNSRecord(signer)
			if err != nil {
				return err
			}
			keys = append(keys, k)
			zkeys = append(zkeys, doctor.Key{Domain: d, Selector: k.Selector, Record: rec})
		}
	}

	// The user's login password is random and not shown: mail clients get
	// an application password, revocable on its own; `postern user passwd`
	// sets a login password when one is wanted.
	usersPath := filepath.Join(a.Dir, "users")
	if err := auth.Add(usersPath, a.User, randomSecret(), a.allow()); err != nil {
		return fmt.Errorf("user %s: %w", a.User, err)
	}
	keysPath := auth.DefaultKeysFile(usersPath)
	secret, info, err := auth.AddKey(keysPath, usersPath, a.User, "postern init")
	if err != nil {
		return fmt.Errorf("application password of %s: %w", a.User, err)
	}
	written = append(written, usersPath, keysPath)

	cfgPath := filepath.Join(a.Dir, configName)
	var b strings.Builder
	if err := configTemplate.Execute(&b, map[string]any{"A": a, "Keys": keys, "Date": time.Now().UTC().Format("2006-01-02")}); err != nil {
		return err
	}
	f, err := os.OpenFile(cfgPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	written = append(written, cfgPath)
	owner := giveToDaemon(append(written, a.Dir, filepath.Join(a.Dir, "dkim")))

	fmt.Fprintf(stdout, "wrote %s\n", cfgPath)
	for _, k := range keys {
		fmt.Fprintf(stdout, "DKIM key %s for %s (%s): %s\n", k.Selector, k.Domain, k.Alg, filepath.Join(a.Dir, k.File))
	}
	fmt.Fprintf(stdout, "user %s, who may send as %s, in %s\n", a.User, strings.Join(a.allow(), " "), usersPath)
	if owner != "" {
		fmt.Fprintf(stdout, "these files belong to the %s user, which serve runs as\n", owner)
	}
	fmt.Fprintf(stdout, "\nThe password for %s in your mail client (application password %s; shown only now, revoke it with `postern user key del %s %s`):\n\n    %s\n\n",
		a.User, info.ID, a.User, info.ID, secret)
	fmt.Fprintf(stdout, "; DNS records to publish, in zone-file form (check them with `postern doctor --config %s` once published)\n", cfgPath)
	fmt.Fprint(stdout, doctor.Zone(doctor.ZoneOptions{Hostname: a.Hostname, Addresses: a.Addresses, Domains: a.Domains, Keys: zkeys}))
	return nil
}

// giveToDaemon chowns paths to daemonUser when run as root and that user
// exists (the package made it), and returns its name; else "".
func giveToDaemon(paths []string) string {
	if os.Geteuid() != 0 {
		return ""
	}
	u, err := user.Lookup(daemonUser)
	if err != nil {
		return ""
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return ""
	}
	for _, p := range paths {
		if err := os.Chown(p, uid, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return ""
		}
	}
	return daemonUser
}

// randomSecret is a password nobody knows.
func randomSecret() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// configTemplate is the config init writes: the keys that differ from the
// defaults, each with why.
var configTemplate = template.Must(template.New("postern.yaml").Parse(`# postern.yaml, written by ` + "`postern init`" + ` on {{.Date}}.
# Keys not written here keep their defaults: ` + "`postern config default`" + `
# prints them all, and postern.example.yaml (in /usr/share/doc/postern, or
# configs/ in the source) explains each one. Relative paths are relative to
# this file. After a change:  postern config check --config THIS-FILE

# The name postern gives in EHLO and Received headers. Its A record must
# give this host's address, and the address's PTR record this name.
hostname: {{.A.Hostname}}

# The queue, large message bodies, certificates and the sendmail maildrop.
data_dir: {{.A.DataDir}}

listen:
  # Mail clients: STARTTLS then AUTH on 587, implicit TLS on 465 (RFC 8314).
  submission: ":587"
  submissions: ":465"
  # Programs on this host that cannot authenticate: no AUTH, only from
  # relay.trusted_networks (loopback). "" turns it off.
  relay: 127.0.0.1:2525
  # Health checks, metrics and the admin API (postern queue ...).
  admin: 127.0.0.1:8025

tls:
{{- if .A.ACMEEmail}}
  # A certificate from Let's Encrypt, renewed in the background and kept in
  # data_dir/acme. The CA connects to port 443 of the hostname while it
  # checks (tls-alpn-01); until the first certificate arrives, a
  # self-signed one is served. Setting this accepts the CA's subscriber
  # agreement.
  acme:
    email: {{.A.ACMEEmail}}
    challenge: tls-alpn-01
{{- else}}
  # Empty: a self-signed certificate, which mail clients warn about. Give
  # cert_file and key_file, or let postern get one from Let's Encrypt:
  #   acme: {email: postmaster@{{index .A.Domains 0}}}
  cert_file: ""
  key_file: ""
{{- end}}

auth:
  # Users and what they may send as: postern user add|passwd|del|list.
  # Their application passwords (users.keys): postern user key add|list|del.
  users_file: users

dkim:
  # Every domain signs with an Ed25519 key (RFC 8463) and an RSA-2048 key,
  # which all receivers can verify. Publish the records ` + "`postern dkim dns`" + `
  # prints before sending.
  keys:
{{- range .Keys}}
    - domain: {{.Domain}}
      selector: {{.Selector}}
      key_file: {{.File}}
{{- end}}
`))

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"postern/auth"
	"postern/configs"
	"postern/dkim"
	"postern/relay/acme"
	"postern/relay/doctor"
)

// doctorTimeout bounds a whole doctor run: DNS lookups and the probe.
const doctorTimeout = 2 * time.Minute

// cmdDoctor is `postern doctor`: what decides whether mail from this host
// arrives, checked, with what to change. Exit 0 when all is well, 1 on
// errors, 2 on warnings only.
func cmdDoctor(args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("doctor")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	offline := fs.Bool("offline", false, "no port 25 probe")
	probe := fs.String("probe", "", "try outbound port 25 to this domain's mail server (e.g. gmail.com)")
	ips := fs.String("ip", "", "this host's outgoing addresses as the world sees them, comma-separated (behind NAT)")
	more := fs.String("domain", "", "more sending domains to check, comma-separated")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("doctor takes no arguments, got %q", pos)
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	o, err := doctorOptions(cfg, *more)
	if err != nil {
		return err
	}
	for _, s := range splitList(*ips) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return usageErr("doctor: --ip %q is not an address", s)
		}
		o.Addresses = append(o.Addresses, a.Unmap())
	}
	o.ProbeDomain, o.Offline = *probe, *offline
	ctx, cancel := context.WithTimeout(context.Background(), doctorTimeout)
	defer cancel()
	r := doctor.Run(ctx, o)
	if *asJSON {
		err = r.WriteJSON(stdout)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if code := r.ExitCode(); code != 0 {
		return exitError{code, ""}
	}
	return nil
}

// doctorOptions turns the configuration into what the doctor checks: the
// domains of the DKIM keys and of the users' allowed senders (and those
// given), the keys with their DNS records, the certificate serve would
// use, and a resolver on delivery.resolver.
func doctorOptions(cfg *configs.Config, more string) (doctor.Options, error) {
	o := doctor.Options{
		Hostname:  cfg.Hostname,
		Resolver:  resolverFor(cfg.Delivery.Resolver),
		ProbePort: cfg.Delivery.Port,
	}
	keys, _, errs := dkim.LoadKeys(dkimKeyConfigs(cfg))
	if len(errs) > 0 {
		return o, fmt.Errorf("dkim: %w (postern config check says more)", errors.Join(errs...))
	}
	var domains []string
	addDomain := func(d string) {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if d != "" && !slices.Contains(domains, d) {
			domains = append(domains, d)
		}
	}
	for _, k := range keys {
		rec, err := dkim.DNSRecord(k.Signer)
		if err != nil {
			return o, err
		}
		o.Keys = append(o.Keys, doctor.Key{Domain: k.Domain, Selector: k.Selector, Record: rec, File: k.File, SignSubdomains: k.SignSubdomains})
		addDomain(k.Domain)
	}
	if cfg.Auth.UsersFile != "" {
		users, err := auth.List(cfg.Auth.UsersFile)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return o, fmt.Errorf("auth.users_file: %w", err)
		}
		var userDomains []string
		for _, u := range users {
			for _, p := range u.Allow {
				if d := p.Domain(); d != "" && !slices.Contains(userDomains, d) {
					userDomains = append(userDomains, d)
				}
			}
		}
		slices.Sort(userDomains)
		for _, d := range userDomains {
			addDomain(d)
		}
	}
	for _, d := range splitList(more) {
		addDomain(d)
	}
	o.Domains = domains
	o.Cert = certificateInUse(cfg)
	o.FetchSTSPolicy = stsFetcher(cfg)
	return o, nil
}

// certificateInUse reads the certificate serve serves: the files, the one
// tls.acme obtained, or the self-signed one.
func certificateInUse(cfg *configs.Config) doctor.Certificate {
	switch {
	case cfg.TLS.CertFile != "":
		c := doctor.Certificate{Source: "tls.cert_file " + cfg.TLS.CertFile}
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			c.Err = err
			return c
		}
		c.Chain, c.Err = parseChain(pair.Certificate)
		return c
	case cfg.TLS.ACME != nil:
		c := doctor.Certificate{Source: "tls.acme"}
		c.Chain, c.Err = acme.Stored(cfg.ACMEDir(), cfg.Hostname)
		return c
	}
	c := doctor.Certificate{Source: "self-signed (no tls.cert_file, no tls.acme)", SelfSigned: true}
	pair, err := tls.LoadX509KeyPair(filepath.Join(cfg.DataDir, "selfsigned.crt"), filepath.Join(cfg.DataDir, "selfsigned.key"))
	if err == nil {
		c.Chain, c.Err = parseChain(pair.Certificate)
	} else if !errors.Is(err, fs.ErrNotExist) {
		c.Err = err
	}
	return c
}

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// resolverFor asks server ("IP:port") only, or the system's resolver for
// "". Go's resolver: it reads /etc/resolv.conf like the rest of the
// system, and a custom server is one Dial away.
func resolverFor(server string) *net.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

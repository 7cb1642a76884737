package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"postern/dkim"
)

func cmdDKIM(sub string, args []string, stdout, stderr io.Writer) error {
	switch sub {
	case "keygen":
		return cmdDKIMKeygen(args, stdout)
	case "dns":
		return cmdDKIMDNS(args, stdout)
	}
	return usageErr("unknown command \"dkim %s\"", sub)
}

func cmdDKIMKeygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	domain := fs.String("domain", "", "signing domain (d=)")
	selector := fs.String("selector", "", "selector (s=)")
	alg := fs.String("algorithm", "rsa", "rsa or ed25519")
	bits := fs.Int("bits", 2048, "RSA key size")
	out := fs.String("out", "", "private key file (default DOMAIN.SELECTOR.key)")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("dkim keygen takes no arguments")
	}
	if *domain == "" || *selector == "" {
		return usageErr("dkim keygen needs --domain and --selector")
	}
	// Checked as loading the key will, before a key is written for a
	// configuration that would refuse it.
	if err := dkim.CheckDomain(*domain); err != nil {
		return usageErr("dkim keygen: --domain %q is not a domain name to sign for: %v", *domain, err)
	}
	if err := dkim.CheckSelector(*selector); err != nil {
		return usageErr("dkim keygen: --selector %q is not a valid selector (letters, digits, '-', '.'): %v", *selector, err)
	}
	if *alg != "rsa" && *alg != "ed25519" {
		return usageErr("dkim keygen: --algorithm %q is not rsa or ed25519", *alg)
	}
	if *out == "" {
		*out = *domain + "." + *selector + ".key"
	}
	key, err := dkim.GenerateKey(*alg, *bits)
	if err != nil {
		return err
	}
	pem, err := dkim.MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	if err := dkim.WriteKeyFile(*out, pem); err != nil {
		return err
	}
	rec, err := dkim.DNSRecord(key)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "; private key written to %s (mode 0600)\n", *out)
	printRecord(stdout, dkim.RecordName(*selector, *domain), rec)
	return nil
}

func cmdDKIMDNS(args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("dkim dns")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("dkim dns takes no arguments")
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	keys, _, errs := dkim.LoadKeys(dkimKeyConfigs(cfg))
	if len(errs) > 0 {
		var msgs []string
		for _, e := range errs {
			msgs = append(msgs, fmt.Sprintf("%s: %v", cfg.File, e))
		}
		return exitError{exitFail, strings.Join(msgs, "\n")}
	}
	if len(keys) == 0 {
		fmt.Fprintf(stdout, "; no dkim.keys in %s\n", cfg.File)
	}
	for _, k := range keys {
		rec, err := dkim.DNSRecord(k.Signer)
		if err != nil {
			return err
		}
		printRecord(stdout, dkim.RecordName(k.Selector, k.Domain), rec)
	}
	return nil
}

// printRecord writes a zone-file line; a TXT value over 255 bytes is split
// into several strings (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).
func printRecord(w io.Writer, name, value string) {
	var parts []string
	for _, p := range dkim.SplitTXT(value) {
		parts = append(parts, `"`+p+`"`)
	}
	fmt.Fprintf(w, "%s. IN TXT ( %s )\n", name, strings.Join(parts, " "))
}

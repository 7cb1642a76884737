package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"postern/auth"
	"postern/configs"
	"postern/dkim"
	"postern/relay/outbound"
	"postern/relay/pickup"
)

// cmdConfigCheck validates the configuration and everything it points to
// (users file, DKIM keys, TLS files), printing every problem at once.
func cmdConfigCheck(args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("config check")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("config check takes no arguments")
	}
	path, err := configPath(*cfgFlag)
	if err != nil {
		return err
	}
	var problems []string
	cfg, err := configs.Load(path)
	// The files the config names are checked too, unless the config could
	// not be read as a whole (the defaults standing in for it would be
	// checked instead) or its DKIM keys are already reported as wrong.
	checkFiles, checkDKIM, checkHost := true, true, true
	if err != nil {
		var errs configs.Errors
		if !errors.As(err, &errs) || cfg == nil {
			return exitError{exitFail, err.Error()}
		}
		for _, e := range errs {
			problems = append(problems, e.Error())
			checkFiles = checkFiles && e.Key != ""
			checkDKIM = checkDKIM && !strings.HasPrefix(e.Key, "dkim")
			checkHost = checkHost && e.Key != "hostname"
		}
	}
	var warnings []string
	if cfg != nil && checkFiles {
		if !checkDKIM {
			cfg.DKIM.Keys = nil
		}
		p, w := checkReferencedFiles(cfg)
		problems = append(problems, p...)
		warnings = append(warnings, w...)
	}
	// A hostname already reported as invalid needs no warning on top.
	if w := hostnameWarning(cfg); checkHost && w != "" {
		warnings = append([]string{w}, warnings...)
	}
	for _, w := range warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	if len(problems) > 0 {
		msg := ""
		for _, p := range problems {
			msg += p + "\n"
		}
		msg += fmt.Sprintf("%s: %d problem(s)", path, len(problems))
		return exitError{exitFail, msg}
	}
	fmt.Fprintf(stdout, "%s: OK\n", path)
	return nil
}

// checkReferencedFiles loads what the config points at, the way serve
// would, so that `config check` passing means `serve` starts.
func checkReferencedFiles(cfg *configs.Config) (problems, warnings []string) {
	if cfg.Auth.UsersFile != "" {
		users, err := auth.List(cfg.Auth.UsersFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: auth.users_file: %v", cfg.File, err))
		}
		p, w := checkKeysFile(cfg, users, err == nil)
		problems, warnings = append(problems, p...), append(warnings, w...)
	}
	switch {
	case cfg.TLS.CertFile != "":
		if _, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			problems = append(problems, fmt.Sprintf("%s: tls: cert_file %s with key_file %s: %v", cfg.File, cfg.TLS.CertFile, cfg.TLS.KeyFile, err))
		}
	case cfg.TLS.ACME != nil:
		if h := cfg.TLS.ACME.DNSHook; h != "" {
			if err := checkExecutable(h); err != nil {
				problems = append(problems, fmt.Sprintf("%s: tls.acme.dns_hook: %v", cfg.File, err))
			}
		}
	default:
		warnings = append(warnings, "tls: no certificate configured; serve will use a self-signed one")
	}
	if _, err := readAdminToken(cfg.Admin.TokenFile); err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", cfg.File, err))
	}
	problems = append(problems, checkWebhookSecrets(cfg)...)
	problems = append(problems, checkRedisPassword(cfg)...)
	p, w := checkSmarthostPasswords(cfg)
	problems, warnings = append(problems, p...), append(warnings, w...)
	p, w = checkMaildrop(cfg)
	problems, warnings = append(problems, p...), append(warnings, w...)
	_, w, errs := dkim.LoadKeys(dkimKeyConfigs(cfg))
	for _, e := range errs {
		problems = append(problems, fmt.Sprintf("%s: %v", cfg.File, e))
	}
	for _, s := range w {
		warnings = append(warnings, "dkim: "+s)
	}
	return problems, warnings
}

// checkExecutable reports why path cannot be run as a command, or nil.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file (chmod +x it)", path)
	}
	return nil
}

// checkMaildrop reports the maildrop directory's permissions as serve will
// find them (pickup.Inspect): what lets one local user read, delete or
// forge another's mail, and what serve refuses to start with, are
// problems; what only keeps local users from leaving mail there, and
// serve sets right at start, is a warning. A maildrop not made yet is
// fine: serve makes it.
func checkMaildrop(cfg *configs.Config) (problems, warnings []string) {
	found, err := pickup.Inspect(cfg.MaildropDir())
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s: data_dir: maildrop: %v", cfg.File, err))
	}
	for _, p := range found {
		if p.Unsafe || !p.Fixable {
			problems = append(problems, fmt.Sprintf("%s: data_dir: %s", cfg.File, p))
		} else {
			warnings = append(warnings, fmt.Sprintf("data_dir: %s (serve does this at start)", p))
		}
	}
	return problems, warnings
}

// checkKeysFile reads the keys file as serve will. A key whose user is not
// in the users file (known when usersOK) is only a warning: it
// authenticates nobody, but a user added again under that name would get
// it back.
func checkKeysFile(cfg *configs.Config, users []auth.UserInfo, usersOK bool) (problems, warnings []string) {
	keys, err := auth.ListKeys(cfg.Auth.KeysFile, "")
	if err != nil {
		return []string{fmt.Sprintf("%s: auth.keys_file: %v", cfg.File, err)}, nil
	}
	if !usersOK {
		return nil, nil
	}
	for _, k := range auth.Orphans(keys, users) {
		warnings = append(warnings, fmt.Sprintf("auth.keys_file: application password %s belongs to %s, who is not in auth.users_file: it authenticates nobody (remove it: postern user key del %s %s)",
			k.ID, k.User, k.User, k.ID))
	}
	return nil, warnings
}

// checkSmarthostPasswords reads every smarthost password file as serve
// will. An unset password_env is only a warning here: the variable may
// well be set in serve's environment (a systemd unit) and not in the
// shell running the check; serve itself refuses to start without it.
func checkSmarthostPasswords(cfg *configs.Config) (problems, warnings []string) {
	for i, h := range cfg.Delivery.Smarthosts {
		if h.Username == "" {
			continue
		}
		switch {
		case h.PasswordFile != "":
			if _, err := outbound.ReadPasswordFile(h.PasswordFile); err != nil {
				problems = append(problems, fmt.Sprintf("%s: delivery.smarthosts[%d].password_file: %v", cfg.File, i, err))
			}
		case h.PasswordEnv != "":
			if v, ok := os.LookupEnv(h.PasswordEnv); !ok || v == "" {
				warnings = append(warnings, fmt.Sprintf("delivery.smarthosts[%d].password_env: %s is not set here; serve will refuse to start without it", i, h.PasswordEnv))
			}
		}
	}
	return problems, warnings
}

// hostnameWarning says what a hostname that is not fully qualified (the
// built-in config's localhost) does to delivered mail, or "" when it is
// fine. Not an error: on loopback, or with capture mode, it does no harm.
func hostnameWarning(cfg *configs.Config) string {
	if cfg.Delivery.Mode != "deliver" || strings.Contains(cfg.Hostname, ".") {
		return ""
	}
	return fmt.Sprintf("hostname: %q is not a fully qualified name: MX hosts see it in EHLO "+
		"(many refuse that), bounces come from MAILER-DAEMON@%s, and sendmail cannot add it to bare names; "+
		"set it to this host's name in DNS", cfg.Hostname, cfg.Hostname)
}

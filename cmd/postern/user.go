package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"postern/auth"
	"postern/configs"
)

func cmdUser(sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if sub == "key" {
		if len(args) == 0 {
			return usageErr("user key needs a subcommand: add, list or del")
		}
		return cmdUserKey(args[0], args[1:], stdout)
	}
	fs, cfgFlag := newFlags("user " + sub)
	var allow *string
	if sub == "add" {
		allow = fs.String("allow", "", "comma-separated sender addresses the user may use")
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	want := 1
	if sub == "list" {
		want = 0
	}
	switch sub {
	case "add", "passwd", "del", "list":
	default:
		return usageErr("unknown command \"user %s\"", sub)
	}
	if len(pos) != want {
		return usageErr("user %s takes %d argument(s), got %d", sub, want, len(pos))
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	path, keysPath, err := authFilesOf(cfg)
	if err != nil {
		return err
	}

	switch sub {
	case "add":
		var list []string
		if *allow != "" {
			list = strings.Split(*allow, ",")
		}
		// Refused before the password prompt, not after it.
		if err := auth.CheckAdd(path, pos[0], list); err != nil {
			return fmt.Errorf("user add %s: %w", pos[0], err)
		}
		pw, err := readPassword(stdin, stderr)
		if err != nil {
			return err
		}
		if err := auth.Add(path, pos[0], pw, list); err != nil {
			return fmt.Errorf("user add %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "added %s to %s\n", pos[0], path)
	case "passwd":
		if err := auth.CheckUser(path, pos[0]); err != nil {
			return fmt.Errorf("user passwd %s: %w", pos[0], err)
		}
		pw, err := readPassword(stdin, stderr)
		if err != nil {
			return err
		}
		if err := auth.SetPassword(path, pos[0], pw); err != nil {
			return fmt.Errorf("user passwd %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "changed the password of %s\n", pos[0])
		tellNodesUsersChanged(cfg, stderr)
	case "del":
		// The user first: that alone ends their keys too (a key needs its
		// user). Then the keys, so that a user added again later under
		// this name does not inherit them.
		if err := auth.Delete(path, pos[0]); err != nil {
			return fmt.Errorf("user del %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "deleted %s from %s\n", pos[0], path)
		tellNodesUsersChanged(cfg, stderr)
		n, err := auth.DeleteUserKeys(keysPath, pos[0])
		if err != nil {
			return fmt.Errorf("user del %s: the user is deleted, and their application passwords authenticate nobody, "+
				"but they could not be removed from %s (a user added again under this name would get them back): %w", pos[0], keysPath, err)
		}
		if n > 0 {
			fmt.Fprintf(stdout, "revoked %d application password(s) of %s\n", n, pos[0])
		}
	case "list":
		users, err := auth.List(path)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tMAY SEND AS")
		for _, u := range users {
			var pats []string
			for _, p := range u.Allow {
				pats = append(pats, p.String())
			}
			fmt.Fprintf(tw, "%s\t%s\n", u.Name, strings.Join(pats, ","))
		}
		return tw.Flush()
	}
	return nil
}

// cmdUserKey is `postern user key add|list|del`: application passwords.
func cmdUserKey(sub string, args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("user key " + sub)
	label := fs.String("label", "", "what the key is for, shown by `user key list` (add only)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	want, ok := map[string]int{"add": 1, "list": 1, "del": 2}[sub]
	if !ok {
		return usageErr("unknown command \"user key %s\"", sub)
	}
	if len(pos) != want {
		return usageErr("user key %s takes %d argument(s), got %d", sub, want, len(pos))
	}
	if *label != "" && sub != "add" {
		return usageErr("--label goes with user key add")
	}
	usersPath, keysPath, err := authFiles(*cfgFlag)
	if err != nil {
		return err
	}
	name := pos[0]
	switch sub {
	case "add":
		secret, info, err := auth.AddKey(keysPath, usersPath, name, *label)
		if err != nil {
			return fmt.Errorf("user key add %s: %w", name, err)
		}
		fmt.Fprintf(stdout, "added application password %s of %s to %s\n", info.ID, info.User, keysPath)
		fmt.Fprintf(stdout, "It is shown only now. Give it to the application as the password of %s:\n", info.User)
		// Last, on a line of its own, for scripts: `... | tail -n 1`.
		fmt.Fprintln(stdout, secret)
	case "list":
		keys, err := auth.ListKeys(keysPath, name)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			// A typo in the name should not look like "no keys".
			if err := auth.CheckUser(usersPath, name); err != nil {
				return fmt.Errorf("user key list %s: %w", name, err)
			}
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCREATED\tLABEL")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", k.ID, k.Created.Format(time.RFC3339), k.Label)
		}
		return tw.Flush()
	case "del":
		if err := auth.DeleteKey(keysPath, name, pos[1]); err != nil {
			return fmt.Errorf("user key del %s %s: %w", name, pos[1], err)
		}
		fmt.Fprintf(stdout, "revoked application password %s of %s\n", pos[1], name)
	}
	return nil
}

// authFiles loads the configuration and returns the users and keys files
// it names.
func authFiles(cfgFlag string) (users, keys string, err error) {
	cfg, err := loadConfig(cfgFlag)
	if err != nil {
		return "", "", err
	}
	return authFilesOf(cfg)
}

// authFilesOf is authFiles of a loaded configuration.
func authFilesOf(cfg *configs.Config) (users, keys string, err error) {
	if cfg.Auth.UsersFile == "" {
		return "", "", fmt.Errorf("auth.users_file is not set in %s", cfg.File)
	}
	if cfg.File == configs.Builtin {
		// The built-in config keeps users under ./data: make sure it exists.
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return "", "", err
		}
	}
	return cfg.Auth.UsersFile, cfg.Auth.KeysFile, nil
}

// readPassword prompts twice on a terminal, or reads the first line of
// standard input (for scripts: `echo secret | postern user add ...`).
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", fmt.Errorf("the passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("no password on standard input (give it as the first line)")
	}
	return line, nil
}

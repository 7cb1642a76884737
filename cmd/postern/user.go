package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"postern/auth"
	"postern/configs"
)

func cmdUser(sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
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
	path := cfg.Auth.UsersFile
	if path == "" {
		return fmt.Errorf("auth.users_file is not set in %s", cfg.File)
	}
	if cfg.File == configs.Builtin {
		// The built-in config keeps users under ./data: make sure it exists.
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return err
		}
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
	case "del":
		if err := auth.Delete(path, pos[0]); err != nil {
			return fmt.Errorf("user del %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "deleted %s from %s\n", pos[0], path)
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

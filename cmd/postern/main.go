// Command postern is an SMTP submission and relay server.
//
// This file and its siblings only wire the packages together: flags,
// configuration, logging and signals. Every rule of mail handling lives in
// relay/, queue/, auth/ and dkim/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"

	"postern/configs"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `postern: SMTP submission and relay server

Usage:
  postern init [--yes] [--hostname H] [--domain D,...] [--user NAME] [--acme-email E]
               [--ip ADDR,...] [--dir /etc/postern] [--data-dir /var/lib/postern]
                                           a first config, user and DKIM keys; the DNS records to publish
  postern serve          [--config FILE]   run the server
  postern config check   [--config FILE]   validate a config; print every problem
  postern config default                   print the built-in default config
  postern user add NAME  [--allow LIST] [--config FILE]
  postern user passwd NAME  [--config FILE]
  postern user del NAME     [--config FILE]
  postern user list         [--config FILE]
  postern user key add NAME [--label TEXT] [--config FILE]   a new application password
  postern user key list NAME   [--config FILE]
  postern user key del NAME ID [--config FILE]
  postern queue list     [--state S] [--json] [--config FILE]   the queue, like mailq
  postern queue show ID  [--json] [--config FILE]
  postern queue retry ID|--all     [--config FILE]
  postern queue hold|release|delete|bounce ID  [--config FILE]
  postern queue migrate --from bbolt --to postgres [--config FILE]
                                           move a stopped node's queue into queue.postgres
  postern suppression list [--user U] [--json] [--config FILE]   suppressed addresses (--user "": the relay listener's)
  postern suppression add|del ADDRESS [--user U] [--config FILE]
  postern webhooks list  [--json] [--limit N] [--config FILE]   pending and failing webhook deliveries
  postern queue destinations [--json] [--config FILE]   how each destination is shaped
  postern dkim keygen --domain D --selector S [--algorithm rsa|ed25519] [--bits 2048] [--out FILE]
  postern dkim dns       [--config FILE]   print the DNS TXT record of every configured key
  postern doctor [--json] [--offline] [--probe DOMAIN] [--ip ADDR,...] [--domain D,...] [--config FILE]
                                           check DNS, reverse DNS, port 25 and the certificate;
                                           exit 0 all well, 1 errors, 2 warnings only
  postern sendmail [FLAGS] [RCPT...]       sendmail's interface: submit standard input
  postern mailq          [--config FILE]   print the queue (as postern queue list)
  postern drain [--timeout 5m] [--config FILE]   stop taking mail, deliver what is due, exit;
                                           with bbolt, deferred mail stays in the local queue
                                           (postern drain -h tells more)
  postern version

--config: a YAML file, or "builtin" for the built-in default. Without it,
$POSTERN_CONFIG, then /etc/postern/postern.yaml.
`

// Exit codes. 1 is "the command failed"; 2 is "the command line is wrong"
// (the flag package's convention).
const (
	exitFail  = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(argv(os.Args), os.Stdin, os.Stdout, os.Stderr))
}

// errUsage marks an error in the command line itself.
var errUsage = errors.New("usage")

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := dispatch(args, stdin, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage) // `postern serve -h`
		return 0
	case errors.Is(err, errUsage):
		if msg := strings.TrimPrefix(err.Error(), errUsage.Error()); msg != "" {
			fmt.Fprintln(stderr, "postern:"+strings.TrimPrefix(msg, ":"))
		}
		fmt.Fprint(stderr, usage)
		return exitUsage
	default:
		var ex exitError
		if errors.As(err, &ex) {
			if ex.msg != "" {
				fmt.Fprintln(stderr, ex.msg)
			}
			return ex.code
		}
		fmt.Fprintln(stderr, "postern:", err)
		return exitFail
	}
}

// exitError ends the command with a given code and message.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("no command given")
	}
	cmd, rest := args[0], args[1:]
	sub := func() (string, []string, error) {
		if len(rest) == 0 {
			return "", nil, usageErr("%s needs a subcommand", cmd)
		}
		return rest[0], rest[1:], nil
	}
	switch cmd {
	case "init":
		return cmdInit(rest, stdin, stdout, stderr)
	case "serve":
		return cmdServe(rest, stderr)
	case "config":
		s, r, err := sub()
		if err != nil {
			return err
		}
		switch s {
		case "check":
			return cmdConfigCheck(r, stdout)
		case "default":
			if len(r) > 0 {
				return usageErr("config default takes no arguments, got %q", r)
			}
			_, err := stdout.Write(configs.DefaultYAML())
			return err
		}
	case "user":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return cmdUser(s, r, stdin, stdout, stderr)
	case "queue":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return cmdQueue(s, r, stdout, stderr)
	case "suppression":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return cmdSuppression(s, r, stdout)
	case "webhooks":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return cmdWebhooks(s, r, stdout)
	case "dkim":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return cmdDKIM(s, r, stdout, stderr)
	case "doctor":
		return cmdDoctor(rest, stdout)
	case "sendmail":
		return cmdSendmail(rest, stdin, stdout, stderr)
	case "drain":
		return cmdDrain(rest, stdout)
	case "mailq":
		return cmdQueue("list", rest, stdout, stderr)
	case "version", "--version", "-version":
		if len(rest) > 0 {
			return usageErr("version takes no arguments, got %q", rest)
		}
		fmt.Fprintln(stdout, "postern", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageErr("unknown command %q", strings.Join(args[:min(2, len(args))], " "))
}

// newFlags returns a flag set with the --config flag every command takes.
func newFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by run
	cfg := fs.String("config", "", "configuration file, or \"builtin\"")
	return fs, cfg
}

// parseFlags parses args, allowing flags after positional arguments
// ("user add alice --allow x"), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageErr("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// configPath applies the lookup order: --config, $POSTERN_CONFIG,
// /etc/postern/postern.yaml.
func configPath(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if env := os.Getenv("POSTERN_CONFIG"); env != "" {
		return env, nil
	}
	const system = "/etc/postern/postern.yaml"
	if _, err := os.Stat(system); err == nil {
		return system, nil
	}
	return "", exitError{exitFail, "postern: no configuration: pass --config FILE, set $POSTERN_CONFIG, or create " + system +
		"\n(to try postern, `--config builtin` runs it on its built-in default, listening on loopback only)"}
}

// loadConfig finds and loads the configuration, turning every problem into
// one message.
func loadConfig(flagValue string) (*configs.Config, error) {
	path, err := configPath(flagValue)
	if err != nil {
		return nil, err
	}
	cfg, err := configs.Load(path)
	if err != nil {
		return nil, exitError{exitFail, err.Error()}
	}
	return cfg, nil
}

// newLogger builds the zap logger the config asks for, on stderr.
func newLogger(cfg configs.LogConfig, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Format == "json" {
		enc = zapcore.NewJSONEncoder(encCfg)
	} else {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}

// slogOf gives packages that log through log/slog (the queue: zap imports
// net/http, which the queue must not depend on) the same output as zap:
// same encoder, level and writer. zap adds no stack traces, so the bridge
// adds none either.
func slogOf(log *zap.Logger) *slog.Logger {
	return slog.New(zapslog.NewHandler(log.Core(), zapslog.AddStacktraceAt(slog.Level(math.MaxInt32))))
}

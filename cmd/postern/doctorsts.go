package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"postern/configs"
	"postern/relay/doctor"
	"postern/relay/tlspolicy"
)

// stsFetcher gives doctor the MTA-STS policy of a domain as delivery
// would get it: relay/tlspolicy's cache, fetching through
// delivery.resolver, with the system's roots (SSL_CERT_FILE too). The
// cache keeps why a fetch failed to itself and logs it: the warning it
// logs is the reason doctor reports.
func stsFetcher(cfg *configs.Config) func(ctx context.Context, domain string) (*doctor.STSPolicy, error) {
	return func(ctx context.Context, domain string) (*doctor.STSPolicy, error) {
		why := &warnings{}
		ps, err := tlspolicy.New(tlspolicy.Options{Resolver: cfg.Delivery.Resolver, MTASTS: true, Logger: slog.New(why)})
		if err != nil {
			return nil, err
		}
		dp := ps.Domain(ctx, domain)
		if dp.STS == nil {
			if err := why.err(); err != nil {
				return nil, err
			}
			// A policy in mode none: the domain withdrew it.
			return &doctor.STSPolicy{Mode: string(tlspolicy.STSNone), Allows: func(string) bool { return true }}, nil
		}
		p := dp.STS.Policy
		return &doctor.STSPolicy{Mode: string(p.Mode), MX: p.MX, Allows: p.Allows}, nil
	}
}

// warnings is a slog.Handler that keeps the warnings logged to it.
type warnings struct {
	mu   sync.Mutex
	msgs []error
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			msg = fmt.Sprint(a.Value.Any())
		}
		return true
	})
	w.mu.Lock()
	w.msgs = append(w.msgs, errors.New(msg))
	w.mu.Unlock()
	return nil
}

func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.msgs...)
}

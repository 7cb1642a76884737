package main

import (
	"context"
	"fmt"
	"time"

	"postern/configs"
	"postern/queue"
	"postern/queue/postgres"
)

// openQueue opens the queue backend the configuration names, with the
// options serve would give the embedded queue: bbolt in data_dir, or the
// PostgreSQL database of queue.postgres.dsn_file.
func openQueue(cfg *configs.Config, o queue.Options) (queue.Backend, error) {
	if cfg.QueueBackend() != configs.BackendPostgres {
		return queue.Open(o)
	}
	dsn, err := cfg.ReadDSN()
	if err != nil {
		return nil, fmt.Errorf("queue.postgres.dsn_file: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := postgres.Open(ctx, postgres.Options{
		DSN: dsn, Node: cfg.Queue.Postgres.Node, Lease: cfg.PostgresLease(),
		Deliverer: o.Deliverer, Workers: o.Workers, Retry: o.Retry, Hostname: o.Hostname,
		DelayWarning: o.DelayWarning, KeepFailed: o.KeepFailed, Suppression: o.Suppression,
		Signer: o.Signer, Gate: o.Gate, Observer: o.Observer, Logger: o.Logger, Subscribers: o.Subscribers, Bounces: o.Bounces,
	})
	if err != nil {
		return nil, fmt.Errorf("queue.backend postgres: %w", err)
	}
	return q, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"postern/configs"
	"postern/queue"
	"postern/queue/postgres"
)

// cmdQueueMigrate runs "postern queue migrate --from bbolt --to
// postgres": it moves a stopped node's queue (data_dir/queue.db and its
// spool) into the database of queue.postgres.dsn_file, message by
// message. Each message is inserted under its origin (this queue file's
// instance and the message's id), then deleted from the file; a second
// run skips what the first inserted, so a crash midway loses and
// duplicates nothing: run it again.
func cmdQueueMigrate(args []string, stdout io.Writer) error {
	fs, cfgFlag := newFlags("queue migrate")
	from := fs.String("from", "", "the backend to move the queue from: bbolt")
	to := fs.String("to", "", "the backend to move it to: postgres")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("queue migrate takes no arguments, got %q", pos)
	}
	if *from != configs.BackendBbolt || *to != configs.BackendPostgres {
		return usageErr("queue migrate: only --from bbolt --to postgres is supported")
	}
	cfg, err := loadConfig(*cfgFlag)
	if err != nil {
		return err
	}
	if cfg.Queue.Postgres.DSNFile == "" {
		return exitError{exitFail, fmt.Sprintf("postern: %s: queue.postgres.dsn_file is not set: it names the database to move the queue to", cfg.File)}
	}
	if _, err := os.Stat(cfg.QueuePath()); err != nil {
		return exitError{exitFail, fmt.Sprintf("postern: no queue to move: %v", err)}
	}
	src, err := queue.Open(queue.Options{Path: cfg.QueuePath(), SpoolDir: cfg.SpoolDir(), Logger: slog.New(slog.DiscardHandler)})
	if errors.Is(err, queue.ErrLocked) {
		return exitError{exitFail, fmt.Sprintf("postern: %s is in use: stop postern on this node first (postern drain)", cfg.QueuePath())}
	}
	if err != nil {
		return exitError{exitFail, "postern: " + err.Error()}
	}
	defer src.Close(context.Background())
	dsn, err := cfg.ReadDSN()
	if err != nil {
		return exitError{exitFail, fmt.Sprintf("postern: queue.postgres.dsn_file: %v", err)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	dst, err := postgres.Open(ctx, postgres.Options{DSN: dsn, Hostname: cfg.Hostname, KeepFailed: cfg.Delivery.KeepFailed.D()})
	cancel()
	if err != nil {
		return exitError{exitFail, "postern: " + err.Error()}
	}
	defer dst.Close(context.Background())
	instance, err := src.Instance()
	if err != nil {
		return exitError{exitFail, "postern: " + err.Error()}
	}
	var moved, already int
	err = src.Export(func(e *queue.Exported) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ins, err := dst.Import(ctx, "bbolt:"+instance+":"+e.Message.ID, e)
		if err != nil {
			return err
		}
		// Only once the database has it (COMMIT returned) does the
		// message leave the file.
		if err := src.Delete(e.Message.ID); err != nil && !errors.Is(err, queue.ErrNotFound) {
			return err
		}
		if ins {
			moved++
		} else {
			already++
		}
		return nil
	})
	fmt.Fprintf(stdout, "moved %d %s to PostgreSQL", moved, plural(moved, "message", "messages"))
	if already > 0 {
		fmt.Fprintf(stdout, " (%d already there from an earlier run, removed from %s)", already, cfg.QueuePath())
	}
	fmt.Fprintln(stdout)
	if err != nil {
		return exitError{exitFail, fmt.Sprintf("postern: migration stopped: %v (run it again: what moved is not moved twice)", err)}
	}
	return nil
}

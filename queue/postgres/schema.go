package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// schemaLock is the advisory lock key under which migrations run, so
// that nodes starting at once migrate one after the other: the second
// finds the work done.
const schemaLock = 0x706f737465726e // "postern"

// migrations are applied in order, each once, in one transaction per
// start; the version reached is kept in postern_schema. A migration is
// never edited once released: a change is a new entry.
var migrations = []string{
	// 1: the queue. due is when any node may lease the message next: its
	// earliest pending recipient's next attempt, or, while a node holds
	// it, the end of that node's lease (so that a dead node's messages
	// come due again then, not before). It is NULL for a held or final
	// message, and the partial index holds only the rest: leasing reads
	// the index from its first entry, so its cost depends on how much
	// work is due, not on how many messages wait.
	`CREATE TABLE postern_messages (
		id          bigserial PRIMARY KEY,
		origin      text UNIQUE,
		created     timestamptz NOT NULL,
		envelope    jsonb NOT NULL,
		size        bigint NOT NULL,
		body        bytea,
		rcpts       jsonb NOT NULL,
		state       text NOT NULL,
		held        boolean NOT NULL DEFAULT false,
		due         timestamptz,
		lease_owner text,
		lease_token bigint,
		purge_at    timestamptz
	);
	CREATE INDEX postern_messages_due ON postern_messages (due) WHERE due IS NOT NULL;
	CREATE INDEX postern_messages_purge ON postern_messages (purge_at) WHERE purge_at IS NOT NULL;
	CREATE TABLE postern_suppressions (
		username text NOT NULL,
		address  text NOT NULL,
		data     jsonb NOT NULL,
		PRIMARY KEY (username, address)
	);
	CREATE TABLE postern_idempotency (
		username text NOT NULL,
		key      text NOT NULL,
		data     jsonb NOT NULL,
		created  timestamptz NOT NULL,
		PRIMARY KEY (username, key)
	);
	CREATE TABLE postern_state (
		ns    text NOT NULL,
		key   text NOT NULL,
		value bytea NOT NULL,
		PRIMARY KEY (ns, key)
	);`,
	// 2: the event outbox (webhooks): one row per event, one delivery
	// row per subscriber that wants it. Deliveries are read in
	// recording order, at most one per message at a time.
	`CREATE TABLE postern_events (
		seq   bigserial PRIMARY KEY,
		event jsonb NOT NULL
	);
	CREATE TABLE postern_event_deliveries (
		sub        text NOT NULL,
		seq        bigint NOT NULL REFERENCES postern_events ON DELETE CASCADE,
		queue_id   text NOT NULL DEFAULT '',
		attempts   integer NOT NULL DEFAULT 0,
		next       timestamptz NOT NULL,
		last_error text NOT NULL DEFAULT '',
		PRIMARY KEY (sub, seq)
	);
	CREATE INDEX postern_event_deliveries_msg ON postern_event_deliveries (sub, queue_id, seq);`,
	// 3: the traces of submitted messages that are gone, for the late
	// bounces and complaints that listen.mx matches with them.
	`CREATE TABLE postern_traces (
		id      bigint PRIMARY KEY,
		data    jsonb NOT NULL,
		expires timestamptz NOT NULL
	);
	CREATE INDEX postern_traces_expires ON postern_traces (expires);`,
}

// migrate brings the schema to the latest version. It is idempotent and
// safe with several nodes at once: the advisory lock serialises them, and
// each reads the version under it.
func migrate(ctx context.Context, pool *pgxpool.Pool) (version int, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS postern_schema (version integer NOT NULL)`); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM postern_schema`).Scan(&version); err != nil {
			return err
		}
		if version > len(migrations) {
			return fmt.Errorf("the database has schema version %d, newer than this postern knows (%d): upgrade postern", version, len(migrations))
		}
		for ; version < len(migrations); version++ {
			if _, err := tx.Exec(ctx, migrations[version]); err != nil {
				return fmt.Errorf("schema migration %d: %w", version+1, err)
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM postern_schema; INSERT INTO postern_schema VALUES (`+fmt.Sprint(version)+`)`)
		return err
	})
	return version, err
}

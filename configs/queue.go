package configs

import (
	"os"
	"strings"
	"time"
)

// QueueConfig chooses the queue's storage.
type QueueConfig struct {
	// Backend is "bbolt" (the default: one file in data_dir, nothing to
	// set up, one node) or "postgres" (a database several nodes share:
	// a dead node's mail is delivered by the others).
	Backend  string         `yaml:"backend"`
	Postgres PostgresConfig `yaml:"postgres"`
}

// PostgresConfig is queue.postgres.
type PostgresConfig struct {
	// DSNFile holds the connection string (it usually has a password:
	// a secret, so never in the configuration itself), for example
	// "postgres://postern:PASSWORD@db.internal:5432/postern".
	DSNFile string `yaml:"dsn_file"`
	// Lease is how long a node may hold a message it is delivering
	// before another node may take it over (default 2m).
	Lease Duration `yaml:"lease"`
	// Node names this node in its leases (default: the host name and
	// process id).
	Node string `yaml:"node"`
}

// Queue backends.
const (
	BackendBbolt    = "bbolt"
	BackendPostgres = "postgres"
)

// QueueBackend is the backend in use: queue.backend, or bbolt.
func (c *Config) QueueBackend() string {
	if c.Queue.Backend == "" {
		return BackendBbolt
	}
	return c.Queue.Backend
}

// PostgresLease is queue.postgres.lease or its default.
func (c *Config) PostgresLease() time.Duration {
	if c.Queue.Postgres.Lease <= 0 {
		return 2 * time.Minute
	}
	return c.Queue.Postgres.Lease.D()
}

func (c *Config) validateQueue(bad func(key, format string, args ...any)) {
	q := c.Queue
	switch c.QueueBackend() {
	case BackendBbolt:
		if q.Postgres != (PostgresConfig{}) {
			bad("queue.postgres", "is set, but queue.backend is %q: set queue.backend: postgres to use it", c.QueueBackend())
		}
		return
	case BackendPostgres:
	default:
		bad("queue.backend", "%q is not one of bbolt, postgres", q.Backend)
		return
	}
	switch {
	case q.Postgres.DSNFile == "":
		bad("queue.postgres.dsn_file", "must be set with queue.backend postgres: a file holding the connection string (postgres://user:password@host:port/db), kept out of the configuration because it holds a password")
	default:
		if data, err := os.ReadFile(q.Postgres.DSNFile); err != nil {
			bad("queue.postgres.dsn_file", "cannot be read: %v", err)
		} else if strings.TrimSpace(string(data)) == "" {
			bad("queue.postgres.dsn_file", "%s is empty", q.Postgres.DSNFile)
		}
	}
	if l := q.Postgres.Lease.D(); l != 0 && (l < 10*time.Second || l > time.Hour) {
		bad("queue.postgres.lease", "%v is outside 10s..1h: a dead node's mail waits this long, and a live node renews it every third of it", l)
	}
}

// ReadDSN reads queue.postgres.dsn_file: the DSN, without surrounding
// white space.
func (c *Config) ReadDSN() (string, error) {
	data, err := os.ReadFile(c.Queue.Postgres.DSNFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

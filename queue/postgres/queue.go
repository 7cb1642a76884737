package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"postern/queue"
	"postern/queue/reply"
)

// DefaultLease is how long a node holds a message it is delivering
// before another node may take it: long enough that renewals (every
// third of it) survive a slow database, short enough that a dead node's
// mail waits minutes, not hours.
const DefaultLease = 2 * time.Minute

// Options configure Open. DSN is required.
type Options struct {
	// DSN is the PostgreSQL connection string (a secret: it usually
	// holds a password).
	DSN string
	// Node names this node in the leases it takes (default: host name
	// and process id). Two live nodes must not share one.
	Node string
	// Deliverer makes delivery attempts; nil opens the queue for
	// inspection and administration only (Start needs it).
	Deliverer queue.Deliverer
	// Workers is the number of messages this node delivers at once
	// (default 8).
	Workers int
	// Retry is the retry schedule.
	Retry queue.Retry
	// Lease is how long a node may hold a message before others may
	// take it (default DefaultLease). The holder renews it every third
	// of it while it delivers.
	Lease time.Duration
	// Hostname names this server in DSNs (Reporting-MTA and
	// MAILER-DAEMON@Hostname).
	Hostname string
	// DelayWarning, KeepFailed, Suppression, Signer, Gate and Observer
	// are as in queue.Options.
	DelayWarning time.Duration
	KeepFailed   time.Duration
	Suppression  queue.SuppressionOptions
	Signer       queue.Signer
	Gate         queue.Gate
	Observer     queue.Observer
	// Subscribers get the events of submitted messages (webhooks), as
	// in queue.Options. Every node must list the same ones.
	Subscribers []queue.Subscriber
	// Bounces turns on VERP return paths and the traces late bounces are
	// matched with, as in queue.Options.
	Bounces queue.BounceOptions
	// MaxConns caps the connection pool (default Workers/4 + 8, at most
	// 32: several nodes share the server's max_connections, 100 by default).
	MaxConns int32
	Logger   *slog.Logger
	// Now is the clock, for tests.
	Now func() time.Time
}

// Queue is the PostgreSQL queue: a queue.Backend that several nodes
// share. Its methods are safe for concurrent use.
type Queue struct {
	pool  *pgxpool.Pool
	opts  Options
	retry queue.Retry
	lease time.Duration
	node  string // lease_owner: Options.Node#random
	log   *slog.Logger
	obs   queue.Observer
	gate  queue.Gate

	wake     chan struct{} // the dispatcher looks for due work
	announce atomic.Bool   // new work: tell the other nodes
	stopping chan struct{}
	stopOnce sync.Once
	started  atomic.Bool
	runCtx   context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup // dispatcher, listener, workers
	busy     atomic.Int64   // messages in delivery on this node

	depthMu   sync.Mutex
	depth     map[queue.State]int
	depthAt   time.Time
	closeOnce sync.Once
	closeErr  error
	eventKick chan struct{}
}

var _ queue.Backend = (*Queue)(nil)

// channel is the LISTEN/NOTIFY channel: a payload is the node that
// queued new work (so it can ignore its own).
const channel = "postern_queue"

// Open connects, migrates the schema and returns the queue. Delivery
// starts with Start.
func Open(ctx context.Context, opts Options) (*Queue, error) {
	if opts.DSN == "" {
		return nil, errors.New("postgres queue: no DSN")
	}
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		// pgx's message may quote the DSN, password and all.
		return nil, errors.New("postgres queue: the DSN does not parse")
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = int32(min(opts.Workers/4+8, 32))
	}
	cfg.MaxConns = opts.MaxConns
	// The 250 promise: COMMIT returns once the WAL is flushed (and, with
	// a synchronous standby, once the standby has it). Set per session,
	// whatever the server's default says.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "postern"
	if opts.KeepFailed <= 0 {
		opts.KeepFailed = 7 * 24 * time.Hour
	}
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Bounces.Keep <= 0 {
		opts.Bounces.Keep = 7 * 24 * time.Hour
	}
	if opts.Node == "" {
		h, _ := os.Hostname()
		opts.Node = h + "/" + strconv.Itoa(os.Getpid())
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres queue: %w", err)
	}
	if _, err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres queue: %w", err)
	}
	q := &Queue{
		pool: pool, opts: opts, retry: opts.Retry.WithDefaults(), lease: opts.Lease,
		// The lease owner is the node's name and this process's own
		// mark: two processes given one name (a misconfiguration, or a
		// restart while the old process lingers) neither give back each
		// other's leases at Close nor ignore each other's NOTIFY.
		node: fmt.Sprintf("%s#%08x", opts.Node, rand.Uint32()),
		log:  log, obs: opts.Observer, gate: opts.Gate,
		wake: make(chan struct{}, 1), stopping: make(chan struct{}), eventKick: make(chan struct{}, 1),
	}
	if q.obs == nil {
		q.obs = queue.NopObserver{}
	}
	q.runCtx, q.cancel = context.WithCancel(context.Background())
	return q, nil
}

func (q *Queue) clock() time.Time { return q.opts.Now().UTC().Round(time.Microsecond) }

// formatID and parseID give ids the printed form bbolt's queue uses: 16
// upper-case hex digits.
func formatID(id int64) string { return fmt.Sprintf("%016X", id) }

func parseID(s string) (int64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("%w: %q", queue.ErrNotFound, s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || v > 1<<63-1 {
		return 0, fmt.Errorf("%w: %q", queue.ErrNotFound, s)
	}
	return int64(v), nil
}

// rcpt is one recipient as stored: queue.Recipient's fields and the
// bookkeeping of reports.
type rcpt struct {
	Address     string      `json:"address"`
	State       queue.State `json:"state"`
	Attempts    int         `json:"attempts,omitempty"`
	NextAttempt time.Time   `json:"next,omitzero"`
	LastAttempt time.Time   `json:"last,omitzero"`
	LastReply   reply.Reply `json:"reply,omitzero"`
	RemoteMTA   string      `json:"remote,omitempty"`
	Reported    bool        `json:"reported,omitempty"`
	Warned      bool        `json:"warned,omitempty"`
	RemoteDSN   bool        `json:"remote_dsn,omitempty"`
}

func pending(s queue.State) bool { return s == queue.StateQueued || s == queue.StateDeferred }

// messageState is the state of a message as a whole, as queue.Message
// defines it.
func messageState(rs []rcpt, held bool) queue.State {
	if held {
		return queue.StateHeld
	}
	st := queue.StateDelivered // every recipient delivered: about to go
	for _, r := range rs {
		switch r.State {
		case queue.StateDeferred:
			return queue.StateDeferred
		case queue.StateQueued:
			st = queue.StateQueued
		case queue.StateFailed:
			if st == queue.StateDelivered {
				st = queue.StateFailed
			}
		}
	}
	return st
}

// nextDue is the earliest next attempt of a pending recipient.
func nextDue(rs []rcpt) (time.Time, bool) {
	var t time.Time
	ok := false
	for _, r := range rs {
		if pending(r.State) && (!ok || r.NextAttempt.Before(t)) {
			t, ok = r.NextAttempt, true
		}
	}
	return t, ok
}

// Enqueue stores a message and returns its id once COMMIT has returned.
func (q *Queue) Enqueue(ctx context.Context, env *queue.Envelope, body io.Reader) (string, error) {
	return q.EnqueuePrefixed(ctx, env, body, nil)
}

// EnqueuePrefixed stores prefix() followed by body (see
// queue.Queue.EnqueuePrefixed), in one transaction with the idempotency
// key, if any. The id is returned only after COMMIT, with
// synchronous_commit on.
func (q *Queue) EnqueuePrefixed(ctx context.Context, env *queue.Envelope, body io.Reader, prefix func() ([]byte, error)) (string, error) {
	if len(env.Rcpts) == 0 {
		return "", errors.New("queue: no recipients")
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(body); err != nil {
		return "", err
	}
	data := buf.Bytes()
	if prefix != nil {
		p, err := prefix()
		if err != nil {
			return "", err
		}
		if len(p) > 0 {
			data = append(p, data...)
		}
	}
	now := q.clock()
	rs := make([]rcpt, len(env.Rcpts))
	for i, a := range env.Rcpts {
		rs[i] = rcpt{Address: a, State: queue.StateQueued, NextAttempt: now}
	}
	// Hand-off: with a worker free here, the message is inserted
	// already leased to this node and delivered at once, as if this node
	// had leased it: one transaction and one query fewer per message. If
	// the node dies, the lease ends and another node delivers it.
	var lease *leased
	if q.reserve() {
		lease = &leased{token: rand.Int64(), data: data}
		for i := range rs {
			r := &rs[i]
			r.Attempts, r.LastAttempt = 1, now
			r.NextAttempt = now.Add(q.retry.Backoff(1, rand.Float64()))
			lease.due = append(lease.due, i)
		}
	}
	var id int64
	var err error
	if q.wantsEvents(env) {
		var n int
		err = pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
			var err error
			if id, err = q.insertRcpts(ctx, tx, env, data, now, rs, "", lease); err != nil {
				return err
			}
			n, err = q.emit(ctx, tx, acceptedEvents(id, env, now))
			return err
		})
		if err == nil {
			q.eventsRecorded(n)
		} else {
			err = wrap(err)
		}
	} else {
		id, err = q.insertRcpts(ctx, q.pool, env, data, now, rs, "", lease)
	}
	if err != nil {
		if lease != nil {
			q.unreserve()
		}
		return "", err
	}
	if lease != nil {
		e := *env
		lease.row = &row{id: id, created: now, env: e, size: int64(len(data)), rcpts: rs, token: &lease.token}
		q.wg.Add(1)
		go q.work(*lease)
	} else {
		q.kick()
		q.announce.Store(true)
	}
	return formatID(id), nil
}

// reserve takes a worker slot for a hand-off, if delivery runs and one is
// free.
func (q *Queue) reserve() bool {
	if !q.started.Load() {
		return false
	}
	select {
	case <-q.stopping:
		return false
	default:
	}
	if q.busy.Add(1) > int64(q.opts.Workers) {
		q.busy.Add(-1)
		return false
	}
	return true
}

func (q *Queue) unreserve() { q.busy.Add(-1); q.kick() }

// insert writes one new message, due now. origin, when not "", names
// where a migrated message came from; a second insert of the same origin
// is skipped and returns 0.
func (q *Queue) insert(ctx context.Context, env *queue.Envelope, data []byte, now time.Time, origin string) (int64, error) {
	rs := make([]rcpt, len(env.Rcpts))
	for i, a := range env.Rcpts {
		rs[i] = rcpt{Address: a, State: queue.StateQueued, NextAttempt: now}
	}
	return q.insertRcpts(ctx, q.pool, env, data, now, rs, origin, nil)
}

// querier is a pool or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (q *Queue) insertRcpts(ctx context.Context, db querier, env *queue.Envelope, data []byte, created time.Time, rs []rcpt, origin string, lease *leased) (int64, error) {
	envJSON, err := json.Marshal(env)
	if err != nil {
		return 0, err
	}
	rcJSON, err := json.Marshal(rs)
	if err != nil {
		return 0, err
	}
	var due any
	due, _ = nextDue(rs)
	var owner, token any
	if lease != nil {
		due, owner, token = created.Add(q.lease), q.node, lease.token
	}
	var o any
	if origin != "" {
		o = origin
	}
	var id int64
	if env.IdempotencyKey == "" {
		err = db.QueryRow(ctx, `INSERT INTO postern_messages (origin, created, envelope, size, body, rcpts, state, due, lease_owner, lease_token)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (origin) DO NOTHING RETURNING id`,
			o, created, envJSON, len(data), data, rcJSON, messageState(rs, false), due, owner, token).Scan(&id)
	} else {
		acc, _ := json.Marshal(queue.Accepted{MessageID: env.MessageID, Created: created})
		// One statement, so one round trip: the message and its key
		// commit together or not at all.
		err = db.QueryRow(ctx, `WITH m AS (
			INSERT INTO postern_messages (origin, created, envelope, size, body, rcpts, state, due, lease_owner, lease_token)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $12, $13) RETURNING id)
			INSERT INTO postern_idempotency (username, key, data, created)
			SELECT $9, $10, jsonb_set($11::jsonb, '{id}', to_jsonb(lpad(upper(to_hex(m.id)), 16, '0'))), $2 FROM m
			ON CONFLICT (username, key) DO UPDATE SET data = excluded.data, created = excluded.created
			RETURNING (SELECT id FROM m)`,
			o, created, envJSON, len(data), data, rcJSON, messageState(rs, false), due,
			env.User, env.IdempotencyKey, acc, owner, token).Scan(&id)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil // origin already there
	}
	if err != nil {
		return 0, fmt.Errorf("queue: %w", err)
	}
	return id, nil
}

// kick wakes the dispatcher.
func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// row is a message as read back.
type row struct {
	id      int64
	created time.Time
	env     queue.Envelope
	size    int64
	rcpts   []rcpt
	held    bool
	token   *int64
	purge   *time.Time
	// dsn is set by save when it queued a DSN: new work, due now.
	dsn bool
	// For the events of a change (changeEvents): the recipients as they
	// were before it, which of them an attempt just ended for, the
	// delay warnings report sent, and how many event deliveries save
	// wrote.
	before    []rcpt
	attempted map[int]bool
	delayed   []int
	events    int
}

const rowCols = `id, created, envelope, size, rcpts, held, lease_token, purge_at`

func scanRow(r pgx.Row) (*row, error) {
	var m row
	var envJSON, rcJSON []byte
	if err := r.Scan(&m.id, &m.created, &envJSON, &m.size, &rcJSON, &m.held, &m.token, &m.purge); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(envJSON, &m.env); err != nil {
		return nil, fmt.Errorf("message %s: envelope: %w", formatID(m.id), err)
	}
	if err := json.Unmarshal(rcJSON, &m.rcpts); err != nil {
		return nil, fmt.Errorf("message %s: recipients: %w", formatID(m.id), err)
	}
	m.created = m.created.UTC()
	return &m, nil
}

func (m *row) message() *queue.Message {
	out := &queue.Message{ID: formatID(m.id), Envelope: m.env, Created: m.created, Size: m.size,
		Held: m.held, State: messageState(m.rcpts, m.held)}
	for _, r := range m.rcpts {
		out.Rcpts = append(out.Rcpts, queue.Recipient{Address: r.Address, State: r.State, Attempts: r.Attempts,
			NextAttempt: r.NextAttempt, LastAttempt: r.LastAttempt, LastReply: r.LastReply, RemoteMTA: r.RemoteMTA})
	}
	return out
}

// Get returns one message (queue.ErrNotFound if there is none).
func (q *Queue) Get(id string) (*queue.Message, error) {
	n, err := parseID(id)
	if err != nil {
		return nil, err
	}
	m, err := scanRow(q.pool.QueryRow(context.Background(), `SELECT `+rowCols+` FROM postern_messages WHERE id = $1`, n))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", queue.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	return m.message(), nil
}

// List returns the messages f selects, oldest first.
func (q *Queue) List(f queue.Filter) ([]*queue.Message, error) {
	sql := `SELECT ` + rowCols + ` FROM postern_messages`
	var args []any
	if f.State != "" {
		sql += ` WHERE state = $1`
		args = append(args, string(f.State))
	}
	rows, err := q.pool.Query(context.Background(), sql+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	defer rows.Close()
	var out []*queue.Message
	for rows.Next() {
		m, err := scanRow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m.message())
	}
	return out, rows.Err()
}

// Depth counts messages per state. It is read at every metrics scrape:
// the count is kept for a few seconds so that scrapes of a large queue do
// not each scan it.
func (q *Queue) Depth() map[queue.State]int {
	q.depthMu.Lock()
	defer q.depthMu.Unlock()
	if q.depth != nil && time.Since(q.depthAt) < 5*time.Second {
		return q.depth
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out := map[queue.State]int{queue.StateQueued: 0, queue.StateDeferred: 0, queue.StateHeld: 0, queue.StateFailed: 0}
	rows, err := q.pool.Query(ctx, `SELECT state, count(*) FROM postern_messages GROUP BY state`)
	if err != nil {
		q.log.Warn("queue depth", slog.Any("error", err))
		return q.depth
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var n int
		if rows.Scan(&s, &n) == nil {
			out[queue.State(s)] = n
		}
	}
	if rows.Err() == nil {
		q.depth, q.depthAt = out, time.Now()
	}
	return out
}

// Close stops delivery, waits (up to ctx) for attempts in flight to
// record their results, and closes the pool. Messages whose attempts
// did not finish keep their leases, which expire: another node (or this
// one, restarted) delivers them then.
func (q *Queue) Close(ctx context.Context) error {
	q.closeOnce.Do(func() {
		q.StopDelivery()
		done := make(chan struct{})
		go func() { q.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			q.cancel()
			q.closeErr = fmt.Errorf("queue: %d deliveries cut off at close", q.busy.Load())
			<-done
		}
		// No worker of this node runs now: what it still holds (attempts
		// cut off, results that could not be recorded) is given back at
		// once rather than when the leases end. Its recipients keep their
		// next attempts.
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		if tag, err := q.pool.Exec(rctx, `UPDATE postern_messages SET due = $2, lease_owner = NULL, lease_token = NULL
			WHERE lease_owner = $1`, q.node, q.clock()); err != nil {
			q.log.Warn("give back leases at close (they expire instead)", slog.Any("error", err))
		} else if n := tag.RowsAffected(); n > 0 {
			q.log.Info("leases given back at close", slog.Int64("messages", n))
		}
		rcancel()
		q.cancel()
		q.pool.Close()
	})
	return q.closeErr
}

// Activity reports the attempts in flight on this node. Nothing is
// reported due: the queue is the fleet's, and the other nodes deliver
// what is due while this one drains.
func (q *Queue) Activity() queue.Activity { return queue.Activity{InFlight: int(q.busy.Load())} }

// Drain takes no new lease: the other nodes deliver the shared queue
// while this one finishes its attempts in flight.
func (q *Queue) Drain() bool {
	q.StopDelivery()
	return true
}

// StopDelivery starts no new attempt; attempts in flight go on.
func (q *Queue) StopDelivery() {
	q.stopOnce.Do(func() { close(q.stopping) })
}

var errClosedPool = errors.New("queue: closed")

// wrap reports database errors without their internals to callers that
// show them.
func wrap(err error) error {
	if err == nil {
		return nil
	}
	if strings.Contains(err.Error(), "closed pool") {
		return queue.ErrClosed
	}
	return fmt.Errorf("queue: %w", err)
}

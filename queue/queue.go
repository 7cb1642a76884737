package queue

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"postern/queue/reply"
)

// Tunables. Each is a constant so a change is deliberate and reviewed.
const (
	// inlineMax is the largest body kept inside bbolt. Larger bodies go to
	// a spool file, so they are streamed and never held whole in memory,
	// and bbolt is not made to copy megabytes through its pages on every
	// commit. 256 KiB covers the typical submitted message and a message
	// with a small attachment, so those cost one commit (one fsync) rather
	// than a file write, two fsyncs and a commit. The price is memory: a
	// body is read into a growing buffer of up to 512 KiB (bytes.Buffer
	// doubles), kept until its first attempt ends after a hand-off; make
	// bench's 100 sessions of 100 KiB peak at 179 MiB RSS.
	inlineMax = 256 << 10

	// defaultWorkers is the number of concurrent delivery attempts.
	defaultWorkers = 8
)

// lockTimeout bounds how long Open waits for bbolt's file lock, so a second
// postern on the same data directory fails fast instead of hanging (bbolt
// README: "Please note that Bolt obtains a file lock ... use the Timeout
// option"). A variable only so tests need not wait a full second.
var lockTimeout = time.Second

var (
	// ErrLocked means another process (or another Queue in this process)
	// has the queue file open.
	ErrLocked = errors.New("queue: locked")
	// ErrNotFound means no message has the given ID: it never existed, was
	// delivered or failed, or the ID is malformed.
	ErrNotFound = errors.New("queue: message not found")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("queue: closed")
	// ErrHeld is returned by Retry for a held message: Release it instead.
	ErrHeld = errors.New("queue: message is held")
	// ErrNotHeld is returned by Release for a message that is not held.
	ErrNotHeld = errors.New("queue: message is not held")
	// ErrFinal is returned by Hold, Retry and Bounce for a message kept
	// only as a record of its failure: no recipient is pending.
	ErrFinal = errors.New("queue: message has no pending recipient")
)

// Retry is the retry schedule. Zero fields take the defaults.
type Retry struct {
	// Initial is the wait after the first attempt (default 1m). Each later
	// attempt waits twice as long as the one before, up to Max.
	Initial time.Duration
	// Max caps the wait between attempts (default 1h, or Initial if that
	// is longer).
	Max time.Duration
	// Lifetime is how long after acceptance a temporary failure still
	// leads to another attempt (default 120h, five days as RFC 5321
	// §4.5.4.1 suggests "at least 4-5 days"). The first temporary failure
	// after that is final.
	Lifetime time.Duration
}

// Options configure Open. Zero values are useful except for Path.
type Options struct {
	// Path is the bbolt file, for example data_dir/queue.db.
	Path string
	// SpoolDir holds bodies larger than inlineMax (256 KiB). Default: a directory
	// "spool" next to Path.
	SpoolDir string
	// Deliverer makes delivery attempts. It may be nil when the queue is
	// only opened for inspection (Get, List); Start requires it.
	Deliverer Deliverer
	// Workers is the number of concurrent delivery attempts (default 8).
	Workers int
	// Retry is the retry schedule.
	Retry Retry
	// Logger receives one line per event; nil discards them.
	Logger *slog.Logger
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
	// OnFinal, if set, is called once per message after the commit in
	// which its last pending recipient became final (delivered or failed),
	// with a snapshot of it. Bounces do not need it: the queue makes those
	// itself, in that same commit. It is a notification for tests and
	// integrations; it runs on a delivery worker and must not block for
	// long. A crash between that commit and the call loses the call.
	OnFinal func(*Message)

	// Hostname names this server in delivery status notifications: the
	// Reporting-MTA field and the MAILER-DAEMON address they come from.
	// Default: os.Hostname.
	Hostname string
	// DelayWarning is how long after acceptance a recipient still being
	// retried gets one "delayed" DSN (RFC 3464 §2.3.3), if its NOTIFY asks
	// for delays or was not given. 0 sends none.
	DelayWarning time.Duration
	// KeepFailed is how long the record of a message whose recipients are
	// all final, at least one of them failed, is kept (without its body) so
	// operators can see what happened. Default 7 days.
	KeepFailed time.Duration
	// Observer receives counts for metrics; nil discards them.
	Observer Observer
	// Signer, when set, signs the notifications the queue composes itself
	// (the DSNs from MAILER-DAEMON@Hostname); nil sends them unsigned.
	Signer Signer
	// Gate, when set, is asked before every attempt whether its
	// destination has capacity (see Gate); nil admits everything.
	Gate Gate

	// Subscribers get the events of submitted messages (events.go);
	// none: no event is recorded.
	Subscribers []Subscriber
	// Suppression turns on the suppression list (suppress.go).
	Suppression SuppressionOptions
	// Bounces turns on VERP return paths and the traces late bounces
	// are matched with (trace.go).
	Bounces BounceOptions

	// lazyWait replaces the constant of that name when set (tests).
	lazyWait time.Duration
}

// Envelope is what the session accepted. It is stored JSON-encoded, so
// fields can be added (DSN parameters and the like) without a migration.
type Envelope struct {
	From     string   `json:"from"` // "" is the null reverse-path
	Rcpts    []string `json:"rcpts,omitempty"`
	User     string   `json:"user,omitempty"`      // authenticated user, if any
	ClientIP string   `json:"client_ip,omitempty"` // submitting client
	Listener string   `json:"listener,omitempty"`  // name of the accepting listener

	// DSN parameters of RFC 3461, as the submitter gave them.
	Ret   string    `json:"ret,omitempty"`   // "FULL" or "HDRS" (§4.3); "" = not given
	EnvID string    `json:"envid,omitempty"` // ENVID (§4.4), xtext-decoded
	DSN   []RcptDSN `json:"dsn,omitempty"`   // parallel to Rcpts; nil when no RCPT had DSN parameters

	// What events carry (Options.Subscribers): the Message-ID field's
	// value, and the tags and metadata a submitter gave the HTTP API.
	MessageID string            `json:"message_id,omitempty"`
	Tags      []string          `json:"tags,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`

	// IdempotencyKey, when set, is remembered with User for
	// IdempotencyWindow (see Idempotent). Not stored with the message.
	IdempotencyKey string `json:"-"`
	// Suppressed are recipients the submitter left out because they are
	// on the suppression list, with the reply that put each there: their
	// message.suppressed events are recorded in the transaction that
	// queues the message, so a crash cannot keep one without the other.
	// Not stored with the message.
	Suppressed []SuppressedRcpt `json:"-"`
	// RequireTLS is the REQUIRETLS parameter of MAIL FROM (RFC 8689
	// §4.1): the message may travel only over TLS that authenticates
	// every server, to servers that offer REQUIRETLS themselves.
	RequireTLS bool `json:"requiretls,omitempty"`
	// TLSOptional is a "TLS-Required: No" header field (RFC 8689 §5)
	// without REQUIRETLS: the sender asks that the recipient domain's TLS
	// policy (MTA-STS, DANE) not stop the message.
	TLSOptional bool `json:"tls_optional,omitempty"`
}

// RcptDSN holds the per-recipient DSN parameters of RFC 3461.
type RcptDSN struct {
	// Notify is empty (not given: failures and, at the MTA's choice,
	// delays are reported) or a list of SUCCESS, FAILURE, DELAY, or just
	// NEVER (§4.1).
	Notify []string `json:"notify,omitempty"`
	// ORcpt is the original recipient as "addr-type;address" (§4.2), e.g.
	// "rfc822;bob@example.org"; "" when not given.
	ORcpt string `json:"orcpt,omitempty"`
}

// State is where one recipient stands, or, for a Message, where the
// message as a whole stands.
type State string

const (
	StateQueued    State = "queued"    // not attempted yet
	StateDeferred  State = "deferred"  // attempted, failed temporarily, will retry
	StateDelivered State = "delivered" // final (recipients only)
	StateFailed    State = "failed"    // final
	// StateHeld is a message-level state only: Hold took the message out
	// of the schedule. Its recipients stay queued or deferred.
	StateHeld State = "held"
)

func (s State) pending() bool { return s == StateQueued || s == StateDeferred }

// MessageStates lists the message-level states, in the order operators
// see them listed: what Depth counts and Filter selects.
func MessageStates() []State { return []State{StateQueued, StateDeferred, StateHeld, StateFailed} }

// IsMessageState reports whether s is one of MessageStates.
func (s State) IsMessageState() bool {
	return s == StateQueued || s == StateDeferred || s == StateHeld || s == StateFailed
}

// Recipient is the state of one recipient of a queued message.
type Recipient struct {
	Address string `json:"address"`
	State   State  `json:"state"`
	// Attempts counts leased attempts, including one in progress or one
	// cut off by a crash.
	Attempts int `json:"attempts"`
	// NextAttempt is when the recipient is due (again). While an attempt is
	// in progress it already holds the time of the retry that follows a
	// temporary failure.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// LastReply is the reply of the last attempt, typed; for a recipient
	// the queue failed itself (an expired retry lifetime, an
	// administrator's bounce) it is the queue's words, with no reply code
	// and the enhanced code that says why (5.4.7, 5.0.0). Its JSON form
	// is "reply", with the one-line rendering in "last_reply" for people
	// and older clients.
	LastReply reply.Reply `json:"reply,omitzero"`
	RemoteMTA string      `json:"remote_mta,omitempty"`

	// Bookkeeping of the queue, stored but not shown; see storedRcpt.
	leased, reported, warned, remoteDSN bool
}

// recipientAlias has Recipient's fields without its methods.
type recipientAlias Recipient

// MarshalJSON adds "last_reply", the reply rendered on one line.
func (r Recipient) MarshalJSON() ([]byte, error) {
	var line string
	if !r.LastReply.IsZero() {
		line = r.LastReply.String()
	}
	return json.Marshal(struct {
		recipientAlias
		Line string `json:"last_reply,omitempty"`
	}{recipientAlias(r), line})
}

// public is the recipient without the queue's private bookkeeping.
func (r Recipient) public() Recipient {
	return Recipient{Address: r.Address, State: r.State, Attempts: r.Attempts, NextAttempt: r.NextAttempt,
		LastAttempt: r.LastAttempt, LastReply: r.LastReply, RemoteMTA: r.RemoteMTA}
}

// Message is a snapshot of a queued message, or of the record of a failed
// one (State StateFailed).
//
// Its JSON form, shown by the CLI's --json, has the keys id, from, size,
// created_at, held, state and recipients; the rest of the envelope is not
// part of it.
type Message struct {
	ID       string      `json:"id"`
	Envelope Envelope    `json:"-"`
	Created  time.Time   `json:"created_at"`
	Size     int64       `json:"size"`
	Held     bool        `json:"held"`
	State    State       `json:"state"` // held, deferred, queued or failed
	Rcpts    []Recipient `json:"recipients"`
}

// messageAlias has Message's fields without its methods.
type messageAlias Message

// MarshalJSON adds the envelope sender as "from".
func (m Message) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		*messageAlias
		From string `json:"from"`
	}{(*messageAlias)(&m), m.Envelope.From})
}

// UnmarshalJSON reads what MarshalJSON writes, so a client of the
// administration API can decode into a Message.
func (m *Message) UnmarshalJSON(data []byte) error {
	var v struct {
		*messageAlias
		From string `json:"from"`
	}
	v.messageAlias = (*messageAlias)(m)
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	m.Envelope.From = v.From
	m.Envelope.Rcpts = nil
	for _, r := range m.Rcpts {
		m.Envelope.Rcpts = append(m.Envelope.Rcpts, r.Address)
	}
	return nil
}

// Queue is the durable outgoing queue. Its methods are safe for concurrent
// use.
type Queue struct {
	db *bolt.DB
	// commit is the group-commit loop's queue of writers (commit.go).
	commit   *committer
	batches  atomic.Int64  // shared transactions run, for tests
	lazyWait time.Duration // see batchLazy; a test hook
	path     string
	spoolDir string
	deliver  Deliverer
	workers  int
	retry    Retry
	log      *slog.Logger
	now      func() time.Time
	onFinal  func(*Message)
	hostname string
	warnAge  time.Duration // Options.DelayWarning
	keep     time.Duration // Options.KeepFailed
	obs      Observer
	signer   Signer // Options.Signer
	subs     []Subscriber
	suppress SuppressionOptions
	bounces  BounceOptions
	// eventKick (capacity 1) is signalled after commits that recorded
	// events.
	eventKick chan struct{}
	gate      Gate

	// writeMu orders each write transaction with the application of the
	// index changes it staged in stage (Queue.update).
	writeMu sync.Mutex
	stage   []staged
	// ixMu guards ix, the in-memory schedule (lanes.go), and forced,
	// the messages an operator asked to retry now (Dest.Retry) until they
	// are leased. Lock order: dbMu, then writeMu, then ixMu, then mu.
	ixMu   sync.Mutex
	ix     *index
	forced map[uint64]bool

	// dbMu orders Close against everything that uses db: readers and
	// committers hold it shared and check closed; Close takes it
	// exclusively, so no commit runs on a closed db and no late result is
	// written after Close gave up waiting.
	dbMu   sync.RWMutex
	closed bool

	// mu guards inflight, busy and depth. inflight counts unfinished
	// deliveries per message; a message in it is never leased again (a
	// long attempt may outlive its backoff). busy is their total. depth
	// counts messages per message-level State, changed after each commit
	// by what the commit did, and rebuilt by Open.
	mu       sync.Mutex
	inflight map[uint64]int
	busy     int
	depth    map[State]int
	// accepting is true from Start until Close begins: Enqueue may hand
	// a message straight to a worker (handoff.go).
	accepting bool

	kick     chan struct{} // capacity 1: "look at the schedule again"
	stopping chan struct{} // closed by StopDelivery or Close: lease nothing more
	stopOnce sync.Once
	runCtx   context.Context
	cancel   context.CancelFunc // cuts off attempts when Close times out
	sem      chan struct{}      // Workers slots
	wg       sync.WaitGroup     // dispatcher and delivery goroutines

	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error

	// Test hooks.
	jitter       func() float64                       // uniform in [0,1); called concurrently (Enqueue)
	createSpool  func(path string) (spoolFile, error) // os.OpenFile by default
	afterResults func(id uint64)                      // after results are committed or dropped
}

// Defaults of Options.
const defaultKeepFailed = 7 * 24 * time.Hour

// Open opens or creates the queue file, creates every bucket, and removes
// spool files no message refers to (left by a crash during Enqueue). It does
// not start delivering: call Start.
func Open(opts Options) (*Queue, error) {
	if opts.Path == "" {
		return nil, errors.New("queue: Options.Path is empty")
	}
	q := &Queue{
		path:        opts.Path,
		spoolDir:    opts.SpoolDir,
		deliver:     opts.Deliverer,
		workers:     opts.Workers,
		retry:       opts.Retry.withDefaults(),
		log:         opts.Logger,
		now:         opts.Now,
		onFinal:     opts.OnFinal,
		hostname:    opts.Hostname,
		warnAge:     max(opts.DelayWarning, 0),
		keep:        opts.KeepFailed,
		obs:         opts.Observer,
		signer:      opts.Signer,
		subs:        opts.Subscribers,
		suppress:    opts.Suppression,
		bounces:     opts.Bounces,
		eventKick:   make(chan struct{}, 1),
		gate:        opts.Gate,
		ix:          newIndex(),
		forced:      make(map[uint64]bool),
		inflight:    make(map[uint64]int),
		depth:       make(map[State]int),
		kick:        make(chan struct{}, 1),
		stopping:    make(chan struct{}),
		jitter:      rand.Float64,
		createSpool: createSpoolFile,
	}
	if q.spoolDir == "" {
		q.spoolDir = filepath.Join(filepath.Dir(q.path), "spool")
	}
	if q.workers <= 0 {
		q.workers = defaultWorkers
	}
	if q.retry.Max < q.retry.Initial {
		return nil, fmt.Errorf("queue: Retry.Max %v is below Retry.Initial %v", q.retry.Max, q.retry.Initial)
	}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	if q.now == nil {
		q.now = time.Now
	}
	if q.keep <= 0 {
		q.keep = defaultKeepFailed
	}
	if q.bounces.Keep <= 0 {
		q.bounces.Keep = defaultTraceKeep
	}
	if q.obs == nil {
		q.obs = NopObserver{}
	}
	if q.gate == nil {
		q.gate = openGate{}
	}
	if q.hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		q.hostname = h
	}
	if strings.ContainsAny(q.hostname, " \t\r\n<>@;\"") {
		return nil, fmt.Errorf("queue: Options.Hostname %q is not a host name", q.hostname)
	}
	q.sem = make(chan struct{}, q.workers)

	if err := os.MkdirAll(q.spoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: spool directory: %w", err)
	}
	db, err := openDB(q.path)
	if err != nil {
		return nil, err
	}
	q.db = db

	if err := q.cleanSpool(); err != nil {
		db.Close()
		return nil, err
	}
	if err := q.scan(); err != nil {
		db.Close()
		return nil, err
	}
	if n, err := q.dropUnsubscribed(); err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: outbox: %w", err)
	} else if n > 0 {
		q.log.Warn("dropped event deliveries of subscribers no longer configured", slog.Int("deliveries", n))
	}
	q.runCtx, q.cancel = context.WithCancel(context.Background())
	q.lazyWait = cmp.Or(opts.lazyWait, lazyWait)
	q.commit = newCommitter()
	go q.commitLoop()
	return q, nil
}

// openDB opens the bbolt file with a lock timeout, creates the buckets and
// checks the format version. bbolt panics on some kinds of corruption
// (bad meta or freelist pages); that becomes an error naming the file.
func openDB(path string) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			// bbolt returns no handle after a panic, and its memory
			// map keeps the file (and so its flock) open: this
			// process cannot reopen the file. It is expected to exit
			// on this error.
			db, err = nil, fmt.Errorf("queue: %s is corrupt: %v", path, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("queue: %s is in use by another process (no lock within %v): %w", path, lockTimeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bMeta)
		switch v := meta.Get(keyVersion); {
		case v == nil:
			return meta.Put(keyVersion, []byte{formatVersion})
		case len(v) != 1 || v[0] != formatVersion:
			return fmt.Errorf("unknown format version %v (this postern reads %d)", v, formatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	return db, nil
}

func (r Retry) withDefaults() Retry {
	if r.Initial <= 0 {
		r.Initial = time.Minute
	}
	if r.Max <= 0 {
		r.Max = max(time.Hour, r.Initial)
	}
	if r.Lifetime <= 0 {
		r.Lifetime = 120 * time.Hour
	}
	return r
}

// clock returns the current time in UTC without a monotonic reading, so
// that times compare the same before and after a JSON round trip.
func (q *Queue) clock() time.Time { return q.now().UTC().Round(0) }

// Enqueue stores a message durably and returns its ID. It returns only
// after the message is on disk and synced (see "Durable order" in the
// package documentation); the caller may then accept responsibility for
// it. Concurrent calls share one commit.
//
// body is read to EOF. Errors keep their cause: a full or read-only disk
// satisfies errors.Is(err, syscall.ENOSPC) or errors.Is(err, syscall.EROFS)
// (also when bbolt dropped the errno; see errnoOf). A failed Enqueue leaves
// nothing behind, and the queue stays usable: a later call may succeed.
func (q *Queue) Enqueue(ctx context.Context, env *Envelope, body io.Reader) (id string, err error) {
	return q.EnqueuePrefixed(ctx, env, body, nil)
}

// EnqueuePrefixed is Enqueue for a message whose first bytes are only known
// once its body has been read: prefix is called after body's EOF and its
// result goes before the body. The SMTP session streams DATA through a
// DKIM signer into the queue and prepends the signature (and its Received
// field) this way, so a large message is never held in memory. A prefix
// error fails the Enqueue and leaves nothing behind. prefix may be nil.
func (q *Queue) EnqueuePrefixed(ctx context.Context, env *Envelope, body io.Reader, prefix func() ([]byte, error)) (id string, err error) {
	if env == nil || len(env.Rcpts) == 0 {
		return "", errors.New("queue: envelope has no recipients")
	}
	now := q.clock()
	rec := &record{Env: *env, Created: now, Next: now.UnixNano()}
	rec.Env.Rcpts = nil
	rec.Rcpts = make([]Recipient, len(env.Rcpts))
	for i, a := range env.Rcpts {
		rec.Rcpts[i] = Recipient{Address: a, State: StateQueued, NextAttempt: now}
	}

	inline, spool, size, err := q.store(body)
	if err != nil {
		return "", err
	}
	rec.Spool, rec.Size = spool, size
	if prefix != nil {
		p, perr := prefix()
		if perr != nil {
			if spool != "" {
				os.Remove(filepath.Join(q.spoolDir, spool))
			}
			return "", perr
		}
		rec.Size += int64(len(p))
		if spool != "" {
			rec.Prefix = p
		} else {
			inline = append(p[:len(p):len(p)], inline...) // never into the caller's array
		}
	}
	if spool != "" {
		// Disarmed by success: a file that no committed record points
		// to must go (best effort; Open removes it otherwise).
		defer func() {
			if err != nil {
				os.Remove(filepath.Join(q.spoolDir, spool))
			}
		}()
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	// A free worker takes the message as soon as it is committed (see
	// handoff.go), for the domains the Gate admits; otherwise the
	// dispatcher leases it.
	handOff := q.reserve()
	var permits map[string]func()
	if handOff {
		if permits = q.admitNew(rec, now); len(permits) == 0 {
			q.unreserve()
			handOff = false
		} else {
			q.leaseNew(rec, now, permits)
		}
	}
	// giveBack undoes the hand-off of a message that is not committed.
	giveBack := func() {
		if handOff {
			for _, release := range permits {
				release()
			}
			q.unreserve()
		}
	}
	data, err := marshalRecord(rec)
	if err != nil {
		giveBack()
		return "", err
	}

	q.dbMu.RLock()
	if q.closed {
		q.dbMu.RUnlock()
		giveBack()
		return "", ErrClosed
	}
	// The jobs of a hand-off are made before the commit, so that the
	// in-flight mark set inside it counts exactly them; their id comes
	// with the commit.
	var jobs []*job
	if handOff {
		jobs = group(0, rec, leasedRcpts(rec), q.body(rec, inline))
		for _, j := range jobs {
			j.permit = permits[j.d.Domain]
		}
	}
	sum := summarize(rec)
	var n64 uint64
	var events int
	undo := func() {}
	err = q.batch(func(tx *bolt.Tx) error {
		// batch may run this more than once; only the run in the
		// committed transaction leaves its id in n64 and its mark in
		// inflight.
		undo()
		undo = func() {}
		var err error
		n64, err = q.insertRec(tx, data, inline, rec.Spool, rec.Next, sum)
		if err != nil {
			return err
		}
		if err := putIdempotency(tx, env, n64, now); err != nil {
			return err
		}
		if events, err = q.emit(tx, acceptedEvents(n64, rec, now, q.subs)); err != nil {
			return err
		}
		if handOff {
			undo = q.markInflight(n64, len(jobs))
		}
		return nil
	})
	q.dbMu.RUnlock()
	if err != nil {
		undo()
		giveBack()
		q.checkDB(err)
		return "", fmt.Errorf("queue: commit message: %w", errnoOf(err))
	}
	q.count(map[State]int{StateQueued: 1})
	q.eventsRecorded(events)
	if handOff {
		q.handOff(n64, jobs)
	} else {
		q.notify()
	}
	return formatID(n64), nil
}

// errnoOf restores the errno of a storage error that lost it. bbolt v1.5.0
// formats the errors of growing its file with %s (DB.grow: "file resize
// error: %s", "file sync error: %s"), so a full disk at that step no longer
// satisfies errors.Is(err, syscall.ENOSPC) and the session could not tell
// it from any other failure. The errno's text is still there; it is matched
// only for the few errnos the session distinguishes.
func errnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return err
	}
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EFBIG} {
		if strings.Contains(err.Error(), e.Error()) {
			return fmt.Errorf("%w (%w)", err, e)
		}
	}
	return err
}

// store reads a body to EOF and keeps it: in memory if it is at most
// inlineMax, otherwise in a new, synced spool file (see writeSpool). It reads
// one byte past inlineMax to learn which; that buffer is the only copy of a
// small body, and for a large one just the head of the stream.
func (q *Queue) store(body io.Reader) (inline []byte, spool string, size int64, err error) {
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(body, inlineMax+1))
	if err != nil {
		return nil, "", 0, fmt.Errorf("queue: read message: %w", err)
	}
	if n <= inlineMax {
		return buf.Bytes(), "", n, nil
	}
	spool, size, err = q.writeSpool(buf.Bytes(), body)
	return nil, spool, size, err
}

// Get returns a snapshot of one message.
func (q *Queue) Get(id string) (*Message, error) {
	n, err := lookup(id)
	if err != nil {
		return nil, err
	}
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return nil, ErrClosed
	}
	var m *Message
	err = q.db.View(func(tx *bolt.Tx) error {
		rec, err := getRecord(tx, n)
		if err == nil {
			m = rec.message(n)
		}
		return err
	})
	return m, err
}

// Filter selects messages for List.
type Filter struct {
	// State is the message-level state to list (StateQueued,
	// StateDeferred, StateHeld or StateFailed); "" lists all.
	State State
}

// List returns a snapshot of every message that f selects, failed records
// included, oldest first. It reads the whole queue in one transaction:
// meant for operators, not hot paths.
func (q *Queue) List(f Filter) ([]*Message, error) {
	q.dbMu.RLock()
	defer q.dbMu.RUnlock()
	if q.closed {
		return nil, ErrClosed
	}
	var ms []*Message
	err := q.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bMessages).ForEach(func(k, v []byte) error {
			id := binary.BigEndian.Uint64(k)
			rec, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("queue: message %s: %w", formatID(id), err)
			}
			if f.State == "" || rec.state() == f.State {
				ms = append(ms, rec.message(id))
			}
			return nil
		})
	})
	return ms, err
}

// Start starts the dispatcher and delivery workers. Calling it again, or
// after Close, does nothing. It panics if Options.Deliverer was nil: that
// is a wiring mistake to catch at startup.
func (q *Queue) Start() {
	if q.deliver == nil {
		panic("queue: Start without Options.Deliverer")
	}
	q.startOnce.Do(func() {
		select {
		case <-q.stopping:
			return // already closed
		default:
		}
		q.wg.Add(1)
		q.mu.Lock()
		q.accepting = true
		q.mu.Unlock()
		go q.dispatch()
	})
}

// StopDelivery starts no new delivery attempt from now on: nothing more is
// leased, and a message enqueued later is not handed to a worker (it waits,
// durably, for the next Start). Attempts in flight go on, and their
// results are recorded; Close waits for them. Enqueue and the operators'
// methods keep working until Close. It is the first step of a shutdown:
// sessions still finishing may queue their messages, and no attempt is
// started that the shutdown would have to cut off.
func (q *Queue) StopDelivery() {
	q.stopOnce.Do(func() {
		// Taking startOnce makes a concurrent Start either finish first
		// (its dispatcher is then in wg) or never start.
		q.startOnce.Do(func() {})
		q.mu.Lock()
		q.accepting = false // before wg.Wait: see reserve
		q.mu.Unlock()
		close(q.stopping)
	})
}

// Close stops leasing, waits for attempts in progress until ctx is done,
// then closes the database. Attempts still running when ctx is done are
// cancelled and their results dropped: their lease stands, so they are
// retried after their backoff. Close may be called whether or not Start
// was; later calls return the first call's result.
func (q *Queue) Close(ctx context.Context) error {
	q.closeOnce.Do(func() {
		q.StopDelivery()
		done := make(chan struct{})
		go func() { q.wg.Wait(); close(done) }()
		var waitErr error
		select {
		case <-done:
		case <-ctx.Done():
			waitErr = fmt.Errorf("queue: close: attempts cut off, leases kept: %w", ctx.Err())
		}
		q.dbMu.Lock()
		q.closed = true
		// No writer holds dbMu now, so none is waiting on the commit
		// loop: it can stop.
		q.stopCommits()
		q.dbMu.Unlock()
		q.cancel()
		q.closeErr = errors.Join(waitErr, q.db.Close())
	})
	return q.closeErr
}

// notify wakes the dispatcher without blocking: a pending wake-up already
// covers this one.
func (q *Queue) notify() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

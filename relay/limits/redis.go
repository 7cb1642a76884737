package limits

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Defaults of Options.
const (
	DefaultPrefix = "postern"
	// DefaultTimeout bounds each call: a limit checked at MAIL or at
	// connect must not hold the SMTP reply up for longer than a local
	// round trip to a busy Redis takes; past it, the per-node limit
	// answers.
	DefaultTimeout = 100 * time.Millisecond
	// DefaultPause is how long calls skip Redis after one failed, so that
	// an outage costs each SMTP command nothing rather than a timeout.
	DefaultPause = time.Second
)

// ErrUnavailable is returned, without asking Redis, while the store is
// paused after a failure (see Options.Pause).
var ErrUnavailable = errors.New("limits: shared store unavailable")

// Observer is told of each call that fell back and of the store's state;
// relay/metrics implements it. Its methods must not block.
type Observer interface {
	// SharedFallback: a call failed, and its caller used a per-node limit.
	SharedFallback()
	// SharedInUse: the store answers (true) or not (false).
	SharedInUse(bool)
}

// Options configure Open.
type Options struct {
	// Addr is Redis's host:port.
	Addr string
	// Password is Redis's AUTH password ("" = none). It is never logged.
	Password string
	// TLS, when set, is used to connect (Redis's tls-port).
	TLS *tls.Config
	// Prefix starts every key and channel name (default DefaultPrefix), so
	// that several postern clusters can share one Redis, and an ACL can
	// confine postern's user to `~prefix:*` and `&prefix:*`.
	Prefix string
	// Timeout bounds each call (default DefaultTimeout).
	Timeout time.Duration
	// Pause is how long calls fail at once after one failed (default
	// DefaultPause); then one call tries Redis again.
	Pause time.Duration
	// Logger gets one line when an outage starts and one when it ends.
	Logger *zap.Logger
	// Observer, when set, counts fallbacks and shows the state.
	Observer Observer
}

// Redis is the shared store. It is safe for concurrent use.
type Redis struct {
	opts   Options
	rdb    *redis.Client
	rate   *redis_rate.Limiter
	node   string // this process's ID in invalidation messages
	closed chan struct{}
	wg     sync.WaitGroup

	pausedUntil atomic.Int64 // UnixNano; calls fail at once before it
	mu          sync.Mutex
	up          *bool // nil until the first call's outcome
	lastErr     error // the failure that began the pause
}

// Open makes the client. It does not fail when Redis is unreachable:
// limits are per node until it answers (logged, and counted as fallbacks).
// The first connection is tried at once, so that the log tells at start
// whether the store is in use.
func Open(opts Options) *Redis {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Pause <= 0 {
		opts.Pause = DefaultPause
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	quietOnce.Do(func() { redis.SetLogger(quiet{}) })
	rdb := redis.NewClient(&redis.Options{
		Addr:      opts.Addr,
		Password:  opts.Password,
		TLSConfig: opts.TLS,
		// RESP2 and no CLIENT SETINFO or maintenance notifications: fewer
		// round trips per new connection, and Redis 6 and 7.0 understand
		// everything sent.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		// Fail fast: one attempt per call, bounded by the call's context.
		// A retry inside the client would be a second timeout the SMTP
		// client waits out; the per-node limit is the retry.
		MaxRetries:            -1,
		DialTimeout:           opts.Timeout,
		DialerRetries:         1,
		DialerRetryTimeout:    10 * time.Millisecond,
		ReadTimeout:           opts.Timeout,
		WriteTimeout:          opts.Timeout,
		ContextTimeoutEnabled: true,
		PoolTimeout:           opts.Timeout,
	})
	var id [8]byte
	rand.Read(id[:]) // never fails (Go 1.24+)
	r := &Redis{opts: opts, rdb: rdb, node: hex.EncodeToString(id[:]), closed: make(chan struct{})}
	r.rate = redis_rate.NewLimiter(rateKeys{rdb, opts.Prefix})
	// Not a limit check: a failure here is logged, not counted.
	r.call(context.Background(), func(ctx context.Context) error { return rdb.Ping(ctx).Err() })
	return r
}

// quiet silences go-redis's own log (one unstructured line on stderr per
// failed dial, many per outage): the outage is logged once, by state.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// Close stops the invalidation watchers and closes the connections. A nil
// *Redis (no shared store) closes nothing.
func (r *Redis) Close() error {
	if r == nil {
		return nil
	}
	select {
	case <-r.closed:
		return nil
	default:
	}
	close(r.closed)
	err := r.rdb.Close()
	r.wg.Wait()
	return err
}

// check is call for a limit check: its failure is a fallback to the
// caller's own limiter, and counted as one.
func (r *Redis) check(ctx context.Context, f func(ctx context.Context) error) error {
	err := r.call(ctx, f)
	if err != nil && r.opts.Observer != nil {
		r.opts.Observer.SharedFallback()
	}
	return err
}

// call runs f with the per-call timeout, unless the store is paused, and
// keeps the outage state: the first failure after success logs, the first
// success after failure logs, and every failure pauses the store.
func (r *Redis) call(ctx context.Context, f func(ctx context.Context) error) error {
	if time.Now().UnixNano() < r.pausedUntil.Load() {
		r.mu.Lock()
		last := r.lastErr
		r.mu.Unlock()
		return fmt.Errorf("%w (it failed with: %v)", ErrUnavailable, last)
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	err := f(ctx)
	if err != nil {
		r.pausedUntil.Store(time.Now().Add(r.opts.Pause).UnixNano())
	}
	r.state(err)
	return err
}

// state logs and reports a change between reachable and not: once per
// outage, not once per failed call. The password never appears: only the
// address and the error, which go-redis words without it.
func (r *Redis) state(err error) {
	up := err == nil
	r.mu.Lock()
	changed := r.up == nil || *r.up != up
	r.up = &up
	if err != nil {
		r.lastErr = err
	}
	r.mu.Unlock()
	if !changed {
		return
	}
	if r.opts.Observer != nil {
		r.opts.Observer.SharedInUse(up)
	}
	if up {
		r.opts.Logger.Info("shared limits: using Redis", zap.String("address", r.opts.Addr))
	} else {
		r.opts.Logger.Warn("shared limits: Redis unreachable; limits are per node until it answers",
			zap.String("address", r.opts.Addr), zap.Error(err))
	}
}

// key names a shared counter: the prefix, what it counts and a hash of the
// caller's key, so that nothing a client chooses (a user name with a colon,
// a newline, a glob) can reach another key, and names are not stored in
// Redis in clear. A caller's key is "scope:name"; the scope (letters,
// digits and '-') stays readable, to tell counters apart when debugging.
func (r *Redis) key(kind, k string) string {
	scope, name, ok := strings.Cut(k, ":")
	if !ok || scope == "" || strings.IndexFunc(scope, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
	}) >= 0 {
		scope, name = "other", k
	}
	sum := sha256.Sum256([]byte(name))
	return r.opts.Prefix + ":" + kind + ":" + scope + ":" + hex.EncodeToString(sum[:16])
}

// Allow spends n events of key's allowance of events per per (a GCRA
// bucket of events that refills over per, as golang.org/x/time/rate's
// token bucket), or spends nothing and returns how long until n fit. All
// nodes sharing the store share the allowance. An error means nothing was
// decided: the caller uses its own limiter.
func (r *Redis) Allow(ctx context.Context, key string, events int, per time.Duration, n int) (ok bool, retryAfter time.Duration, err error) {
	if events <= 0 || per <= 0 {
		return true, 0, nil
	}
	var res *redis_rate.Result
	err = r.check(ctx, func(ctx context.Context) error {
		var err error
		res, err = r.rate.AllowN(ctx, r.key("rate", key), redis_rate.Limit{Rate: events, Burst: events, Period: per}, n)
		return err
	})
	if err != nil {
		return false, 0, err
	}
	if res.Allowed >= n {
		return true, 0, nil
	}
	return false, max(res.RetryAfter, 0), nil
}

// rateKeys gives redis_rate the client with its fixed "rate:" key prefix
// taken off our keys, so that every key postern writes starts with
// Options.Prefix (an ACL's key pattern then covers them all).
type rateKeys struct {
	*redis.Client
	prefix string
}

func (c rateKeys) strip(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if rest, ok := strings.CutPrefix(k, "rate:"); ok && strings.HasPrefix(rest, c.prefix+":") {
			k = rest
		}
		out[i] = k
	}
	return out
}

func (c rateKeys) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.Client.Eval(ctx, script, c.strip(keys), args...)
}

func (c rateKeys) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.Client.EvalSha(ctx, sha1, c.strip(keys), args...)
}

func (c rateKeys) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.Client.EvalRO(ctx, script, c.strip(keys), args...)
}

func (c rateKeys) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.Client.EvalShaRO(ctx, sha1, c.strip(keys), args...)
}

func (c rateKeys) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return c.Client.Del(ctx, c.strip(keys)...)
}

// failuresScript counts one key's failures within a window, in a sorted
// set scored by Redis's own clock (nodes' clocks may differ; Redis's is
// one), and keeps its cool-down as a key that expires. With ARGV[4] = "1"
// it first records a failure, unless the key is cooling down (refused
// attempts are not checked, so they do not count), and starts the
// cool-down when the failures reach ARGV[3], clearing them.
//
// KEYS: failures set, cool-down key. ARGV: window (ms), cool-down (ms),
// limit, add ("1" or "0"), a unique member for the new failure.
// Returns {failures within the window, cool-down left in ms}.
var failuresScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cool = redis.call("PTTL", KEYS[2])
if cool > 0 then
  return {0, cool}
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
if ARGV[4] ~= "1" then
  return {redis.call("ZCARD", KEYS[1]), 0}
end
redis.call("ZADD", KEYS[1], now, ARGV[5])
local n = redis.call("ZCARD", KEYS[1])
if n >= tonumber(ARGV[3]) then
  redis.call("DEL", KEYS[1])
  redis.call("SET", KEYS[2], "1", "PX", ARGV[2])
  return {0, tonumber(ARGV[2])}
end
redis.call("PEXPIRE", KEYS[1], window)
return {n, 0}
`)

// Failures returns how many failures key has had within window, or, when
// it is cooling down, how long the cool-down still lasts.
func (r *Redis) Failures(ctx context.Context, key string, window time.Duration) (n int, cooldown time.Duration, err error) {
	return r.failures(ctx, key, window, 0, 0, false)
}

// AddFailure records a failure of key, unless key is cooling down; when
// key then has limit failures within window, they are cleared and key
// cools down for cooldown.
func (r *Redis) AddFailure(ctx context.Context, key string, window time.Duration, limit int, cooldown time.Duration) error {
	_, _, err := r.failures(ctx, key, window, limit, cooldown, true)
	return err
}

func (r *Redis) failures(ctx context.Context, key string, window time.Duration, limit int, cooldown time.Duration, add bool) (int, time.Duration, error) {
	var out []any
	err := r.check(ctx, func(ctx context.Context) error {
		var member [12]byte
		rand.Read(member[:])
		addArg := "0"
		if add {
			addArg = "1"
		}
		v, err := failuresScript.Run(ctx, r.rdb,
			[]string{r.key("authfail", key), r.key("authcool", key)},
			max(window.Milliseconds(), 1), max(cooldown.Milliseconds(), 1), max(limit, 1), addArg, hex.EncodeToString(member[:])).Slice()
		out = v
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	if len(out) != 2 {
		return 0, 0, fmt.Errorf("limits: failures script returned %d values", len(out))
	}
	n, _ := out[0].(int64)
	cool, _ := out[1].(int64)
	return int(n), time.Duration(cool) * time.Millisecond, nil
}

// Remember marks key for ttl (a client network known to log in as a
// user, which the AUTH throttle spares).
func (r *Redis) Remember(ctx context.Context, key string, ttl time.Duration) error {
	return r.check(ctx, func(ctx context.Context) error {
		return r.rdb.Set(ctx, r.key("mark", key), "1", ttl).Err()
	})
}

// Remembered tells whether key is marked.
func (r *Redis) Remembered(ctx context.Context, key string) (bool, error) {
	var n int64
	err := r.check(ctx, func(ctx context.Context) error {
		var err error
		n, err = r.rdb.Exists(ctx, r.key("mark", key)).Result()
		return err
	})
	return n > 0, err
}

// usersChannel is where nodes say that their users file changed.
func (r *Redis) usersChannel() string { return r.opts.Prefix + ":users-changed" }

// PublishUsersChanged tells the other nodes that this node's users file
// changed, so that they drop their caches of verified passwords.
func (r *Redis) PublishUsersChanged(ctx context.Context) error {
	return r.call(ctx, func(ctx context.Context) error {
		return r.rdb.Publish(ctx, r.usersChannel(), r.node).Err()
	})
}

// WatchUsersChanged calls f (in a goroutine of its own, one call at a
// time) whenever another node publishes PublishUsersChanged, and also
// after the subscription was lost and is back: messages published
// meanwhile are lost, so f must assume it missed one. It returns at once;
// the watch ends with Close.
func (r *Redis) WatchUsersChanged(f func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ps := r.rdb.Subscribe(ctx, r.usersChannel())
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		<-r.closed
		cancel()
		ps.Close()
	}()
	go func() {
		defer r.wg.Done()
		subscribed, lost := false, false
		for {
			msg, err := ps.Receive(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				// go-redis reconnects and subscribes again on the next
				// Receive; wait a moment so that a dead Redis is not
				// dialled in a tight loop.
				lost = true
				r.state(err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(r.opts.Pause):
				}
				continue
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				r.state(nil)
				if subscribed && lost {
					f()
				}
				subscribed, lost = true, false
			case *redis.Message:
				if m.Payload != r.node {
					f()
				}
			}
		}
	}()
}

package limits

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Delivery shaping across nodes (issue 17): relay/outbound's Shaper keeps
// its per-destination rate in Allow's buckets, and what follows here: the
// suspensions and dead times one node decides, which the others must
// honour (Hold, Held), and the connection slots of a destination, counted
// across the fleet (AcquireSlot, RenewSlots, ReleaseSlot). Every time is a
// duration from Redis's own clock (TTLs and TIME), never a node's: the
// nodes' clocks may differ, Redis's is one.

// holdScript sets KEYS[1] to ARGV[1] for ARGV[2] ms, unless it is already
// set for longer: two nodes suspending one destination at once keep the
// longer suspension, whichever writes last.
var holdScript = redis.NewScript(`
local left = redis.call("PTTL", KEYS[1])
if left >= tonumber(ARGV[2]) then
  return 0
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
`)

// Hold records value under key for ttl (a destination suspended or dead,
// and why), unless key already holds a value for longer.
func (r *Redis) Hold(ctx context.Context, key, value string, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return nil
	}
	return r.check(ctx, func(ctx context.Context) error {
		return holdScript.Run(ctx, r.rdb, []string{r.key("hold", key)}, value, ttl.Milliseconds()).Err()
	})
}

// Held returns key's value and how long it still holds; "" and 0 when
// nothing holds.
func (r *Redis) Held(ctx context.Context, key string) (value string, ttl time.Duration, err error) {
	err = r.check(ctx, func(ctx context.Context) error {
		k := r.key("hold", key)
		var get *redis.StringCmd
		var pttl *redis.DurationCmd
		_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			get, pttl = p.Get(ctx, k), p.PTTL(ctx, k)
			return nil
		})
		if errors.Is(err, redis.Nil) {
			return nil // not held
		}
		value, ttl = get.Val(), pttl.Val()
		return err
	})
	if err != nil || ttl <= 0 {
		return "", 0, err
	}
	return value, ttl, nil
}

// acquireScript takes one of ARGV[1] slots of the set KEYS[1] for holder
// ARGV[2], until ARGV[3] ms from now by Redis's clock. Holders past their
// expiry are dropped first: a node that died holding slots gives them back
// within a slot's TTL, without anyone having to notice it died. The set
// itself expires with its last holder. Returns 1 when taken, 0 when full.
var acquireScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
if redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call("ZADD", KEYS[1], now + ttl, ARGV[2])
if redis.call("PTTL", KEYS[1]) < ttl then
  redis.call("PEXPIRE", KEYS[1], ttl)
end
return 1
`)

// renewScript moves the expiry of the holders ARGV[2..] of KEYS[1] that
// still hold to ARGV[1] ms from now; a holder already dropped stays
// dropped (its slot may have gone to another node meanwhile).
var renewScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call("ZADD", KEYS[1], "XX", now + ttl, ARGV[i])
end
redis.call("PEXPIRE", KEYS[1], ttl)
return 1
`)

// AcquireSlot takes one of limit slots of key for holder (unique per
// attempt), for ttl unless renewed: the connections of one destination
// across nodes. false without an error: every slot is held.
func (r *Redis) AcquireSlot(ctx context.Context, key, holder string, limit int, ttl time.Duration) (bool, error) {
	var n int64
	err := r.check(ctx, func(ctx context.Context) error {
		var err error
		n, err = acquireScript.Run(ctx, r.rdb, []string{r.key("slots", key)}, limit, holder, max(ttl.Milliseconds(), 1)).Int64()
		return err
	})
	return n == 1, err
}

// RenewSlots extends the slots of key held by holders to ttl from now.
func (r *Redis) RenewSlots(ctx context.Context, key string, holders []string, ttl time.Duration) error {
	if len(holders) == 0 {
		return nil
	}
	args := make([]any, 0, 1+len(holders))
	args = append(args, max(ttl.Milliseconds(), 1))
	for _, h := range holders {
		args = append(args, h)
	}
	return r.call(ctx, func(ctx context.Context) error {
		return renewScript.Run(ctx, r.rdb, []string{r.key("slots", key)}, args...).Err()
	})
}

// ReleaseSlot gives holder's slot of key back.
func (r *Redis) ReleaseSlot(ctx context.Context, key, holder string) error {
	return r.call(ctx, func(ctx context.Context) error {
		return r.rdb.ZRem(ctx, r.key("slots", key), holder).Err()
	})
}

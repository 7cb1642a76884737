// Package limits is the shared-limits room: a store in Redis through which
// several postern nodes enforce one set of limits together (issue 17). It
// holds per-key rate limits (GCRA, github.com/go-redis/redis_rate), the
// AUTH brute-force counters, the channel on which one node tells the
// others that the users file changed, so that they drop their caches of
// verified passwords, and what delivery shapes together (shaping.go): the
// suspensions and dead times of destinations, and their connections as
// slots that expire unless renewed.
//
// The consumers own the interfaces this store implements (smtpd's
// SharedLimiter, auth's SharedFailures, outbound's SharedShaping);
// cmd/postern plugs a *Redis into them when limits.redis is set. Every method fails fast when Redis cannot
// be reached (a short timeout per call, and no call at all for a moment
// after a failure), and the caller then uses its own per-node limiter: a
// Redis outage weakens the limits to per-node ones and never refuses mail.
// Each outage is logged once (when it starts and when it ends), and every
// call that fell back is counted through Observer.
//
// It imports nothing of postern: no SMTP session, no queue, no HTTP.
package limits

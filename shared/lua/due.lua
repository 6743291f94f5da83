-- due: queued jobs whose start deadline has passed (to be expired).
-- KEYS: 1 expiry
-- ARGV: 1 now, 2 limit
-- Returns their ids, earliest deadline first.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])

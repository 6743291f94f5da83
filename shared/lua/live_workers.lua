-- live_workers: the workers whose heartbeat is fresh, with what they reported.
-- KEYS: 1 workers (sorted set scored by last beat)
-- ARGV: 1 horizon (beats at or after it are fresh), 2 prefix of worker keys
-- Returns a list of flat field, value lists, one per live worker. (Worker keys are built
-- from the prefix: chatq runs on one Redis, never a cluster, as Celery's transport does.)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local beat = redis.call('HGETALL', ARGV[2] .. id)
  if #beat > 0 then out[#out + 1] = beat end
end
return out

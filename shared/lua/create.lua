-- create: write a new job, queued.
-- KEYS: 1 job, 2 waiting (the queue's line), 3 tombstone, 4 unsent, 5 expiry, 6 transitions
-- ARGV: 1 job id, 2 now, 3 ttl of the record while unfinished, 4 tombstone ttl,
--       5 max depth of the line, 6 rank (score in the line), 7 expires_at (no start after),
--       8 stream max, 9 prefix of job keys, 10 max jobs of one tenant in the line,
--       11 the job's tenant, 12.. field, value pairs
-- Returns the job's place in line (0: next), -1 when the line is at its max depth (the
-- safety limit over all tenants), -2 when the tenant has its max in the line (then nothing
-- is written). A full line is first pruned of ids whose record is gone (removed by hand,
-- or expired while no sweeper ran), so they never block it. The tenant's jobs are counted
-- only when the line is at least as long as the tenant's limit (at most the line's max).
-- The job stays in `unsent` until the broker took its message.
local function full()
  return redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5])
end
if full() then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('EXISTS', ARGV[9] .. id) == 0 then redis.call('ZREM', KEYS[2], id) end
  end
  if full() then return -1 end
end
local tenant_max = tonumber(ARGV[10])
if redis.call('ZCARD', KEYS[2]) >= tenant_max then
  local mine = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('HGET', ARGV[9] .. id, 'tenant') == ARGV[11] then mine = mine + 1 end
  end
  if mine >= tenant_max then return -2 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
local f = job_fields(KEYS[1], 'queue', 'tenant')
transition({job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = '', to = 'queued',
            at = ARGV[2], stream = KEYS[6], stream_max = ARGV[8]})
return redis.call('ZRANK', KEYS[2], ARGV[1])

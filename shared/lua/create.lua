-- create: write a new job, queued.
-- KEYS: 1 job, 2 waiting (the queue's line), 3 tombstone, 4 unsent, 5 expiry, 6 transitions
-- ARGV: 1 job id, 2 now, 3 ttl of the record while unfinished, 4 tombstone ttl,
--       5 max depth of the line, 6 rank (score in the line), 7 expires_at (no start after),
--       8 stream max, 9 prefix of job keys, 10 max jobs of one tenant in the line,
--       11 the job's tenant, 12 fair share (jobs of one tenant and priority in line before
--       its next waits behind), 13 the job's rank behind, 14 its lane behind,
--       15.. field, value pairs (rank and lane within its share among them)
-- Returns {place in line (0: next), lane}, or -1 when the line is at its max depth (the
-- safety limit over all tenants), -2 when the tenant has its max in the line (then nothing
-- is written). A full line is first pruned of ids whose record is gone (removed by hand,
-- or expired while no sweeper ran), so they never block it. A job whose tenant already
-- has its fair share of this priority waiting goes behind (rank and lane of ARGV 13, 14):
-- after every other tenant's jobs of its priority within their share. Counting the
-- tenant's jobs reads the line (at most its max depth), only when it could matter.
local function full()
  return redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5])
end
if full() then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('EXISTS', ARGV[9] .. id) == 0 then redis.call('ZREM', KEYS[2], id) end
  end
  if full() then return -1 end
end
local tenant_max, share = tonumber(ARGV[10]), tonumber(ARGV[12])
local fields = {}
for i = 15, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
local mine, same = 0, 0  -- the tenant's jobs in line; those of this job's priority
if redis.call('ZCARD', KEYS[2]) >= math.min(tenant_max, share) then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local f = job_fields(ARGV[9] .. id, 'tenant', 'priority')
    if f.tenant == ARGV[11] then
      mine = mine + 1
      if f.priority == fields.priority then same = same + 1 end
    end
  end
  if mine >= tenant_max then return -2 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 15))
local rank = ARGV[6]
if same >= share then
  rank = ARGV[13]
  redis.call('HSET', KEYS[1], 'rank', rank, 'lane', ARGV[14])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], rank, ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
local f = job_fields(KEYS[1], 'queue', 'tenant', 'lane')
transition({job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = '', to = 'queued',
            at = ARGV[2], stream = KEYS[6], stream_max = ARGV[8]})
return {redis.call('ZRANK', KEYS[2], ARGV[1]), tonumber(f.lane)}

-- claim_unsent: queued jobs whose broker message was not confirmed since before a
-- cutoff (the process that created or requeued them died before sending, or the send
-- failed). Each claimed job's time is moved to now, so another sweeper claims it only
-- after the grace period again; the claimer sends it and then calls `sent`.
-- KEYS: 1 unsent
-- ARGV: 1 cutoff, 2 now, 3 limit, 4 prefix of job keys
-- Returns a flat list: job id, queue, dispatch, lane for each claimed job.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[4] .. id, 'status', 'queue', 'dispatch', 'lane')
  if f[1] == 'queued' then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    for _, v in ipairs({id, f[2], f[3], f[4] or ''}) do out[#out + 1] = v end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out

-- stranded: routed jobs (see route.lua) still waiting for a worker that is gone (no beat
-- since the horizon). Entries of jobs that no longer wait for their worker are dropped.
-- KEYS: 1 routed, 2 workers (sorted set scored by last beat)
-- ARGV: 1 horizon, 2 prefix of job keys, 3 limit
-- Returns a flat list: job id, queue, worker id for each stranded job.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local f = redis.call('HMGET', ARGV[2] .. id, 'status', 'routed_to', 'queue')
  if f[1] ~= 'queued' or not f[2] or f[2] == '' then
    redis.call('ZREM', KEYS[1], id)
  else
    local beat = redis.call('ZSCORE', KEYS[2], f[2])
    if not beat or tonumber(beat) < tonumber(ARGV[1]) then
      for _, v in ipairs({id, f[3], f[2]}) do out[#out + 1] = v end
    end
  end
end
return out

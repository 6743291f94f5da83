-- expire: a queued job that was due to start before now ends `expired` (it never runs).
-- KEYS: the finish keys (lib.lua: finish_keys)
-- ARGV: 1 job id, 2 now, 3 retention, 4 stream max, 5 expired error (JSON)
-- Returns 'expired', 'not_due', 'missing', or the status it had (not queued: nothing done).
local k = finish_keys(1)
local f = job_fields(k.job, 'status', 'expires_at')
redis.call('ZREM', k.expiry, ARGV[1])
if not f.status then return 'missing' end
if f.status ~= 'queued' then return f.status end
if not f.expires_at or tonumber(f.expires_at) > tonumber(ARGV[2]) then
  if f.expires_at then redis.call('ZADD', k.expiry, f.expires_at, ARGV[1]) end
  return 'not_due'
end
finish_job(k, {job_id = ARGV[1], status = 'expired', now = ARGV[2], retention = ARGV[3],
               stream_max = ARGV[4], code = 'expired',
               fields = {'finish_reason', 'expired', 'error', ARGV[5]}})
return 'expired'

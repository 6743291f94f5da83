-- cancel: the caller wants the job stopped.
-- KEYS: the finish keys (lib.lua: finish_keys)
-- ARGV: 1 job id, 2 now, 3 retention, 4 stream max, 5 ttl of the cancel flag,
--       6 the workers' cancel channel
-- Returns {verdict, status}: {'cancelled', 'cancelled'} (it was queued: ended now, it
-- never runs), {'stopping', 'running'} (its worker is asked to stop: told at once on
-- the cancel channel, and by the flag at its next write of tokens),
-- {'ended', status} (it had already ended: nothing changed) or {'missing', ''}.
local k = finish_keys(1)
local status = redis.call('HGET', k.job, 'status')
if not status then return {'missing', ''} end
if is_terminal(status) then return {'ended', status} end
if status == 'running' then
  redis.call('SET', k.cancel, '1', 'EX', ARGV[5])
  redis.call('PUBLISH', ARGV[6], ARGV[1])
  return {'stopping', status}
end
finish_job(k, {job_id = ARGV[1], status = 'cancelled', now = ARGV[2], retention = ARGV[3],
               stream_max = ARGV[4], code = 'cancelled',
               fields = {'finish_reason', 'cancelled'}})
return {'cancelled', 'cancelled'}

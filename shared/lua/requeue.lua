-- requeue: the worker running a job is gone. The job goes back to its queue under a new
-- dispatch (so a late message of the old one is stale), or fails `worker_lost` once it
-- has used its attempts, or ends `cancelled` if its caller had asked to stop it.
-- A job whose worker died (ARGV 8 = 1) may be what killed it (a poison job): the first
-- death marks it suspect (`deaths` = 1; a worker runs a suspect job alone), a second
-- fails it `worker_lost` with ARGV 9 as the reason instead of retrying it blindly.
-- KEYS: the finish keys (lib.lua: finish_keys)
-- ARGV: 1 job id, 2 the gone worker's id, 3 now, 4 max attempts, 5 retention,
--       6 stream max, 7 worker_lost message (the attempts are added),
--       8 1 when the worker died (0: a run that broke off under a live worker),
--       9 worker_lost message of a second death
-- Returns {'requeued', dispatch}, {'failed', ''}, {'cancelled', ''}, or {'skip', ''}
-- when the job is not running on that worker (any more): nothing changed.
local k = finish_keys(1)
local f = job_fields(k.job, 'status', 'owner', 'attempts', 'rank', 'expires_at',
                     'queue', 'tenant', 'deaths')
if f.status ~= 'running' or f.owner ~= ARGV[2] then
  if not f.status or is_terminal(f.status) then redis.call('HDEL', k.running, ARGV[1]) end
  return {'skip', ''}
end
if redis.call('EXISTS', k.cancel) == 1 then
  finish_job(k, {job_id = ARGV[1], status = 'cancelled', now = ARGV[3], retention = ARGV[5],
                 stream_max = ARGV[6], code = 'cancelled',
                 fields = {'finish_reason', 'cancelled'}})
  return {'cancelled', ''}
end
local attempts = tonumber(f.attempts or '0')
local died = ARGV[8] == '1'
local twice = died and tonumber(f.deaths or '0') >= 1
if twice or attempts >= tonumber(ARGV[4]) then
  local plural = attempts == 1 and '' or 's'
  local reason = twice and ARGV[9] or ARGV[7]
  local error = cjson.encode({code = 'worker_lost',
                              message = reason .. ' (' .. attempts .. ' attempt' .. plural .. ')'})
  if died then redis.call('HINCRBY', k.job, 'deaths', 1) end
  finish_job(k, {job_id = ARGV[1], status = 'failed', now = ARGV[3], retention = ARGV[5],
                 stream_max = ARGV[6], code = 'worker_lost',
                 fields = {'finish_reason', 'error', 'error', error}})
  return {'failed', ''}
end
local dispatch = redis.call('HINCRBY', k.job, 'dispatch', 1)
if died then redis.call('HINCRBY', k.job, 'deaths', 1) end
redis.call('HSET', k.job, 'status', 'queued', 'owner', '', 'lease', '')
redis.call('HDEL', k.job, 'routed_to')  -- sent to the shared queue (route.lua)
redis.call('HDEL', k.running, ARGV[1])
redis.call('ZADD', k.waiting, f.rank or ARGV[3], ARGV[1])
redis.call('ZADD', k.unsent, ARGV[3], ARGV[1])
if f.expires_at then redis.call('ZADD', k.expiry, f.expires_at, ARGV[1]) end
announce(k.log, k.channel, ARGV[5], {
  job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = 'running', to = 'queued',
  at = ARGV[3], attempt = f.attempts, code = 'worker_lost', stream = k.transitions,
  stream_max = ARGV[6]})
return {'requeued', tostring(dispatch)}

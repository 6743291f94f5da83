-- start: a worker took a message of the job and wants to run it.
-- KEYS: the finish keys (lib.lua: finish_keys)
-- ARGV: 1 job id, 2 dispatch of the message, 3 worker id, 4 now, 5 ttl of a running job,
--       6 retention, 7 stream max, 8 expired error (JSON), 9 lease (unique to this run)
-- Returns {verdict, detail}:
--   {'run', attempt}      the job is this run's now (running, owner and lease set); also
--                         when this very call is repeated (a retry after a lost reply)
--   {'missing', ''}       no such job (expired unrun, or discarded)
--   {'terminal', status}  it already ended (e.g. cancelled while queued)
--   {'stale', dispatch}   the message is of an older dispatch: the job was requeued since
--   {'busy', owner}       this dispatch already runs on a worker (a duplicate message)
--   {'expired', ''}       it was due to start before now: it ended `expired` instead
local k = finish_keys(1)
local f = job_fields(k.job, 'status', 'dispatch', 'owner', 'expires_at', 'started_at',
                     'queue', 'tenant', 'lease', 'attempts')
if not f.status then return {'missing', ''} end
if is_terminal(f.status) then return {'terminal', f.status} end
if f.dispatch ~= ARGV[2] then return {'stale', f.dispatch or ''} end
if f.status == 'running' and f.lease == ARGV[9] then return {'run', f.attempts} end
if f.status ~= 'queued' then return {'busy', f.owner or ''} end
if f.expires_at and tonumber(f.expires_at) <= tonumber(ARGV[4]) then
  finish_job(k, {job_id = ARGV[1], status = 'expired', now = ARGV[4], retention = ARGV[6],
                 stream_max = ARGV[7], code = 'expired',
                 fields = {'finish_reason', 'expired', 'error', ARGV[8]}})
  return {'expired', ''}
end
local attempt = redis.call('HINCRBY', k.job, 'attempts', 1)
redis.call('HSET', k.job, 'status', 'running', 'owner', ARGV[3], 'lease', ARGV[9],
           'run_at', ARGV[4])
if not f.started_at then redis.call('HSET', k.job, 'started_at', ARGV[4]) end
redis.call('EXPIRE', k.job, ARGV[5])
redis.call('HSET', k.running, ARGV[1], ARGV[3])
redis.call('ZREM', k.waiting, ARGV[1])
redis.call('ZREM', k.unsent, ARGV[1])
redis.call('ZREM', k.expiry, ARGV[1])
redis.call('SET', k.out, '', 'NX', 'EX', ARGV[5])
redis.call('EXPIRE', k.out, ARGV[5])
announce(k.log, k.channel, ARGV[5], {
  job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = 'queued', to = 'running',
  at = ARGV[4], attempt = attempt, stream = k.transitions, stream_max = ARGV[7]})
return {'run', tostring(attempt)}

-- route: a job's message goes to the worker whose prompt cache holds its conversation's
-- last turn (see shared/affinity.py), when that worker beats and has a free slot.
-- KEYS: 1 job, 2 affinity, 3 routed, 4 workers (sorted set scored by last beat)
-- ARGV: 1 job id, 2 dispatch, 3 now, 4 horizon (beats at or after it are fresh),
--       5 prefix of worker keys
-- Returns the worker's id (the job is listed routed to it), or '' for the shared queue.
-- A gone worker's affinity is dropped, never waited for.
local worker = redis.call('GET', KEYS[2])
if not worker then return '' end
local beat = redis.call('ZSCORE', KEYS[4], worker)
if not beat or tonumber(beat) < tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[2])
  return ''
end
local w = redis.call('HMGET', ARGV[5] .. worker, 'slots', 'slots_busy')
if tonumber(w[2] or '0') >= tonumber(w[1] or '0') then return '' end
local f = redis.call('HMGET', KEYS[1], 'status', 'dispatch')
if f[1] ~= 'queued' or f[2] ~= ARGV[2] then return '' end
redis.call('HSET', KEYS[1], 'routed_to', worker)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return worker

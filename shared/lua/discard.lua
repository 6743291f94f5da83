-- discard: undo create when the broker refused the job's message (no half-written job).
-- KEYS: 1 job, 2 waiting, 3 tombstone, 4 unsent, 5 expiry, 6 transitions
-- ARGV: 1 job id, 2 now, 3 stream max
-- Returns 1 when a queued job was removed, 0 when there was none (or it had moved on).
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local f = job_fields(KEYS[1], 'queue', 'tenant')
redis.call('DEL', KEYS[1], KEYS[3])
for i = 2, 5 do
  if i ~= 3 then redis.call('ZREM', KEYS[i], ARGV[1]) end
end
transition({job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = 'queued',
            to = 'discarded', at = ARGV[2], code = 'not_accepted',
            stream = KEYS[6], stream_max = ARGV[3]})
return 1

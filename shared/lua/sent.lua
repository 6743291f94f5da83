-- sent: the broker took the job's message of this dispatch.
-- KEYS: 1 job, 2 unsent
-- ARGV: 1 job id, 2 dispatch
-- Returns 1 when the job was waiting for that message, else 0.
if redis.call('HGET', KEYS[1], 'dispatch') ~= ARGV[2] then return 0 end
return redis.call('ZREM', KEYS[2], ARGV[1])

-- reroute: a routed job whose worker is gone goes to its shared queue instead: a new
-- dispatch (the message left in the gone worker's own queue is stale from now on),
-- listed unsent from the start of time, so the sweeper sends it at once.
-- KEYS: 1 job, 2 routed, 3 unsent
-- ARGV: 1 job id, 2 the gone worker's id
-- Returns the new dispatch, or 0 when the job no longer waits for that worker.
redis.call('ZREM', KEYS[2], ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'routed_to')
if f[1] ~= 'queued' or f[2] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], 'routed_to')
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'dispatch', 1)

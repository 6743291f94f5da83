-- set_if_exists: set a field of a job that still exists (an HSET on an expired record
-- would leave a partial one behind).
-- KEYS: 1 job
-- ARGV: 1 field, 2 value
-- Returns 1 when set, 0 when there is no such job.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1

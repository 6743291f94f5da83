-- park: a job's conversation write waits in a Redis list (MongoDB is down, or refused it).
-- KEYS: 1 job, 2 list (the outbox, or the dead list)
-- ARGV: 1 entry (JSON)
-- The job says `persisted: false` in the same step, so a drainer that lands the entry
-- right away flips it to true afterwards, never the other way round.
-- Returns 1 when the job still existed, else 0 (the entry is parked either way).
redis.call('RPUSH', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'persisted', 'false')
return 1

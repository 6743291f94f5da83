-- position: how many jobs of the queue start before this one.
-- KEYS: 1 waiting
-- ARGV: 1 job id
-- Returns the job's rank in the line, or nil when it is not waiting.
return redis.call('ZRANK', KEYS[1], ARGV[1])

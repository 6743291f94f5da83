-- read_log: the job's replay log, oldest first.
-- KEYS: 1 log
-- ARGV: (none)
-- Returns the stream events (JSON) the log still holds.
return redis.call('LRANGE', KEYS[1], 0, -1)

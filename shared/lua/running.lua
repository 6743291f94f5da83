-- running: every running job and the worker that runs it.
-- KEYS: 1 running
-- ARGV: (none)
-- Returns a flat list: job id, worker id, ...
return redis.call('HGETALL', KEYS[1])

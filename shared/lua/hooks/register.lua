-- register: a job raised a webhook event; its delivery is due now. Once per (job, event):
-- a transition read twice (a consumer died before acknowledging it) registers nothing new.
-- KEYS: 1 hooks (the job's delivery state), 2 due
-- ARGV: 1 job id, 2 event, 3 delivery state (JSON), 4 body, 5 url, 6 tenant, 7 now,
--       8 ttl of the delivery state
-- Returns 1 when registered, 0 when it already was.
-- The job stays in `due` at the score it has (a delivery in flight or waiting for a
-- retry): its earlier event goes first, and settle makes the next one due.
if redis.call('HSETNX', KEYS[1], 'ev:' .. ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'body:' .. ARGV[2], ARGV[4], 'url', ARGV[5], 'tenant', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('ZADD', KEYS[2], 'NX', ARGV[7], ARGV[1])
return 1

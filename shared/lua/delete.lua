-- delete: remove a finished job and what it streamed (the Responses API's DELETE, and a
-- `store: false` response once it has answered). Its id then answers 404, not 410.
-- KEYS: 1 job, 2 out, 3 replay log, 4 tombstone, 5 transitions
-- ARGV: 1 job id, 2 now, 3 stream max
-- Returns 'deleted', 'missing' (no such job) or 'running' (not finished: nothing changed).
local f = job_fields(KEYS[1], 'status', 'queue', 'tenant')
if not f.status then return 'missing' end
if not is_terminal(f.status) then return 'running' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
transition({job_id = ARGV[1], queue = f.queue, tenant = f.tenant, from = f.status,
            to = 'deleted', at = ARGV[2], code = 'deleted',
            stream = KEYS[5], stream_max = ARGV[3]})
return 'deleted'

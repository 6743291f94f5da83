-- begin: a delivery message is being handled; it takes the job's earliest pending event.
-- KEYS: 1 hooks, 2 due
-- ARGV: 1 job id, 2 token of the message, 3 now, 4 run lease (s), 5.. events in order
-- Returns {event, state (JSON), body, url, tenant}, or {} when there is nothing to do:
-- no claim (a leftover message), another message already running the job's delivery,
-- or no event pending (the job leaves `due`).
-- Any message of a claim that was `sent` may begin (the first to arrive wins, so a
-- message that waited in a long queue is not wasted); while it runs, the job stays in
-- `due` at now + the run lease (claimed again if its worker dies).
local claim = redis.call('HMGET', KEYS[1], 'claim', 'phase')
if not claim[1] or claim[1] == '' then return {} end
if claim[2] == 'running' and claim[1] ~= ARGV[2] then return {} end
for i = 5, #ARGV do
  local state = redis.call('HGET', KEYS[1], 'ev:' .. ARGV[i])
  if state and cjson.decode(state)['status'] == 'pending' then
    redis.call('HSET', KEYS[1], 'claim', ARGV[2], 'phase', 'running')
    redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
    local f = redis.call('HMGET', KEYS[1], 'body:' .. ARGV[i], 'url', 'tenant')
    return {ARGV[i], state, f[1] or '', f[2] or '', f[3] or ''}
  end
end
redis.call('HDEL', KEYS[1], 'claim', 'phase')
redis.call('ZREM', KEYS[2], ARGV[1])
return {}

-- claim: jobs whose next webhook delivery is due, each handed to one delivery message.
-- KEYS: 1 due
-- ARGV: 1 now, 2 pickup lease (s), 3 limit, 4 prefix of the hooks keys (+ job id),
--       5 token prefix (unique to this call)
-- Returns {job id, token, ...}. Each claimed job gets a token and phase `sent`, and stays
-- in `due` at now + the pickup lease: if no delivery begins by then (the message was
-- lost), it is claimed and sent again. A job whose state expired leaves `due`.
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for i, id in ipairs(due) do
  local key = ARGV[4] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local token = ARGV[5] .. '.' .. i
    redis.call('HSET', key, 'claim', token, 'phase', 'sent')
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, token)
  end
end
return out

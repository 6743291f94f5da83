-- settle: the running delivery's attempt is over; record it and say what is due next.
-- KEYS: 1 hooks, 2 due
-- ARGV: 1 job id, 2 token, 3 event, 4 its new state (JSON), 5 when to retry it
--       ('' when it is settled for good: delivered or failed), 6 now, 7.. events in order
-- Returns 1, or 0 when the claim is not this message's any more (nothing written: the
-- delivery was claimed again meanwhile).
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'ev:' .. ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[1], 'claim', 'phase')
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  return 1
end
redis.call('HDEL', KEYS[1], 'body:' .. ARGV[3])
for i = 7, #ARGV do
  local state = redis.call('HGET', KEYS[1], 'ev:' .. ARGV[i])
  if state and cjson.decode(state)['status'] == 'pending' then
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
    return 1
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1

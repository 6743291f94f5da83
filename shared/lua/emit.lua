-- emit: a batch of a running job's token events, to its output, replay log and channel.
-- KEYS: 1 job, 2 out, 3 log, 4 channel, 5 cancel
-- ARGV: 1 lease of the run, 2 completion tokens so far, 3 replay max (events kept),
--       4.. events (JSON)
-- Events at or below the job's stored seq were already written and are skipped, so
-- re-sending a batch after an interruption is harmless. A batch that would leave a
-- gap (Redis lost writes it had acknowledged: a restart with `appendfsync everysec`)
-- is not written: the caller re-sends from the stored seq.
-- Returns {verdict, stored seq}: verdict 'ok', 'cancel' (the job was asked to stop),
-- 'lost' (the job is not this run's any more: it was requeued or has ended; nothing
-- is written) or 'gap' (nothing written; re-send the events after the stored seq).
local f = job_fields(KEYS[1], 'status', 'lease', 'seq')
if f.status ~= 'running' or f.lease ~= ARGV[1] then return {'lost', f.seq or '0'} end
local seq = tonumber(f.seq or '0')
if #ARGV >= 4 and cjson.decode(ARGV[4]).seq > seq + 1 then return {'gap', tostring(seq)} end
local fresh, text = {}, {}
for i = 4, #ARGV do
  local ev = cjson.decode(ARGV[i])
  if ev.seq > seq then
    fresh[#fresh + 1] = ARGV[i]
    text[#text + 1] = ev.text
    seq = ev.seq
  end
end
if #fresh > 0 then
  redis.call('APPEND', KEYS[2], table.concat(text))
  redis.call('RPUSH', KEYS[3], unpack(fresh))
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[3]), -1)
  redis.call('PUBLISH', KEYS[4], '[' .. table.concat(fresh, ',') .. ']')
  redis.call('HSET', KEYS[1], 'seq', seq)
end
redis.call('HSET', KEYS[1], 'completion_tokens', ARGV[2])
if redis.call('EXISTS', KEYS[5]) == 1 then return {'cancel', tostring(seq)} end
return {'ok', tostring(seq)}

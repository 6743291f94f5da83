-- load: a job as stored, with its output so far.
-- KEYS: 1 job, 2 out, 3 tombstone
-- Returns {fields (flat field, value list), output, gone}: gone is 1 when the id belonged
-- to a job whose record has expired (fields is then empty).
local fields = redis.call('HGETALL', KEYS[1])
local gone = 0
if #fields == 0 then gone = redis.call('EXISTS', KEYS[3]) end
return {fields, redis.call('GET', KEYS[2]) or '', gone}

-- Helpers every lifecycle script shares. shared/lifecycle.py loads each script as
-- the generated constants (TERMINAL, HISTOGRAMS, RECENT_MAX, from the Python
-- definitions), then this file, then the script's own body.
-- Helpers take every key and value as arguments and read no ARGV; only
-- finish_keys reads KEYS, and every script that can end a job passes the same
-- twelve keys in the same order (FINISH_KEYS in shared/lifecycle.py).

local function is_terminal(status)
  return TERMINAL[status] == true
end

-- The job's fields as a table (missing fields are nil).
local function job_fields(job_key, ...)
  local names = {...}
  local values = redis.call('HMGET', job_key, unpack(names))
  local out = {}
  for i, name in ipairs(names) do out[name] = values[i] end
  return out
end

-- A transition on the durable stream (what consumers read with acknowledgement).
-- t: {job_id, queue, tenant, from, to, at, attempt, code, stream, stream_max}
local function transition(t)
  redis.call('XADD', t.stream, 'MAXLEN', '~', t.stream_max, '*',
             'job_id', t.job_id, 'queue', t.queue or '', 'tenant', t.tenant or '',
             'from', t.from or '', 'to', t.to, 'at', t.at,
             'attempt', tostring(t.attempt or '0'), 'code', t.code or '')
end

-- A status event on the job's replay log and channel (what streams and pollers
-- see), and its transition on the durable stream.
local function announce(log_key, channel, log_ttl, t)
  local ev = {type = 'status', status = t.to}
  if t.attempt and tonumber(t.attempt) > 0 then ev.attempt = tonumber(t.attempt) end
  local encoded = cjson.encode(ev)
  redis.call('RPUSH', log_key, encoded)
  redis.call('EXPIRE', log_key, log_ttl)
  redis.call('PUBLISH', channel, '[' .. encoded .. ']')
  transition(t)
end

-- Count a finished job in its queue's operator stats (see shared/opstats.py).
local function record_finished(job_key, stats_key, recent_key, status, now)
  local f = job_fields(job_key, 'model', 'timings', 'usage')
  local model = f.model or ''
  local t = f.timings and cjson.decode(f.timings) or {}
  local u = f.usage and cjson.decode(f.usage) or {}
  if type(t) ~= 'table' then t = {} end
  if type(u) ~= 'table' then u = {} end
  local generated = tonumber(u['completion_tokens']) or 0
  redis.call('HINCRBY', stats_key, 'jobs|' .. status .. '|' .. model, 1)
  redis.call('HINCRBY', stats_key, 'tokens|' .. model, generated)
  redis.call('HINCRBY', stats_key, 'prompt_tokens|' .. model, tonumber(u['prompt_tokens']) or 0)
  for _, h in ipairs(HISTOGRAMS) do
    local v = tonumber(t[h[2]])
    if v then
      v = v * h[3]
      local le = '+Inf'
      for _, b in ipairs(h[4]) do
        if v <= b[1] then le = b[2]; break end
      end
      redis.call('HINCRBY', stats_key, 'hist|' .. h[1] .. '|' .. le .. '|' .. model, 1)
      redis.call('HINCRBYFLOAT', stats_key, 'hsum|' .. h[1] .. '|' .. model, tostring(v))
    end
  end
  redis.call('LPUSH', recent_key, cjson.encode({
    status = status, model = model, finished_at = tonumber(now),
    queue_wait_ms = tonumber(t['queue_wait_ms']), ttft_ms = tonumber(t['ttft_ms']),
    duration_ms = tonumber(t['duration_ms']), tokens_per_s = tonumber(t['tokens_per_s']),
    completion_tokens = generated,
  }))
  redis.call('LTRIM', recent_key, 0, RECENT_MAX - 1)
end

-- What a finished job's tenant is accounted (one read of the job for both):
-- * its usage of the day (GET /v1/usage; shared/keys.py Keys.usage names the hash: the
--   prefix of the job's key, then usage:{tenant}:{day});
-- * its rate limits (api/ratelimits.py): the tokens it reserved and did not use go back
--   to its window (if that window is still current), and it leaves the active jobs.
local function account_tenant(job_key, job_id, now)
  local f = job_fields(job_key, 'tenant', 'model', 'usage', 'rate')
  local u = f.usage and cjson.decode(f.usage) or {}
  if type(u) ~= 'table' then u = {} end
  local prompt = tonumber(u['prompt_tokens']) or 0
  local completion = tonumber(u['completion_tokens']) or 0
  local prefix = string.sub(job_key, 1, #job_key - #job_id - 5)  -- '{prefix}:job:{id}'
  local key = prefix .. ':usage:' .. (f.tenant or '') .. ':' .. math.floor(tonumber(now) / 86400)
  local model = f.model or ''
  redis.call('HINCRBY', key, 'requests|' .. model, 1)
  redis.call('HINCRBY', key, 'prompt_tokens|' .. model, prompt)
  redis.call('HINCRBY', key, 'completion_tokens|' .. model, completion)
  redis.call('EXPIRE', key, USAGE_TTL_S)
  local r = f.rate and cjson.decode(f.rate)
  if type(r) ~= 'table' then return end
  local back = (tonumber(r.reserved) or 0) - prompt - completion
  if back > 0 and r.tokens_key and redis.call('EXISTS', r.tokens_key) == 1 then
    redis.call('DECRBY', r.tokens_key, back)
  end
  if r.active_key then redis.call('SREM', r.active_key, job_id) end
end

-- Move an unfinished job to a terminal status: the one way any job ends.
-- k: the finish keys (job, waiting, running, unsent, expiry, out, log, channel,
-- cancel, transitions, stats, recent); f: {job_id, status, now, retention,
-- stream_max, fields (flat list), code}. The job must exist and be unfinished.
local function finish_job(k, f)
  local cur = job_fields(k.job, 'status', 'queue', 'tenant', 'attempts')
  redis.call('HSET', k.job, 'status', f.status, 'finished_at', f.now, 'owner', '', 'lease', '')
  if f.fields and #f.fields > 0 then redis.call('HSET', k.job, unpack(f.fields)) end
  redis.call('ZREM', k.waiting, f.job_id)
  redis.call('HDEL', k.running, f.job_id)
  redis.call('ZREM', k.unsent, f.job_id)
  redis.call('ZREM', k.expiry, f.job_id)
  redis.call('DEL', k.cancel)
  announce(k.log, k.channel, f.retention, {
    job_id = f.job_id, queue = cur.queue, tenant = cur.tenant, from = cur.status,
    to = f.status, at = f.now, attempt = cur.attempts, code = f.code,
    stream = k.transitions, stream_max = f.stream_max})
  for _, key in ipairs({k.job, k.out, k.log}) do redis.call('EXPIRE', key, f.retention) end
  record_finished(k.job, k.stats, k.recent, f.status, f.now)
  account_tenant(k.job, f.job_id, f.now)
end

-- KEYS of the scripts that can finish a job, by name (same order everywhere).
local function finish_keys(first)
  local names = {'job', 'waiting', 'running', 'unsent', 'expiry', 'out', 'log', 'channel',
                 'cancel', 'transitions', 'stats', 'recent'}
  local k = {}
  for i, name in ipairs(names) do k[name] = KEYS[first + i - 1] end
  return k
end

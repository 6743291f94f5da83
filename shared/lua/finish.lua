-- finish: the run that holds a job ends it (succeeded, failed or cancelled).
-- KEYS: the finish keys (lib.lua: finish_keys)
-- ARGV: 1 job id, 2 status, 3 lease of the run, 4 now, 5 retention, 6 stream max, 7 code
--       (error code, or ''), 8.. field, value pairs
-- Returns 'ok', or why nothing changed: 'missing', 'lost' (not this run's job) or
-- the terminal status it already had.
local k = finish_keys(1)
local f = job_fields(k.job, 'status', 'lease')
if not f.status then return 'missing' end
if is_terminal(f.status) then return f.status end
if f.status ~= 'running' or f.lease ~= ARGV[3] then return 'lost' end
finish_job(k, {job_id = ARGV[1], status = ARGV[2], now = ARGV[4], retention = ARGV[5],
               stream_max = ARGV[6], code = ARGV[7], fields = {unpack(ARGV, 8)}})
return 'ok'

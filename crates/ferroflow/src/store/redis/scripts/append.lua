local run = ARGV[2]
local rk = run_key(run)
if redis.call('EXISTS', rk) == 0 then return {2, 0} end
local found = redis.call('LLEN', journal_key(run))
if found ~= tonumber(ARGV[3]) then return {3, found} end
for k = 6, #ARGV do redis.call('RPUSH', journal_key(run), ARGV[k]) end
if ARGV[4] ~= '' then redis.call('HSET', rk, 'status', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', rk, 'updated_ms', ARGV[5]) end
return {0, 0}

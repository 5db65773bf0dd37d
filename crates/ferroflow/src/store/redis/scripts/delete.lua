local run = ARGV[2]
local rk = run_key(run)
local f = redis.call('HMGET', rk, 'status', 'created_ms', 'order')
if not f[1] then return -1 end
if f[1] ~= 'completed' and f[1] ~= 'failed' and f[1] ~= 'cancelled' then return 0 end
set_hold(run, false, 0)
for _, tkey in ipairs(redis.call('SMEMBERS', tasks_of(run))) do drop_task(tkey) end
redis.call('ZREM', P .. ':runs', string.format('%020d', tonumber(f[2])) .. ':' .. string.format('%020d', tonumber(f[3])) .. ':' .. run)
redis.call('DEL', tasks_of(run), journal_key(run), rk)
return 1

local owner, run = ARGV[2], ARGV[3]
local till = server_ms() + tonumber(ARGV[4])
local status = redis.call('HGET', run_key(run), 'status')
if status == 'pending' or status == 'running' then set_hold(run, owner, till) end
local out = {}
for _, tkey in ipairs(redis.call('SMEMBERS', tasks_of(run))) do out[#out + 1] = lease(tkey, owner, till) end
return out

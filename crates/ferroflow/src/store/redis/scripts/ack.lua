local owner, tkey = ARGV[2], ARGV[3]
if redis.call('HGET', tkey, 'owner') ~= owner then return 0 end
local till = redis.call('ZSCORE', LEASED, tkey)
if not till or tonumber(till) <= server_ms() then return 0 end
drop_task(tkey)
return 1

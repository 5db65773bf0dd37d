local owner = ARGV[2]
local till = server_ms() + tonumber(ARGV[3])
for _, tkey in ipairs(redis.call('SMEMBERS', leases_of(owner))) do redis.call('ZADD', LEASED, 'XX', till, tkey) end
for _, run in ipairs(redis.call('SMEMBERS', holds_of(owner))) do
  redis.call('ZADD', HOLDS, 'XX', till, run)
  redis.call('HSET', run_key(run), 'until_ms', till)
end
return 0

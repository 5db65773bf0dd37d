local owner = ARGV[2]
local leased = {}
for _, tkey in ipairs(redis.call('SMEMBERS', leases_of(owner))) do
  local t = redis.call('HMGET', tkey, 'task', 'nbf', 'deliveries')
  if t[1] then table.insert(leased, {t[1], tonumber(t[2]), tonumber(t[3])}) end
end
return {redis.call('SMEMBERS', holds_of(owner)), leased}

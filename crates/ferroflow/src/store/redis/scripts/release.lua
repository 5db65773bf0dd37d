local owner, nbf = ARGV[2], ARGV[3]
for k = 4, #ARGV do
  local tkey = ARGV[k]
  if redis.call('HGET', tkey, 'owner') == owner then
    redis.call('SREM', leases_of(owner), tkey)
    redis.call('HDEL', tkey, 'owner')
    redis.call('ZREM', LEASED, tkey)
    local d = tonumber(redis.call('HGET', tkey, 'deliveries'))
    redis.call('HSET', tkey, 'nbf', nbf, 'deliveries', math.max(d - 1, 0))
    redis.call('ZADD', FREE, nbf, tkey)
  end
end
return 0

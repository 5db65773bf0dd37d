local rk = run_key(ARGV[2])
if redis.call('EXISTS', rk) == 0 then return 0 end
redis.call('HSET', rk, 'status', ARGV[3], 'updated_ms', ARGV[4])
return 1

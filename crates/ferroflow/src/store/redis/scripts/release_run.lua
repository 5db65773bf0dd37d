local owner, run = ARGV[2], ARGV[3]
if redis.call('HGET', run_key(run), 'owner') == owner then set_hold(run, ARGV[5], tonumber(ARGV[4])) end
return 0

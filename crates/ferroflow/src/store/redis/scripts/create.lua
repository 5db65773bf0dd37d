local run = ARGV[2]
local rk = run_key(run)
if redis.call('EXISTS', rk) == 1 then return 0 end
local order = redis.call('INCR', P .. ':created')
redis.call('HSET', rk, 'graph', ARGV[3], 'version', ARGV[4], 'status', ARGV[5], 'created_ms', ARGV[6],
  'updated_ms', ARGV[7], 'order', order, 'until_ms', 0)
redis.call('ZADD', P .. ':runs', 0, ARGV[8] .. ':' .. string.format('%020d', order) .. ':' .. run)
local n = tonumber(ARGV[11])
for k = 12, 11 + n do redis.call('RPUSH', journal_key(run), ARGV[k]) end
local i = 12 + n
local nr = tonumber(ARGV[i])
if ARGV[9] ~= '' then
  hold(run, ARGV[9], tonumber(ARGV[10]), server_ms())
else
  for k = 0, nr - 1 do
    local b = i + 1 + 4 * k
    enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
  end
end
return 1

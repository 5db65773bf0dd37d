local owner, max, lease_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = server_ms()
local till = now + lease_ms
local runs, tasks = {}, {}
if max > 0 then
  for _, run in ipairs(redis.call('ZRANGE', HOLDS, '-inf', now, 'BYSCORE', 'LIMIT', 0, max)) do
    set_hold(run, owner, till)
    runs[#runs + 1] = run
  end
end
for _, z in ipairs({LEASED, FREE}) do
  local room = max - #runs - #tasks
  if room > 0 then
    for _, tkey in ipairs(redis.call('ZRANGE', z, '-inf', now, 'BYSCORE', 'LIMIT', 0, room)) do
      tasks[#tasks + 1] = lease(tkey, owner, till)
    end
  end
end
local next_due = -1
for _, z in ipairs({HOLDS, LEASED, FREE}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if next_due < 0 or at < next_due then next_due = at end
  end
end
return {now, next_due, runs, tasks}

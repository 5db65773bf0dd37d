local owner = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local now = server_ms()
local out = {}
local i = 5
for s = 1, tonumber(ARGV[4]) do
  local run, expected, status = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local keeps, terminal, updated = ARGV[i + 3] == '1', ARGV[i + 4] == '1', ARGV[i + 5]
  local ne = tonumber(ARGV[i + 6])
  local entries_from = i + 7
  i = entries_from + ne
  local nd = tonumber(ARGV[i])
  local done_from = i + 1
  i = done_from + nd
  local nr = tonumber(ARGV[i])
  local ready_from = i + 1
  i = ready_from + 4 * nr
  local rk = run_key(run)
  if redis.call('EXISTS', rk) == 0 then
    out[s] = {2, 0}
  else
    local found = redis.call('LLEN', journal_key(run))
    if found ~= expected then
      out[s] = {3, found}
    else
      for k = entries_from, entries_from + ne - 1 do redis.call('RPUSH', journal_key(run), ARGV[k]) end
      redis.call('HSET', rk, 'status', status)
      if updated ~= '' then redis.call('HSET', rk, 'updated_ms', updated) end
      if not keeps then set_hold(run, false, 0) end
      if terminal then
        -- A finished run has nothing left to run, whoever holds its tasks.
        for _, tkey in ipairs(redis.call('SMEMBERS', tasks_of(run))) do drop_task(tkey) end
        out[s] = {0, 0}
      else
        for k = done_from, done_from + nd - 1 do drop_task(ARGV[k]) end
        local held = false
        if owner ~= '' and keeps then held = hold(run, owner, lease_ms, now) end
        if not held then
          for k = 0, nr - 1 do
            local b = ready_from + 4 * k
            enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
          end
        end
        out[s] = {held and 1 or 0, 0}
      end
    end
  end
end
return out

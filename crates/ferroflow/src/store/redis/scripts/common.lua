#!lua
-- Helpers shared by the scripts (prepended to each). `P` is the key prefix, `ff:<ns>`,
-- always ARGV[1].
local P = ARGV[1]
local FREE = P .. ':free'
local LEASED = P .. ':leased'
local HOLDS = P .. ':holds'
local function run_key(run) return P .. ':{' .. run .. '}:run' end
local function journal_key(run) return P .. ':{' .. run .. '}:journal' end
local function tasks_of(run) return P .. ':{' .. run .. '}:tasks' end
local function leases_of(owner) return P .. ':owner:' .. owner .. ':leases' end
local function holds_of(owner) return P .. ':owner:' .. owner .. ':holds' end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Queues a task unless it is queued or leased already.
local function enqueue(tkey, run, json, nbf)
  if redis.call('EXISTS', tkey) == 1 then return end
  redis.call('HSET', tkey, 'run', run, 'task', json, 'nbf', nbf, 'deliveries', 0)
  redis.call('ZADD', FREE, nbf, tkey)
  redis.call('SADD', tasks_of(run), tkey)
end
-- Removes a task, whoever leases it.
local function drop_task(tkey)
  local t = redis.call('HMGET', tkey, 'run', 'owner')
  if not t[1] then return end
  if t[2] then redis.call('SREM', leases_of(t[2]), tkey) end
  redis.call('ZREM', FREE, tkey)
  redis.call('ZREM', LEASED, tkey)
  redis.call('SREM', tasks_of(t[1]), tkey)
  redis.call('DEL', tkey)
end
-- Leases a task to owner until `till`, whoever held it; returns {task, nbf, deliveries}.
local function lease(tkey, owner, till)
  local t = redis.call('HMGET', tkey, 'owner', 'task', 'nbf')
  if t[1] then redis.call('SREM', leases_of(t[1]), tkey) end
  redis.call('ZREM', FREE, tkey)
  redis.call('ZADD', LEASED, till, tkey)
  redis.call('SADD', leases_of(owner), tkey)
  redis.call('HSET', tkey, 'owner', owner)
  local d = redis.call('HINCRBY', tkey, 'deliveries', 1)
  return {t[2], tonumber(t[3]), d}
end
-- Makes `holder` hold the run until `till`; with holder false, ends the hold.
local function set_hold(run, holder, till)
  local rk = run_key(run)
  local old = redis.call('HGET', rk, 'owner')
  if old then redis.call('SREM', holds_of(old), run) end
  if holder then
    redis.call('HSET', rk, 'owner', holder, 'until_ms', till)
    redis.call('ZADD', HOLDS, till, run)
    redis.call('SADD', holds_of(holder), run)
  elseif old then
    redis.call('HDEL', rk, 'owner')
    redis.call('HSET', rk, 'until_ms', 0)
    redis.call('ZREM', HOLDS, run)
  end
end
-- Makes owner hold the run unless another owner holds it, even with an expired hold
-- (Step::ready); says whether it does.
local function hold(run, owner, lease_ms, now)
  local holder = redis.call('HGET', run_key(run), 'owner')
  if holder == owner then return true end
  if holder then return false end
  set_hold(run, owner, now + lease_ms)
  return true
end

-- Settle, release or record the usage of one reservation (one atomic step).
-- KEYS[1]      the reservation record (HASH)
-- KEYS[2]      the team's usage record of the admission's day (HASH "<model>|r|p|c" -> count)
-- KEYS[3..]    KEYS_PER_SCOPE keys per scope, in the order listed in common.lua
-- ARGV[1]      now in microseconds, or '' to use Redis server time
-- ARGV[2]      reservation id
-- ARGV[3]      prompt tokens used
-- ARGV[4]      completion tokens used
-- ARGV[5]      mode: 'settle', 'release', 'withdraw' (release, and leave the rate windows) or 'usage'
-- ARGV[6]      UTC day of the admission (YYYYMMDD)
-- ARGV[7]      UTC month of the admission (YYYYMM)
-- ARGV[8]      model field of the usage record
-- ARGV[9]      usage record ttl (ms)
-- ARGV[10]     budget counters ttl (ms)
-- Returns 1 when applied, 0 when the reservation is unknown (already settled or long expired).
local id = ARGV[2]
local prompt = tonumber(ARGV[3])
local completion = tonumber(ARGV[4])
local mode = ARGV[5]
local adm_day, adm_month = ARGV[6], ARGV[7]
local nscopes = (#KEYS - 2) / KEYS_PER_SCOPE

if mode ~= 'usage' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('DEL', KEYS[1])
end

local used = prompt + completion
local withdraw = mode == 'withdraw'
if mode == 'release' or withdraw then used = 0 end
local record = mode ~= 'release' and not withdraw
local today, this_month = periods(now_us(ARGV[1]))
local keep = {['d:' .. adm_day] = true, ['m:' .. adm_month] = true, ['d:' .. today] = true, ['m:' .. this_month] = true}

for s = 1, nscopes do
  local b = 2 + (s - 1) * KEYS_PER_SCOPE
  local rpm_key, tpm_key = KEYS[b + 1], KEYS[b + 2]
  local tamt_key, live_key, lamt_key, acct_key = KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6]
  if mode ~= 'usage' then
    -- The tokens window counts what was used, no longer what was reserved; a withdrawn request, nothing.
    local counted = redis.call('HGET', tamt_key, id)
    if withdraw then
      redis.call('ZREM', rpm_key, id)
      redis.call('ZREM', tpm_key, id)
      if counted then
        redis.call('HDEL', tamt_key, id)
        redis.call('HINCRBY', tamt_key, 'sum', 0 - tonumber(counted))
      end
    elseif counted then
      redis.call('HSET', tamt_key, id, used)
      redis.call('HINCRBY', tamt_key, 'sum', used - tonumber(counted))
    end
    -- The request is no longer in flight.
    if redis.call('ZREM', live_key, id) == 1 then
      local reserved = redis.call('HGET', lamt_key, id)
      redis.call('HDEL', lamt_key, id)
      redis.call('HINCRBY', lamt_key, 'sum', 0 - (tonumber(reserved) or 0))
    end
  end
  if record and used > 0 then
    redis.call('HINCRBY', acct_key, 'd:' .. adm_day, used)
    redis.call('HINCRBY', acct_key, 'm:' .. adm_month, used)
    for _, field in ipairs(redis.call('HKEYS', acct_key)) do
      if not keep[field] then redis.call('HDEL', acct_key, field) end
    end
    redis.call('PEXPIRE', acct_key, tonumber(ARGV[10]))
  end
end

if record then
  local model = ARGV[8]
  redis.call('HINCRBY', KEYS[2], model .. '|r', 1)
  redis.call('HINCRBY', KEYS[2], model .. '|p', prompt)
  redis.call('HINCRBY', KEYS[2], model .. '|c', completion)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[9]))
end
return 1

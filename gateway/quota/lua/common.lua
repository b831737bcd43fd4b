-- Shared helpers, prepended to admit.lua and settle.lua when they are loaded.
-- Keys of one scope (all carry the team's hash tag, so a request's keys share one Cluster slot):
--   rpm       ZSET  reservation id -> admission time (us): the requests window
--   tpm       ZSET  reservation id -> admission time (us): the tokens window
--   tpm_amt   HASH  reservation id -> tokens counted in the window; field "sum" holds their total
--   live      ZSET  reservation id -> expiry time (us): reservations not yet settled
--   live_amt  HASH  reservation id -> tokens reserved; field "sum" holds their total
--   acct      HASH  "d:YYYYMMDD" / "m:YYYYMM" -> settled tokens of that UTC day / month
local KEYS_PER_SCOPE = 6
local BATCH = 500 -- entries handled per command, well under Lua's unpack limit

if redis.replicate_commands then pcall(redis.replicate_commands) end -- Redis < 7: allow TIME before writes

local function now_us(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Days since 1970-01-01 -> civil date (proleptic Gregorian), and back.
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The UTC day and month of `now` ("YYYYMMDD", "YYYYMM") and the microseconds left in each.
local function periods(now)
  local days = math.floor(now / 86400000000)
  local y, m, d = civil_from_days(days)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  local day_end = (days + 1) * 86400000000 - now
  local month_end = days_from_civil(ny, nm, 1) * 86400000000 - now
  return string.format('%04d%02d%02d', y, m, d), string.format('%04d%02d', y, m), day_end, month_end
end

-- Drop entries scored <= upto from a ZSET and, when it has one, their amounts from its HASH and sum.
local function purge(zkey, amtkey, upto)
  if not amtkey then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', upto)
    return
  end
  while true do
    local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', upto, 'LIMIT', 0, BATCH)
    if #gone == 0 then return end
    local amounts = redis.call('HMGET', amtkey, unpack(gone))
    local freed = 0
    for i = 1, #gone do freed = freed + (tonumber(amounts[i]) or 0) end
    redis.call('HDEL', amtkey, unpack(gone))
    redis.call('HINCRBY', amtkey, 'sum', 0 - freed) -- 0 - x, not -x: Lua writes -0 as "-0", which HINCRBY refuses
    redis.call('ZREM', zkey, unpack(gone))
  end
end

local function hget_number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0') or 0
end

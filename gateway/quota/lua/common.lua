-- Shared helpers, prepended to admit.lua, extend.lua and settle.lua when they are loaded.
-- Keys of one scope (all carry the team's hash tag, so a request's keys share one Cluster slot):
--   rpm       ZSET  reservation id -> admission time (us): the requests window
--   tpm       ZSET  reservation id -> admission time (us): the tokens window
--   tpm_amt   HASH  reservation id -> tokens counted in the window; field "sum" holds their total
--   live      ZSET  reservation id -> expiry time (us): reservations not yet settled
--   live_amt  HASH  reservation id -> tokens reserved; field "sum" holds their total
--   acct      HASH  "d:YYYYMMDD" / "m:YYYYMM" -> settled tokens of that UTC day / month
local KEYS_PER_SCOPE = 6
local BATCH = 500 -- entries handled per command, well under Lua's unpack limit
local IN_FLIGHT_RETRY = 1000000 -- us: refusals that only wait on requests in flight

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

-- The keys of scope s (in the order listed above) when the first scope's begin at KEYS[first].
local function scope_keys_from(first, s)
  local b = first + (s - 1) * KEYS_PER_SCOPE
  return KEYS[b], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5]
end

-- The 5 limits of scope s (rpm, tpm, concurrent, day, month; -1 = unlimited) when the first scope's
-- begin at ARGV[first].
local function scope_limits_from(first, s)
  local b = first + (s - 1) * 5
  return tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
end

-- A refusal is {kind, scope, retry_us, limit, used}; of several, the one that keeps the request out
-- longest wins (-1, never, beats everything).
local function longest(best, kind, s, retry, limit, used)
  if best == nil or (best[3] ~= -1 and (retry == -1 or retry > best[3])) then
    return {kind, s, retry, limit, used}
  end
  return best
end

-- When the tokens window frees room for `need` more tokens. `skip`: an entry whose leaving frees
-- nothing (the request's own, when it is being extended).
local function tokens_retry(tpm_key, amt_key, need, now, window, skip)
  local offset = 0
  while true do
    local batch = redis.call('ZRANGE', tpm_key, offset, offset + BATCH - 1, 'WITHSCORES')
    if #batch == 0 then return window end
    local ids = {}
    for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
    local amounts = redis.call('HMGET', amt_key, unpack(ids))
    for i = 1, #ids do
      if ids[i] ~= skip then
        need = need - (tonumber(amounts[i]) or 0)
        if need <= 0 then return tonumber(batch[2 * i]) + window - now end
      end
    end
    offset = offset + BATCH
  end
end

-- tokens_per_minute: `reserve` more tokens beside the `sum` others hold in the window.
local function check_tpm(best, s, tpm, tpm_key, tamt_key, sum, reserve, now, window, skip)
  if reserve > tpm then
    return longest(best, 2, s, -1, tpm, sum)
  elseif sum + reserve > tpm then
    return longest(best, 2, s, tokens_retry(tpm_key, tamt_key, sum + reserve - tpm, now, window, skip), tpm, sum)
  end
  return best
end

-- tokens_per_day and tokens_per_month: `reserve` more tokens beside the settled ones and the `live`
-- tokens other requests hold in flight.
local function check_budgets(best, s, acct_key, per_day, per_month, live, reserve, now)
  local day, month, day_end, month_end = periods(now)
  for _, budget in ipairs({{4, per_day, 'd:' .. day, day_end}, {5, per_month, 'm:' .. month, month_end}}) do
    local kind, limit, field, period_end = budget[1], budget[2], budget[3], budget[4]
    if limit >= 0 then
      local settled = hget_number(acct_key, field)
      if reserve > limit then
        best = longest(best, kind, s, -1, limit, settled + live)
      elseif settled + reserve > limit then
        best = longest(best, kind, s, period_end, limit, settled + live)
      elseif settled + live + reserve > limit then
        best = longest(best, kind, s, IN_FLIGHT_RETRY, limit, settled + live)
      end
    end
  end
  return best
end

-- What the client sees: for each rate kind the scope with the least room, as {limit, remaining,
-- reset_us} ({-1, -1, -1} when no scope limits it). keys_of(s) and limits_of(s) give a scope's keys
-- and limits; `skip` (an id or nil) is left out, as if it were already released.
local function rate_states(nscopes, keys_of, limits_of, now, window, skip)
  local function window_state(zkey, limit, used)
    local reset = 0
    local oldest = redis.call('ZRANGE', zkey, 0, skip and 1 or 0, 'WITHSCORES')
    if skip and oldest[1] == skip then oldest = {oldest[3], oldest[4]} end
    if oldest[2] then reset = math.max(0, tonumber(oldest[2]) + window - now) end
    return {limit, limit - used, reset}
  end
  local req, tok = nil, nil
  for s = 1, nscopes do
    local rpm_key, tpm_key, tamt_key = keys_of(s)
    local rpm, tpm = limits_of(s)
    if rpm >= 0 then
      local count = redis.call('ZCARD', rpm_key)
      if skip and redis.call('ZSCORE', rpm_key, skip) then count = count - 1 end
      local w = window_state(rpm_key, rpm, count)
      if req == nil or w[2] < req[2] then req = w end
    end
    if tpm >= 0 then
      local sum = hget_number(tamt_key, 'sum')
      if skip then sum = sum - (tonumber(redis.call('HGET', tamt_key, skip) or '0') or 0) end
      local w = window_state(tpm_key, tpm, sum)
      if tok == nil or w[2] < tok[2] then tok = w end
    end
  end
  return req or {-1, -1, -1}, tok or {-1, -1, -1}
end

-- Check every limit of one request and, only if all pass, record the admission (one atomic step).
-- KEYS[1]      the reservation record (HASH)
-- KEYS[2..]    KEYS_PER_SCOPE keys per scope, in the order listed in common.lua
-- ARGV[1]      now in microseconds, or '' to use Redis server time
-- ARGV[2]      reservation id
-- ARGV[3]      tokens to reserve
-- ARGV[4]      reservation ttl (us)
-- ARGV[5]      rate window (us)
-- ARGV[6]      record ttl (ms): how long settle stays idempotent
-- ARGV[7]      model ('' for none)
-- ARGV[8..]    5 limits per scope: rpm, tpm, concurrent, day, month; -1 = unlimited
-- Returns {status, kind, scope, retry_us, limit, used, day, month, req_limit, req_remaining,
--          req_reset_us, tok_limit, tok_remaining, tok_reset_us}; status 1 admitted, 0 refused,
--          2 the id was already admitted. retry_us -1: the request can never fit. -1 elsewhere: none.
local now = now_us(ARGV[1])
local id = ARGV[2]
local reserve = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local nscopes = (#KEYS - 1) / KEYS_PER_SCOPE
local IN_FLIGHT_RETRY = 1000000

local day, month, day_end, month_end = periods(now)
if redis.call('EXISTS', KEYS[1]) == 1 then return {2, -1, -1, -1, -1, -1, day, month, -1, -1, -1, -1, -1, -1} end

local function scope_keys(s)
  local b = 1 + (s - 1) * KEYS_PER_SCOPE
  return KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6]
end

local function scope_limits(s)
  local b = 7 + (s - 1) * 5
  return tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
end

-- The refusal that keeps the request out longest wins (-1, never, beats everything).
local best = nil
local function refuse(kind, s, retry, limit, used)
  if best == nil or (best[3] ~= -1 and (retry == -1 or retry > best[3])) then
    best = {kind, s, retry, limit, used}
  end
end

-- When the tokens window frees enough room for `need` more tokens.
local function tokens_retry(tpm_key, amt_key, need)
  local offset = 0
  while true do
    local batch = redis.call('ZRANGE', tpm_key, offset, offset + BATCH - 1, 'WITHSCORES')
    if #batch == 0 then return window end
    local ids = {}
    for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
    local amounts = redis.call('HMGET', amt_key, unpack(ids))
    for i = 1, #ids do
      need = need - (tonumber(amounts[i]) or 0)
      if need <= 0 then return tonumber(batch[2 * i]) + window - now end
    end
    offset = offset + BATCH
  end
end

-- 1. Check.
for s = 1, nscopes do
  local rpm_key, tpm_key, tamt_key, live_key, lamt_key, acct_key = scope_keys(s)
  local rpm, tpm, conc, per_day, per_month = scope_limits(s)
  if rpm >= 0 then
    purge(rpm_key, nil, now - window)
    local count = redis.call('ZCARD', rpm_key)
    if count + 1 > rpm then
      if rpm == 0 then
        refuse(1, s, -1, rpm, count)
      else
        local e = redis.call('ZRANGE', rpm_key, count - rpm, count - rpm, 'WITHSCORES')
        refuse(1, s, tonumber(e[2]) + window - now, rpm, count)
      end
    end
  end
  if tpm >= 0 then
    purge(tpm_key, tamt_key, now - window)
    local sum = hget_number(tamt_key, 'sum')
    if reserve > tpm then
      refuse(2, s, -1, tpm, sum)
    elseif sum + reserve > tpm then
      refuse(2, s, tokens_retry(tpm_key, tamt_key, sum + reserve - tpm), tpm, sum)
    end
  end
  if conc >= 0 or per_day >= 0 or per_month >= 0 then
    purge(live_key, lamt_key, now)
    if conc >= 0 then
      local count = redis.call('ZCARD', live_key)
      if count + 1 > conc then refuse(3, s, conc == 0 and -1 or IN_FLIGHT_RETRY, conc, count) end
    end
    local live = hget_number(lamt_key, 'sum')
    for _, budget in ipairs({{4, per_day, 'd:' .. day, day_end}, {5, per_month, 'm:' .. month, month_end}}) do
      local kind, limit, field, period_end = budget[1], budget[2], budget[3], budget[4]
      if limit >= 0 then
        local settled = hget_number(acct_key, field)
        if reserve > limit then
          refuse(kind, s, -1, limit, settled + live)
        elseif settled + reserve > limit then
          refuse(kind, s, period_end, limit, settled + live)
        elseif settled + live + reserve > limit then
          refuse(kind, s, IN_FLIGHT_RETRY, limit, settled + live)
        end
      end
    end
  end
end

-- 2. Record, only when nothing refused.
local status = 0
if best == nil then
  status = 1
  local window_ms = math.floor(window / 1000) + 1000
  local live_ms = math.floor(ttl / 1000) + 1000
  for s = 1, nscopes do
    local rpm_key, tpm_key, tamt_key, live_key, lamt_key = scope_keys(s)
    local rpm, tpm, conc, per_day, per_month = scope_limits(s)
    if rpm >= 0 then
      redis.call('ZADD', rpm_key, now, id)
      redis.call('PEXPIRE', rpm_key, window_ms)
    end
    if tpm >= 0 then
      redis.call('ZADD', tpm_key, now, id)
      redis.call('HSET', tamt_key, id, reserve)
      redis.call('HINCRBY', tamt_key, 'sum', reserve)
      redis.call('PEXPIRE', tpm_key, window_ms)
      redis.call('PEXPIRE', tamt_key, window_ms)
    end
    if conc >= 0 or per_day >= 0 or per_month >= 0 then
      redis.call('ZADD', live_key, now + ttl, id)
      redis.call('HSET', lamt_key, id, reserve)
      redis.call('HINCRBY', lamt_key, 'sum', reserve)
      redis.call('PEXPIRE', live_key, live_ms)
      redis.call('PEXPIRE', lamt_key, live_ms)
    end
  end
  redis.call('HSET', KEYS[1], 'reserve', reserve, 'model', ARGV[7], 'day', day, 'month', month)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
end

-- 3. What the client sees: the scope with the least room for each rate kind.
local function window_state(zkey, limit, used)
  local reset = 0
  local oldest = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if #oldest > 0 then reset = math.max(0, tonumber(oldest[2]) + window - now) end
  return {limit, limit - used, reset}
end
local req, tok = nil, nil
for s = 1, nscopes do
  local rpm_key, tpm_key, tamt_key = scope_keys(s)
  local rpm, tpm = scope_limits(s)
  if rpm >= 0 then
    local w = window_state(rpm_key, rpm, redis.call('ZCARD', rpm_key))
    if req == nil or w[2] < req[2] then req = w end
  end
  if tpm >= 0 then
    local w = window_state(tpm_key, tpm, hget_number(tamt_key, 'sum'))
    if tok == nil or w[2] < tok[2] then tok = w end
  end
end
req = req or {-1, -1, -1}
tok = tok or {-1, -1, -1}
best = best or {-1, -1, -1, -1, -1}
return {status, best[1], best[2], best[3], best[4], best[5], day, month,
        req[1], req[2], req[3], tok[1], tok[2], tok[3]}

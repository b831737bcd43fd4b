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

local day, month = periods(now)
if redis.call('EXISTS', KEYS[1]) == 1 then return {2, -1, -1, -1, -1, -1, day, month, -1, -1, -1, -1, -1, -1} end

local function scope_keys(s) return scope_keys_from(2, s) end
local function scope_limits(s) return scope_limits_from(8, s) end

-- 1. Check.
local best = nil
for s = 1, nscopes do
  local rpm_key, tpm_key, tamt_key, live_key, lamt_key, acct_key = scope_keys(s)
  local rpm, tpm, conc, per_day, per_month = scope_limits(s)
  if rpm >= 0 then
    purge(rpm_key, nil, now - window)
    local count = redis.call('ZCARD', rpm_key)
    if count + 1 > rpm then
      if rpm == 0 then
        best = longest(best, 1, s, -1, rpm, count)
      else
        local e = redis.call('ZRANGE', rpm_key, count - rpm, count - rpm, 'WITHSCORES')
        best = longest(best, 1, s, tonumber(e[2]) + window - now, rpm, count)
      end
    end
  end
  if tpm >= 0 then
    purge(tpm_key, tamt_key, now - window)
    best = check_tpm(best, s, tpm, tpm_key, tamt_key, hget_number(tamt_key, 'sum'), reserve, now, window, nil)
  end
  if conc >= 0 or per_day >= 0 or per_month >= 0 then
    purge(live_key, lamt_key, now)
    if conc >= 0 then
      local count = redis.call('ZCARD', live_key)
      if count + 1 > conc then best = longest(best, 3, s, conc == 0 and -1 or IN_FLIGHT_RETRY, conc, count) end
    end
    best = check_budgets(best, s, acct_key, per_day, per_month, hget_number(lamt_key, 'sum'), reserve, now)
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
  -- reserve and expires: what extend.lua reads (how much is held, and until when it is live)
  redis.call('HSET', KEYS[1], 'reserve', reserve, 'expires', now + ttl, 'model', ARGV[7], 'day', day, 'month', month)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
end

-- 3. What the client sees.
local req, tok = rate_states(nscopes, scope_keys, scope_limits, now, window, nil)
best = best or {-1, -1, -1, -1, -1}
return {status, best[1], best[2], best[3], best[4], best[5], day, month,
        req[1], req[2], req[3], tok[1], tok[2], tok[3]}

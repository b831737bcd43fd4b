-- Raise a live reservation to a new total, only if every token limit allows that total now, checked
-- as admit.lua would check it beside everything else in flight (one atomic step). The request keeps
-- its requests-window entry and its concurrency slot; its tokens-window entry moves to now with the
-- new total, as if it had been admitted now. A total at or under what is held changes nothing (a
-- repeated extension answers as the first did).
-- KEYS[1]      the reservation record (HASH)
-- KEYS[2..]    KEYS_PER_SCOPE keys per scope, in the order listed in common.lua
-- ARGV[1]      now in microseconds, or '' to use Redis server time
-- ARGV[2]      reservation id
-- ARGV[3]      the total to reserve
-- ARGV[4]      rate window (us)
-- ARGV[5..]    5 limits per scope, as at admission: rpm, tpm, concurrent, day, month; -1 = unlimited
-- Returns {status, kind, scope, retry_us, limit, used, req_limit, req_remaining, req_reset_us,
--          tok_limit, tok_remaining, tok_reset_us}; status 1 extended, 0 refused, 3 no live
--          reservation by that id (settled, released, expired or never admitted). -1: none.
local now = now_us(ARGV[1])
local id = ARGV[2]
local total = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local nscopes = (#KEYS - 1) / KEYS_PER_SCOPE
local UNKNOWN = {3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1}

local record = redis.call('HMGET', KEYS[1], 'reserve', 'expires')
if not record[1] or (record[2] and tonumber(record[2]) <= now) then return UNKNOWN end
local more = total > tonumber(record[1])

local function scope_keys(s) return scope_keys_from(2, s) end
local function scope_limits(s) return scope_limits_from(5, s) end

-- 1. Check, leaving the request's own tokens out: the new total replaces them.
local best = nil
local own_tpm, own_live = {}, {}
for s = 1, nscopes do
  local rpm_key, tpm_key, tamt_key, live_key, lamt_key, acct_key = scope_keys(s)
  local rpm, tpm, conc, per_day, per_month = scope_limits(s)
  if rpm >= 0 then purge(rpm_key, nil, now - window) end -- only for the headers
  if tpm >= 0 then
    purge(tpm_key, tamt_key, now - window)
    own_tpm[s] = tonumber(redis.call('HGET', tamt_key, id) or '0') or 0 -- 0 once it left the window
    best = check_tpm(best, s, tpm, tpm_key, tamt_key, hget_number(tamt_key, 'sum') - own_tpm[s], total, now, window, id)
  end
  if conc >= 0 or per_day >= 0 or per_month >= 0 then
    purge(live_key, lamt_key, now)
    local held = redis.call('HGET', lamt_key, id)
    if not held then return UNKNOWN end -- no longer in flight here
    own_live[s] = tonumber(held)
    best = check_budgets(best, s, acct_key, per_day, per_month, hget_number(lamt_key, 'sum') - own_live[s], total, now)
  end
end
if not more then best = nil end

-- 2. Record, only when nothing refused.
local status = 0
if best == nil then
  status = 1
  if more then
    local window_ms = math.floor(window / 1000) + 1000
    for s = 1, nscopes do
      local rpm_key, tpm_key, tamt_key, live_key, lamt_key = scope_keys(s)
      if own_tpm[s] then
        redis.call('ZADD', tpm_key, now, id)
        redis.call('HSET', tamt_key, id, total)
        redis.call('HINCRBY', tamt_key, 'sum', total - own_tpm[s])
        redis.call('PEXPIRE', tpm_key, window_ms)
        redis.call('PEXPIRE', tamt_key, window_ms)
      end
      if own_live[s] then
        redis.call('HSET', lamt_key, id, total)
        redis.call('HINCRBY', lamt_key, 'sum', total - own_live[s])
      end
    end
    redis.call('HSET', KEYS[1], 'reserve', total)
  end
end

-- 3. What the client sees; after a refusal, as if the request were already released (as it will be).
local req, tok = rate_states(nscopes, scope_keys, scope_limits, now, window, status == 0 and id or nil)
best = best or {-1, -1, -1, -1, -1}
return {status, best[1], best[2], best[3], best[4], best[5], req[1], req[2], req[3], tok[1], tok[2], tok[3]}

-- Checks and counts every limit of one tool call, atomically, on the Redis
-- clock (one round trip; all keys share one hash tag, so one Cluster slot).
--
-- KEYS[i]: the state of limit i (a rate: the theoretical arrival time of
-- the next call, µs; a quota: a hash of window index -> units used).
-- ARGV, five per limit: kind ("r" rate, "q" quota), enforce ("1"; "0" in
-- shadow mode), a (rate: emission interval, µs; quota: window, µs), b (rate:
-- burst; quota: budget), weight (rate: 1; quota: the call's cost).
--
-- Returns {refused, then per limit: admitted (1/0), retry after (µs),
-- usage (per mille)}; refused is the index of the first enforced limit that
-- refuses (0: none). Nothing is counted unless every enforced limit admits;
-- then each limit that admits is counted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refused = 0
local out = {0}
local state = {}
for i = 1, #KEYS do
  local o = (i - 1) * 5
  local kind, enforce = ARGV[o + 1], ARGV[o + 2] == '1'
  local a, b, w = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local ok, retry, usage
  if kind == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    local new = tat + a * w
    local limit = a * b
    local ahead = new - now
    ok = ahead <= limit
    retry = ok and 0 or (ahead - limit)
    usage = math.floor(ahead * 1000 / limit)
    state[i] = {ok, new, ahead}
  else
    local window = math.floor(now / a)
    local used = tonumber(redis.call('HGET', KEYS[i], window)) or 0
    local new = used + w
    ok = new <= b
    retry = ok and 0 or ((window + 1) * a - now)
    usage = math.floor(new * 1000 / b)
    state[i] = {ok, window, a, w}
  end
  if (not ok) and enforce and refused == 0 then refused = i end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = retry
  out[#out + 1] = usage
end
out[1] = refused
if refused == 0 then
  for i = 1, #KEYS do
    local s = state[i]
    if s[1] then
      if ARGV[(i - 1) * 5 + 1] == 'r' then
        redis.call('SET', KEYS[i], string.format('%d', s[2]), 'PX', math.floor(s[3] / 1000) + 1)
      else
        redis.call('HINCRBY', KEYS[i], s[2], s[4])
        redis.call('PEXPIRE', KEYS[i], math.floor(2 * s[3] / 1000))
        if redis.call('HLEN', KEYS[i]) > 1 then
          for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
            if tonumber(f) < s[2] then redis.call('HDEL', KEYS[i], f) end
          end
        end
      end
    end
  end
end
return out

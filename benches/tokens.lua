-- wrk script for benches/load.sh: the uncached bearer path. Every request carries a
-- distinct, valid, never-seen access token from the file named by the first argument
-- (one a line). Thread k of T takes lines k+1, k+1+T, ... so no two threads share a token;
-- the requests are formatted in init, so the per-request Lua cost is one table lookup.
-- If a thread runs out it starts over (those requests would be cache hits) and counts
-- them; done() prints "tokens: used U repeated R" and load.sh refuses a round with R > 0.
--
--   wrk -tT ... -s benches/tokens.lua http://127.0.0.1:PORT/api/x -- TOKEN_FILE T
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

reqs, n, i, used, repeated = {}, 0, 0, 0, 0

function init(args)
  local t = tonumber(args[2]) or 1
  local line = 0
  for token in io.lines(args[1]) do
    if line % t == id then
      wrk.headers["Authorization"] = "Bearer " .. token
      n = n + 1
      reqs[n] = wrk.format()
    end
    line = line + 1
  end
  wrk.headers["Authorization"] = nil
  assert(n > 0, "no tokens for thread " .. id)
end

function request()
  i = i + 1
  used = used + 1
  if i > n then
    i = 1
  end
  if used > n then
    repeated = repeated + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local u, r = 0, 0
  for _, thread in ipairs(threads) do
    u = u + thread:get("used")
    r = r + thread:get("repeated")
  end
  io.write(string.format("tokens: used %d repeated %d\n", u, r))
end

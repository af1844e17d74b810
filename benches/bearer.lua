-- wrk script for benches/load.sh: the cached-bearer path. Every request carries the same
-- valid access token (read from the file named by the first argument), so after the
-- first request each one is a token-cache hit. The request is built once, in init (no
-- Lua per request, as for the public path).
--
--   wrk ... -s benches/bearer.lua http://127.0.0.1:PORT/api/x -- TOKEN_FILE
function init(args)
  local f = assert(io.open(args[1], "r"))
  local token = assert(f:read("*l"), "empty token file")
  f:close()
  wrk.headers["Authorization"] = "Bearer " .. token
end

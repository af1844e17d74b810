-- wrk script for benches/load.sh: the session-cookie path. Every request carries the
-- same session cookie (the `Cookie` header value read from the file named by the first
-- argument), as a signed-in browser would. The request is built once, in init.
--
--   wrk ... -s benches/cookie.lua http://127.0.0.1:PORT/app/x -- COOKIE_FILE
function init(args)
  local f = assert(io.open(args[1], "r"))
  local cookie = assert(f:read("*l"), "empty cookie file")
  f:close()
  wrk.headers["Cookie"] = cookie
end

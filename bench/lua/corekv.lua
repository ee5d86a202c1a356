-- wrk script for the corekv benchmarks (one script, several modes).
--
--   wrk -t2 -c64 -d10s -s bench/lua/corekv.lua http://127.0.0.1:19080 -- \
--       mode=get keys=/tmp/keys0.txt [depth=16] [value=vvvv] [setpct=10]
--
-- modes:
--   fixed   one constant request, path=... (default "/"), built once: the
--           script defines no request() for wrk then, so wrk sends its
--           prebuilt buffer and runs no Lua per request (like wrk without
--           -s); e.g. mode=fixed path=/get?key=key-1
--   static  request "/" (or path=...) every time, built by Lua per request
--   get     GET /get?key=K, K rotating through the key file
--   set     GET /set?key=K&value=V (a durable write), K rotating
--   mixed   setpct% SETs, the rest GETs, K random from the key file
-- method=post  send SETs as POST /set with a form body (large values)
-- valuesize=N   value of N bytes ("v" repeated) instead of value=...
-- depth=N  pipelining: every request() returns N requests in one write, so
--          wrk keeps N requests in flight per connection.
--
-- done() prints one machine-readable line:
--   WRK_RESULT requests=.. duration_us=.. rps=.. p50_us=.. p99_us=.. p999_us=.. ...
-- wrk's own "Non-2xx or 3xx responses" count is errors.status here.

local opts = { mode = "get", depth = "1", value = "vvvvvvvvvvvvvvvv",
               setpct = "10", path = "/", keys = "", method = "get", valuesize = "" }
local form_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local keys = {}
local nkeys = 0
local pos = 0
local batches = nil
local nbatches = 0
local bpos = 0
local depth = 1

local thread_id = 0
local threads = {}

-- setup runs in the main Lua state once per thread, before init.
function setup(thread)
   thread_id = thread_id + 1
   thread:set("tid", thread_id)
   table.insert(threads, thread)
end

local function urlencode(s)
   return (string.gsub(s, "[^%w%-%._~]", function(c)
      return string.format("%%%02X", string.byte(c))
   end))
end

local function load_keys(path)
   local f, err = io.open(path, "r")
   if not f then
      io.stderr:write("corekv.lua: cannot open key file " .. tostring(path) .. ": " .. tostring(err) .. "\n")
      os.exit(2)
   end
   for line in f:lines() do
      if #line > 0 then
         nkeys = nkeys + 1
         keys[nkeys] = urlencode(line)
      end
   end
   f:close()
   if nkeys == 0 then
      io.stderr:write("corekv.lua: key file " .. path .. " is empty\n")
      os.exit(2)
   end
end

local function one(k_is_set, key)
   if k_is_set then
      if opts.method == "post" then
         return wrk.format("POST", "/set", form_headers, "key=" .. key .. "&value=" .. opts.value)
      end
      return wrk.format("GET", "/set?key=" .. key .. "&value=" .. opts.value)
   end
   return wrk.format("GET", "/get?key=" .. key)
end

local function next_single()
   local mode = opts.mode
   if mode == "static" then
      return wrk.format("GET", opts.path)
   end
   if mode == "mixed" then
      local key = keys[math.random(nkeys)]
      return one(math.random(100) <= tonumber(opts.setpct), key)
   end
   pos = pos + 1
   if pos > nkeys then pos = 1 end
   return one(mode == "set", keys[pos])
end

function init(args)
   for _, a in ipairs(args) do
      local k, v = string.match(a, "^([%w_]+)=(.*)$")
      if k then opts[k] = v end
   end
   if opts.valuesize ~= "" then opts.value = string.rep("v", tonumber(opts.valuesize)) end
   opts.value = urlencode(opts.value)
   depth = tonumber(opts.depth) or 1
   if opts.mode == "fixed" then
      -- wrk.init formats wrk.path once after init() returns; with no global
      -- request() wrk treats the script as static and never calls into Lua
      -- per request (wrk checks for request() after init()).
      wrk.path = opts.path
      request = nil
      return
   end
   local tid = tonumber(wrk.thread:get("tid")) or 1
   math.randomseed(os.time() + tid * 7919)
   if opts.mode ~= "static" then
      load_keys(opts.keys)
      -- each thread starts at a different place in the key list
      pos = math.floor((tid - 1) * nkeys / 4) % nkeys
   end
   if depth > 1 then
      -- Pre-build pipelined batches once so request() costs nothing.
      batches = {}
      local n = (opts.mode == "static") and 1 or math.max(1, math.min(256, math.floor(nkeys / depth)))
      for b = 1, n do
         local parts = {}
         for i = 1, depth do parts[i] = next_single() end
         batches[b] = table.concat(parts)
      end
      nbatches = n
   end
end

function request()
   if batches then
      bpos = bpos + 1
      if bpos > nbatches then bpos = 1 end
      return batches[bpos]
   end
   return next_single()
end

-- wrk's latency:percentile(p) can return 0 for high p (typically when
-- pipelining): wrk's coordinated-omission correction adds synthetic samples
-- *below* the recorded minimum, and percentile() only walks [min, max], so
-- that mass is never counted. Measure the missing fraction (the largest q
-- for which percentile(q) is still non-zero) and shift p by it.
local function percentile(latency, p)
   if latency:percentile(100) > 0 then return latency:percentile(p) end
   local lo, hi = 0, 100
   for _ = 1, 40 do
      local mid = (lo + hi) / 2
      if latency:percentile(mid) > 0 then lo = mid else hi = mid end
   end
   local q = p - (100 - lo)
   if q <= 0 then return latency.min end
   return latency:percentile(q)
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   local p = { percentile(latency, 50), percentile(latency, 90), percentile(latency, 99),
               percentile(latency, 99.9) }
   io.write(string.format(
      "WRK_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f "
      .. "max_us=%.1f mean_us=%.1f "
      .. "bytes=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeout_err=%d\n",
      summary.requests, summary.duration, summary.requests / secs,
      p[1], p[2], p[3], p[4], latency.max, latency.mean,
      summary.bytes, e.status, e.connect, e.read, e.write, e.timeout))
end

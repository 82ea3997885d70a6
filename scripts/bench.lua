-- wrk script for scripts/bench (the load generator; the Python side only prepares and checks).
--
-- Chosen by the BENCH_MODE environment variable:
--   get     the URL as given (GET /healthz): one static request, no Lua per request
--   static  one fixed POST read from BENCH_REQUEST (a forged delivery): static as well
--   signed  pre-signed unique deliveries: BENCH_FILE.<thread> holds whole HTTP requests, each
--           followed by a NUL byte; sent in order, never repeated; a thread that runs out
--           stops (and says so) rather than send duplicates. BENCH_THREADS threads: none
--           sends before the last one has loaded its file (wrk starts its clock then)
-- BENCH_ADDRS="host:port,host:port" spreads the threads over several servers (thread i talks
-- to address i mod n), for several replicas in one run.
--
-- done() prints one line, `BENCH_RESULT {json}`, that scripts/bench parses.

local mode = os.getenv("BENCH_MODE") or "get"
local addrs = os.getenv("BENCH_ADDRS")

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  if addrs and addrs ~= "" then
    local list = {}
    for a in string.gmatch(addrs, "[^,]+") do list[#list + 1] = a end
    local host, port = string.match(list[(thread_count % #list) + 1], "^(.*):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  thread_count = thread_count + 1
  threads[#threads + 1] = thread
end

if mode == "static" then
  -- A raw request description: first line "METHOD PATH", then "name: value" header lines,
  -- an empty line, and the body (all of the rest, byte for byte).
  local f = assert(io.open(assert(os.getenv("BENCH_REQUEST"), "BENCH_REQUEST unset"), "rb"))
  local text = f:read("*a")
  f:close()
  local head, body = string.match(text, "^(.-)\r?\n\r?\n(.*)$")
  local first = true
  for line in string.gmatch(head, "[^\r\n]+") do
    if first then
      wrk.method, wrk.path = string.match(line, "^(%S+)%s+(%S+)$")
      first = false
    else
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
    end
  end
  wrk.body = body
end

if mode == "signed" then
  local ffi = require("ffi")
  ffi.cdef("int usleep(unsigned int usec);")
  local prefix = assert(os.getenv("BENCH_FILE"), "BENCH_FILE unset")
  local ready = prefix .. ".ready"
  local thread_total = tonumber(os.getenv("BENCH_THREADS") or "1")

  function init(args)
    reqs = {}
    sent = 0
    exhausted = 0
    local f = assert(io.open(prefix .. "." .. tid, "rb"))
    local data = f:read("*a")
    f:close()
    for req in string.gmatch(data, "([^%z]+)%z") do
      reqs[#reqs + 1] = req
    end
    available = #reqs
    -- wrk calls request() once on thread 0, from its main thread, right after this init, to
    -- check the request parses; that call must neither wait at the gate nor use a delivery.
    verifying = (tid == 0)
    -- wrk sets up threads one after another and starts each at once: the last one to load
    -- opens the gate, so no thread gets a head start outside wrk's measured time.
    if tid == thread_total - 1 then
      assert(io.open(ready, "w")):close()
    end
  end

  local open = false
  function request()
    if verifying then
      verifying = false
      return reqs[1]
    end
    while not open do
      local gate = io.open(ready, "r")
      if gate then
        gate:close()
        open = true
      else
        ffi.C.usleep(1000)
      end
    end
    sent = sent + 1
    if sent > available then
      -- Out of unique deliveries: stop this thread. wrk still wants a request for the
      -- connection that asked; it is a repeat and answered "duplicate" (not counted as
      -- accepted by the service's metrics).
      exhausted = 1
      wrk.thread:stop()
      return reqs[available]
    end
    return reqs[sent]
  end
end

function done(summary, latency, requests)
  local exhausted_threads, sent_total, available_total = 0, 0, 0
  for _, t in ipairs(threads) do
    exhausted_threads = exhausted_threads + (t:get("exhausted") or 0)
    sent_total = sent_total + math.min(t:get("sent") or 0, t:get("available") or 0)
    available_total = available_total + (t:get("available") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"threads":%d,"exhausted_threads":%d,"unique_sent":%d,"unique_available":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, #threads, exhausted_threads, sent_total, available_total))
end

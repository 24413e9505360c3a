-- wrk script for `make bench-e2e` (scripts/bench/e2e.py): orders.lua's requests (same bodies,
-- same 1,000 customers, same Authorization), and what the run's check needs:
-- - each thread appends every 202's body (order id, partition, offset) to its own file,
--   WRK_ACCEPTED_PREFIX followed by the thread's number: the check compares them with the rows;
-- - the bytes of the requests it sent (wrk reports only the bytes it read), in done().
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "orders.lua")

local accepted_prefix = assert(os.getenv("WRK_ACCEPTED_PREFIX"), "WRK_ACCEPTED_PREFIX is unset")
local threads = {}
local out = nil
local build_request = request
local report_orders = done
sent_bytes = 0 -- a global: done() reads each thread's with thread:get()

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  out = assert(io.open(accepted_prefix .. thread_number, "w"))
  -- Buffered, flushed when wrk exits (C stdio): one write per response would cost a syscall.
  out:setvbuf("full", 65536)
end

function request()
  local built = build_request()
  sent_bytes = sent_bytes + #built
  return built
end

function response(status, headers, body)
  if status == 202 then
    out:write(body, "\n")
  end
end

function done(summary, latency, requests)
  report_orders(summary, latency, requests)
  local sent = 0
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("sent_bytes")
  end
  io.write(string.format("SENT bytes=%d received=%d p90_us=%d max_us=%d\n",
    sent, summary.bytes, latency:percentile(90), latency.max))
end

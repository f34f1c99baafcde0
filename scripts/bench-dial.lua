-- wrk script for scripts/bench-simulator: POST /v1/calls/dial, each request with its
-- own Idempotency-Key (so each places a new call and is logged).
--
-- Requests are built in init(), before the clock starts, so that wrk's own Lua work
-- per request is a table lookup: with string.format per request, wrk (sharing the
-- two cores with the server) became the bottleneck. `-- RUN` gives a run id so keys
-- never repeat across wrk runs against one server. A thread wraps around after
-- PER_THREAD requests (later requests are then replays).
local PER_THREAD = 400000
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local run = args[1] or "r"
  reqs = {}
  for i = 1, PER_THREAD do
    local body = string.format('{"from_number":"+14155550100","to_number":"+1415200%04d"}', i % 10000)
    reqs[i] = wrk.format("POST", "/v1/calls/dial", {
      ["Authorization"] = "Bearer sk_bench",
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, tid, i),
    }, body)
  end
  counter = 0
end

function request()
  counter = counter + 1
  if counter > PER_THREAD then counter = 1 end
  return reqs[counter]
end

function done(summary, latency, requests)
  io.write(string.format("requests=%d non2xx=%d errors=%d rps=%.0f\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.requests / (summary.duration / 1e6)))
end

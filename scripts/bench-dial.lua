-- wrk script for scripts/bench-simulator: POST /v1/calls/dial with a unique
-- Idempotency-Key per request (so every request places a new call and is logged).
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
end

function request()
  counter = counter + 1
  local key = string.format("bench-%d-%d", tid, counter)
  local body = string.format('{"from_number":"+14155550100","to_number":"+1415200%04d"}', counter % 10000)
  local headers = {
    ["Authorization"] = "Bearer sk_bench",
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key,
  }
  return wrk.format("POST", "/v1/calls/dial", headers, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("requests=%d non2xx=%d rps=%.0f\n", summary.requests, non2xx,
    summary.requests / (summary.duration / 1e6)))
end

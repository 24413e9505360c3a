-- wrk script: POST an order body, rotating over 1,000 customers so every partition is used.
-- Optional: WRK_RATE_PER_CONNECTION_MS paces each connection (one request per that many ms),
-- which turns wrk's closed loop into a roughly fixed request rate for the latency run.
-- Optional: WRK_IDEMPOTENCY_KEY_PREFIX sends a new Idempotency-Key with each request.
-- Optional: WRK_AUTHORIZATION is sent as the Authorization header (e.g. "Bearer <token>").
local customers = 1000
local counter = 0
local pace_ms = tonumber(os.getenv("WRK_RATE_PER_CONNECTION_MS") or "0")
local key_prefix = os.getenv("WRK_IDEMPOTENCY_KEY_PREFIX") or ""
local authorization = os.getenv("WRK_AUTHORIZATION") or ""

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"customer_id":"bench-%d","items":[{"sku":"sku-%d","quantity":%d,"unit_price":"%d.25"},' ..
    '{"sku":"gift-wrap","quantity":1,"unit_price":"2.50"}],"currency":"EUR"}',
    counter % customers, counter % 97, 1 + counter % 5, counter % 50)
  local headers = nil
  if key_prefix ~= "" then
    headers = {["Content-Type"] = "application/json",
               ["Idempotency-Key"] = key_prefix .. "-" .. counter}
    if authorization ~= "" then
      headers["Authorization"] = authorization
    end
  end
  return wrk.format(nil, nil, headers, body)
end

function delay()
  return pace_ms
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end

-- wrk script: POST /oauth2/token bodies from a pool of pre-minted requests, one per line
-- ("authorization<TAB>form body"), rotating through the pool; each thread starts at its own offset.
-- Env: POOL (file), TOKEN_PATH (default /oauth2/token). Prints one JSON line of results at the end.
local pool_file = os.getenv("POOL")
local path = os.getenv("TOKEN_PATH") or "/oauth2/token"
local requests = {}
local counter = 0
local thread_index = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_index)
  thread_index = thread_index + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(pool_file) do
    local auth, body = line:match("^([^\t]*)\t(.*)$")
    if auth then
      local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
      if auth ~= "" then headers["Authorization"] = auth end
      table.insert(requests, wrk.format("POST", path, headers, body))
    end
  end
  counter = (id or 0) * 7919
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests_)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

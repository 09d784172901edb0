-- wrk script of bench/soak.sh: keep-alive load at a set pace, counted exactly.
--   wrk -t1 -cN -dS --timeout 30s -s soak_wrk.lua URL -- STATS_FILE DELAY_MS STOP_AT
-- From STOP_AT (epoch seconds, a little before wrk's own end) no new request starts, so that
-- wrk exits with no request in flight and every request sent has had its answer.
-- sent = request() calls (each is written at once); ok = 200; injected = 500 with
-- X-Injected: 1 (1% of requests ask for it with X-Soak-Fail: 500); bad = any other status.
-- Socket errors come from wrk's own summary in done(). The thread writes its counts to
-- STATS_FILE once a second; done() writes the final ones with the errors.

stats_file, delay_ms, stop_at = "/dev/null", 10, math.huge
local plain, marked
-- sent starts at -1: wrk calls request() once more to check the request it makes
-- (script_verify_request in wrk.c, on the first thread); this script runs with -t1.
sent, ok, injected, bad, bad_statuses = -1, 0, 0, 0, ""
local last = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  stats_file = args[1] or stats_file
  delay_ms = tonumber(args[2] or delay_ms)
  stop_at = tonumber(args[3] or stop_at)
  plain = wrk.format("GET", "/wrk")
  marked = wrk.format("GET", "/wrk?inject=500", { ["Host"] = wrk.headers["Host"], ["X-Soak-Fail"] = "500" })
end

function delay()
  if os.time() >= stop_at then
    return 3600000
  end
  return math.random(math.floor(delay_ms / 2), delay_ms + math.floor(delay_ms / 2))
end

function request()
  sent = sent + 1
  if math.random() < 0.01 then
    return marked
  end
  return plain
end

local function write(f, extra)
  local h = io.open(f .. ".tmp", "w")
  if h then
    h:write(string.format('{"sent": %d, "ok": %d, "injected": %d, "bad": %d, "bad_statuses": "%s"%s}\n',
      sent, ok, injected, bad, bad_statuses, extra or ""))
    h:close()
    os.rename(f .. ".tmp", f)
  end
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 500 and (headers["X-Injected"] == "1" or headers["x-injected"] == "1") then
    injected = injected + 1
  else
    bad = bad + 1
    if #bad_statuses < 200 then
      bad_statuses = bad_statuses .. status .. " "
    end
  end
  local now = os.time()
  if now ~= last then
    last = now
    write(stats_file)
  end
end

function done(summary, latency, requests)
  local t = threads[1]
  sent, ok, injected, bad = t:get("sent"), t:get("ok"), t:get("injected"), t:get("bad")
  bad_statuses = t:get("bad_statuses")
  local e = summary.errors
  write(t:get("stats_file"), string.format(
    ', "final": true, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}',
    e.connect, e.read, e.write, e.timeout))
end

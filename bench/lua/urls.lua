-- wrk script that sends every path of a list file exactly once, in order, then ends the run
-- (run it with one thread: wrk -t1 ... -s urls.lua URL -- LISTFILE). Used to fill caches and
-- for the Zipf workload, so every server gets the same request sequence. Run by
-- bench/harness/load.py wrk_list(), which stops wrk when the last answer is in.
local reqs, n = {}, 0
sent, granted, got, bad = 0, 0, 0, 0  -- globals, so that done() can read them (thread:get)

init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format(nil, line)
  end
end

-- wrk calls delay() before each request(); once n requests have been granted the
-- connections just wait for the end of the run.
delay = function()
  if granted >= n then return 3600000 end
  granted = granted + 1
  return 0
end

request = function()
  -- wrk calls request() once before the run to check it (no delay() before that call).
  if granted == 0 then return reqs[1] end
  sent = sent + 1
  return reqs[sent] or reqs[n]
end

response = function(status, headers, body)
  got = got + 1
  if status ~= 200 then bad = bad + 1 end
  if got == n then
    -- wrk runs for -d whatever happens; the harness reads this line and ends the run with
    -- SIGINT. (A request lost to a socket error never gets here: the run then lasts -d and
    -- the harness reports got < n.)
    io.write("URLSDONE\n")
    io.flush()
  end
end

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

done = function(summary, latency, requests)
  local s, g, b = 0, 0, 0
  for _, t in ipairs(threads) do
    s, g, b = s + t:get("sent"), g + t:get("got"), b + t:get("bad")
  end
  io.write(string.format('URLSJSON {"sent":%d,"got":%d,"bad":%d}\n', s, g, b))
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end

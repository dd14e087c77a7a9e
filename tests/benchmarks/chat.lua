-- wrk script of tests/benchmarks/perf.py: OpenAI chat completions, every answer checked.
--
--   wrk -s chat.lua URL -- MODE STREAM KEY MODEL NONCE [API]
--
-- MODE "unique": every request asks a question never asked before (cache misses);
--      "same":   every request asks the same question (cache hits after the first).
-- NONCE: a string of this run's own, so no two runs ask the same "unique" question.
-- STREAM "1": stream=true, the answer must be an event stream ending in [DONE].
-- API "responses": OpenAI Responses API bodies (URL .../v1/responses, not streamed);
--     the answer must be a completed response with output. Default "chat".
-- An answer counts as bad unless its status is 200 and its body is a complete chat
-- completion. done() prints one line, "RESULT {json}", that perf.py reads.

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  mode, stream, key, model, nonce = args[1], args[2] == "1", args[3], args[4], args[5]
  api = args[6] or "chat"
  n, bad, good, chunks = 0, 0, 0, 0
  headers = { ["Content-Type"] = "application/json" }
  if key ~= nil and key ~= "" and key ~= "-" then
    headers["Authorization"] = "Bearer " .. key
  end
  same_body = body_for("the same question every time")
end

function body_for(question)
  if api == "responses" then
    return '{"model":"' .. model .. '","input":"' .. question .. '","max_output_tokens":256}'
  end
  local tail = ""
  if stream then tail = ',"stream":true' end
  return '{"model":"' .. model .. '","messages":[{"role":"user","content":"' .. question ..
    '"}],"max_tokens":256' .. tail .. '}'
end

function request()
  n = n + 1
  local body = same_body
  if mode == "unique" then
    body = body_for("benchmark question " .. nonce .. " " .. id .. " " .. n)
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  local ok = status == 200
  if ok and stream then
    local events = 0
    for _ in body:gmatch('data: {"id"') do events = events + 1 end
    ok = events > 0 and body:find("data: [DONE]", 1, true) ~= nil
    if ok then chunks = chunks + events end
  elseif ok and api == "responses" then
    ok = body:find('"object":"response"', 1, true) ~= nil
      and body:find('"status":"completed"', 1, true) ~= nil
      and body:find('"output_text"', 1, true) ~= nil
  elseif ok then
    ok = body:find('"chat.completion"', 1, true) ~= nil and body:find('"content"', 1, true) ~= nil
  end
  if ok then good = good + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local total_bad, total_good, total_chunks = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
    total_good = total_good + thread:get("good")
    total_chunks = total_chunks + thread:get("chunks")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"good":%d,"bad":%d,"chunks":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, total_good, total_bad, total_chunks,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end

-- wrk script for bench/run.  One thread (-t1) per wrk process.
--
--   BENCH_MODE=heartbeat  POST {"user_id":"u<n>"} (Content-Type
--                         application/json) to the URL's path, cycling
--                         through BENCH_IDS prebuilt requests: ids 1..BENCH_IDS,
--                         or, with BENCH_POP=N, BENCH_IDS ids drawn at random
--                         (fixed seed) from 1..N; with BENCH_SESSION=<prefix>,
--                         each body also names the user's session:
--                         {"user_id":"u<n>","session_id":"<prefix>u<n>"};
--                         with BENCH_ROOMS=R, the k-th request goes to the
--                         room r<(k-1) % R + 1> (query argument "room", for
--                         presence_room $arg_room): R rooms in turn, ids
--                         1..BENCH_IDS spread over them, the same users in
--                         the same room every time round
--   BENCH_MODE=get        GET the URL's path (BENCH_INM: an If-None-Match value)
--
-- done() prints one machine-readable line, "BENCH key=value ...", that
-- bench/run reads; wrk's own summary is printed as usual above it.

local mode = os.getenv("BENCH_MODE") or "get"

if mode == "heartbeat" then
    local n   = tonumber(os.getenv("BENCH_IDS") or "10000")
    local pop = tonumber(os.getenv("BENCH_POP") or "0")
    local sid = os.getenv("BENCH_SESSION") or ""
    local rooms = tonumber(os.getenv("BENCH_ROOMS") or "0")
    local reqs, i = {}, 0

    function init(args)
        local headers = { ["Content-Type"] = "application/json" }
        local sep = wrk.path:find("?", 1, true) and "&" or "?"
        math.randomseed(4242)
        for k = 1, n do
            local path = wrk.path
            if rooms > 0 then
                path = path .. sep .. "room=r" .. ((k - 1) % rooms + 1)
            end
            local id = k
            if pop > 0 then id = math.random(pop) end
            local body = '{"user_id":"u' .. id .. '"'
            if sid ~= "" then
                body = body .. ',"session_id":"' .. sid .. 'u' .. id .. '"'
            end
            reqs[k] = wrk.format("POST", path, headers, body .. "}")
        end
    end

    function request()
        i = i % n + 1
        return reqs[i]
    end

else
    -- a fixed request: wrk builds it once, no Lua per request
    wrk.method = "GET"
    local inm = os.getenv("BENCH_INM")
    if inm and inm ~= "" then
        wrk.headers["If-None-Match"] = inm
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f"
        .. " connect=%d read=%d write=%d timeout=%d status=%d\n",
        summary.requests, summary.duration,
        latency:percentile(50), latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.timeout, e.status))
end

-- wrk script for tools/soak: the load, and a count of every answer by
-- status code.
--
--   SOAK_MODE=heartbeat  POST {"user_id":"u<n>"} (application/json) to the
--                        URL's path, n cycling over 1..SOAK_IDS (each wrk
--                        thread starts at its own offset)
--   SOAK_MODE=get        GET the URL's path
--   SOAK_ROOMS=N         (N > 1) spread the requests over N rooms: the
--                        path gets ?room=r<k>, k = n % N for a heartbeat,
--                        each room in turn for a listing
--   SOAK_OUT=file        where done() writes its figures, one per line:
--                          status <code> <count>
--                          bad_body <count>   (a 200 that is not a JSON
--                                              object, a 503/504 without the
--                                              module's error code)
--                          requests <n>, duration_us <n>
--                          errors <connect> <read> <write> <timeout> <status>
--                          latency <mean_us> <p50_us> <p99_us> <p999_us> <max_us>

local mode = os.getenv("SOAK_MODE") or "get"
local ids  = tonumber(os.getenv("SOAK_IDS") or "3000")
local rooms = tonumber(os.getenv("SOAK_ROOMS") or "1")

-- the path of room k (0 .. rooms - 1); the path alone with one room
local function path(k)
    if rooms <= 1 then return wrk.path end
    return wrk.path .. "?room=r" .. (k % rooms)
end

local threads = {}
local tid = 0

function setup(thread)
    tid = tid + 1
    thread:set("tid", tid)
    table.insert(threads, thread)
end

counts = {}
bad_body = 0

local reqs, i = {}, 0

function init(args)
    if mode == "heartbeat" then
        local headers = { ["Content-Type"] = "application/json" }
        for k = 1, ids do
            reqs[k] = wrk.format("POST", path(k), headers,
                                 '{"user_id":"u' .. k .. '"}')
        end
        i = ((tid or 1) - 1) * 997 % ids
    else
        for k = 1, math.max(rooms, 1) do
            reqs[k] = wrk.format("GET", path(k - 1))
        end
    end
end

function request()
    i = i % #reqs + 1
    return reqs[i]
end

function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
    body = body or ""
    if status == 200 then
        if body:sub(1, 1) ~= "{" then bad_body = bad_body + 1 end
    elseif status == 503 then
        if not body:find('"error":"redis_unavailable"', 1, true) then
            bad_body = bad_body + 1
        end
    elseif status == 504 then
        if not body:find('"error":"redis_timeout"', 1, true) then
            bad_body = bad_body + 1
        end
    end
end

function done(summary, latency, requests)
    local total, bad = {}, 0
    for _, t in ipairs(threads) do
        for code, n in pairs(t:get("counts") or {}) do
            total[code] = (total[code] or 0) + n
        end
        bad = bad + (t:get("bad_body") or 0)
    end

    local out = assert(io.open(os.getenv("SOAK_OUT") or "/dev/stdout", "w"))
    local codes = {}
    for code in pairs(total) do table.insert(codes, code) end
    table.sort(codes)
    for _, code in ipairs(codes) do
        out:write(string.format("status %d %d\n", code, total[code]))
    end
    local e = summary.errors
    out:write(string.format("bad_body %d\n", bad))
    out:write(string.format("requests %d\n", summary.requests))
    out:write(string.format("duration_us %d\n", summary.duration))
    out:write(string.format("errors %d %d %d %d %d\n",
                            e.connect, e.read, e.write, e.timeout, e.status))
    out:write(string.format("latency %.0f %.0f %.0f %.0f %.0f\n",
                            latency.mean, latency:percentile(50),
                            latency:percentile(99), latency:percentile(99.9),
                            latency.max))
    out:close()
end

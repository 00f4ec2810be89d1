-- The do-it-yourself nginx peer: lua-nginx-module + lua-resty-redis
-- (Debian's libnginx-mod-http-lua and lua-nginx-redis, loaded as
-- "nginx.redis"), written the way a careful user would write it by hand
-- to be as cheap as possible, with the module's data model
-- (ngx_presence_redis.c): one sorted set per room, a member per user whose
-- score is the time its heartbeat expires, in ms.  Same HTTP API and JSON
-- shapes as the module for what the benchmark calls (a heartbeat's
-- "sessions" aside: this peer has no sessions); the room is fixed per
-- configuration.
--
-- Every request is one round trip to Redis: plain commands pipelined on one
-- cosocket (init_pipeline/commit_pipeline), taken from and given back to the
-- cosocket keepalive pool.
--
--   heartbeat  ZREMRANGEBYSCORE key -inf <now>   (the expired users; nothing
--                                                 to remove costs O(log N))
--              ZADD key <now + ttl> <user>
--              PEXPIRE key <ttl>                 (an idle room disappears)
--              ZCARD key                         (the count, after this one)
--   listing    ZREMRANGEBYSCORE key -inf <now>
--              ZCARD key
--              ZREVRANGE key 0 <limit - 1>       (the most recently seen)
--              then sorted bytewise here, in Lua, by a merge sort that
--              LuaJIT compiles: its table.sort is C calling back through the
--              Lua C API, never compiled (about 230 us for 1,000 ids here,
--              against about 55 us for msort below)
--
-- Why this is the cheapest: no Lua script in Redis (a script call costs
-- Redis its Lua VM, and a script's reply built from a Lua table; the
-- listing as a script cost Redis about three times a plain ZREVRANGE), and
-- no TIME call: <now> is nginx's cached clock, ngx.now() (ms resolution,
-- updated once per event loop pass), so the nginx hosts' clocks must agree
-- (NTP), as with any client-side time.  Each command is O(log N), the
-- listing O(log N + limit).  A ZCOUNT of the live scores could stand for
-- the prune and the ZCARD, but then nothing would remove the expired users
-- of a room that is never listed; a MULTI/EXEC around the pipeline would
-- cost Redis two commands more for an atomicity the count does not need.
--
-- nginx.conf (bench/run writes it):
--   init_by_lua_block { require("presence_peer").configure{ port = 6379, ttl = 60 } }
--   location = /api/heartbeat { content_by_lua_block { require("presence_peer").heartbeat() } }
--   location = /api/online    { content_by_lua_block { require("presence_peer").online() } }

local redis = require "nginx.redis"   -- 0.27: set_timeout, no set_timeouts
local cjson = require "cjson.safe"

local ngx = ngx
local concat, type = table.concat, type
local floor, format = math.floor, string.format

local _M = {}

local conf = {
    host = "127.0.0.1", port = 6379, timeout = 1000,
    prefix = "presence:", room = "global", ttl = 10, limit = 1000,
    pool_size = 128, idle_timeout = 60000,
}

local key, ttl_ms, ttl_arg, last_arg, json_room

function _M.configure(opts)
    for k, v in pairs(opts or {}) do conf[k] = v end
    key = conf.prefix .. "{" .. conf.room .. "}"
    ttl_ms = conf.ttl * 1000
    ttl_arg = format("%d", ttl_ms)
    last_arg = format("%d", conf.limit - 1)
    json_room = cjson.encode(conf.room)
end

local function send(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body)
    return ngx.exit(status)
end

local function fail(status, code, message)
    return send(status, cjson.encode({ error = code, message = message }))
end

-- a[1..n] sorted bytewise (Lua's < on strings), bottom-up merge sort;
-- returns the sorted table (a or the other buffer)
local function msort(a, n)
    local b, w = {}, 1
    while w < n do
        local i = 1
        while i <= n do
            local m, e = i + w, i + 2 * w
            if m > n + 1 then m = n + 1 end
            if e > n + 1 then e = n + 1 end
            local l, r, k = i, m, i
            while l < m and r < e do
                local x, y = a[l], a[r]
                if y < x then b[k] = y; r = r + 1 else b[k] = x; l = l + 1 end
                k = k + 1
            end
            while l < m do b[k] = a[l]; l = l + 1; k = k + 1 end
            while r < e do b[k] = a[r]; r = r + 1; k = k + 1 end
            i = e
        end
        a, b = b, a
        w = w * 2
    end
    return a
end

-- nginx's cached clock in whole ms
local function now_ms()
    return floor(ngx.now() * 1000)
end

-- a connection from the pool (or a new one) with a pipeline begun; or nil
-- and a status to answer
local function begin(n)
    local red = redis:new()
    red:set_timeout(conf.timeout)
    local ok, err = red:connect(conf.host, conf.port)
    if not ok then
        ngx.log(ngx.ERR, "redis connect: ", err)
        return nil, 503
    end
    red:init_pipeline(n)
    return red
end

-- sends the pipeline, reads its replies; the replies, or nil and a status
local function commit(red, what)
    local res, err = red:commit_pipeline()
    if res then
        for i = 1, #res do
            local r = res[i]
            if type(r) == "table" and r[1] == false then
                res, err = nil, r[2]
                break
            end
        end
    end
    if not res then
        ngx.log(ngx.ERR, "redis ", what, ": ", err)
        red:close()
        return nil, (err == "timeout") and 504 or 503
    end
    red:set_keepalive(conf.idle_timeout, conf.pool_size)
    return res
end

local function redis_error(status)
    if status == 504 then
        return fail(504, "redis_timeout", "Redis did not answer in time.")
    end
    ngx.header["Retry-After"] = "1"
    return fail(503, "redis_unavailable", "Redis is not available.")
end

local function valid_id(s)
    return type(s) == "string" and #s > 0 and #s <= 128
           and not s:find("[%z\1-\31\127]")
end

function _M.heartbeat()
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "POST"
        return fail(405, "method_not_allowed", "Use POST.")
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    local obj = body and cjson.decode(body)
    if type(obj) ~= "table" then
        return fail(400, "invalid_json", "The body is not a JSON object.")
    end
    local user = obj.user_id
    if not valid_id(user) then
        return fail(400, "invalid_user_id", "The user id is not valid.")
    end
    local red, status = begin(4)
    if not red then return redis_error(status) end
    local now = now_ms()
    red:zremrangebyscore(key, "-inf", format("%d", now))
    red:zadd(key, format("%d", now + ttl_ms), user)
    red:pexpire(key, ttl_arg)
    red:zcard(key)
    local res
    res, status = commit(red, "heartbeat")
    if not res then return redis_error(status) end
    return send(200, concat({
        '{"user_id":', cjson.encode(user), ',"room":', json_room,
        ',"ttl":', conf.ttl, ',"online":', res[4], '}' }))
end

function _M.online()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx.header["Allow"] = "GET, HEAD"
        return fail(405, "method_not_allowed", "Use GET.")
    end
    local listed = conf.limit > 0
    local red, status = begin(listed and 3 or 2)
    if not red then return redis_error(status) end
    red:zremrangebyscore(key, "-inf", format("%d", now_ms()))
    red:zcard(key)
    if listed then red:zrevrange(key, 0, last_arg) end
    local res
    res, status = commit(red, "online")
    if not res then return redis_error(status) end
    local users = res[3] or {}
    users = msort(users, #users)   -- bytewise, as the module sorts
    -- written in the module's key order; this cjson writes {} for an
    -- empty table, so an empty list is spelled out
    return send(200, concat({
        '{"room":', json_room, ',"ttl":', conf.ttl, ',"count":', res[2],
        ',"users":', #users > 0 and cjson.encode(users) or '[]', '}' }))
end

return _M

-- The do-it-yourself nginx peer: lua-nginx-module + lua-resty-redis
-- (Debian's libnginx-mod-http-lua and lua-nginx-redis, loaded as
-- "nginx.redis"), with the module's data model (ngx_presence_redis.c): one
-- sorted set per room, scores in ms by Redis's clock, one script per
-- operation called with EVALSHA (EVAL on NOSCRIPT), connections kept in
-- the cosocket keepalive pool.  Same HTTP API and JSON shapes as the module
-- for what the benchmark calls; the room is fixed per configuration.
--
-- nginx.conf (bench/run writes it):
--   init_by_lua_block { require("presence_peer").configure{ port = 6379, ttl = 60 } }
--   location = /api/heartbeat { content_by_lua_block { require("presence_peer").heartbeat() } }
--   location = /api/online    { content_by_lua_block { require("presence_peer").online() } }

local redis = require "nginx.redis"   -- 0.27: set_timeout, no set_timeouts
local cjson = require "cjson.safe"

local ngx = ngx
local concat, sort, tonumber, type = table.concat, table.sort, tonumber, type

local _M = {}

local conf = {
    host = "127.0.0.1", port = 6379, timeout = 1000,
    prefix = "presence:", room = "global", ttl = 10, limit = 1000,
    pool_size = 128, idle_timeout = 60000,
}

local NOW = [[
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
]]

local scripts = {
    heartbeat = NOW .. [[
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
]],
    online = NOW .. [[
local limit = tonumber(ARGV[1])
local users = {}
if limit > 0 then
  users = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1)
end
return {redis.call('ZCARD', KEYS[1]), users}
]],
}

local sha = {}
local key, ttl_ms, json_room

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function _M.configure(opts)
    for k, v in pairs(opts or {}) do conf[k] = v end
    for name, src in pairs(scripts) do sha[name] = hex(ngx.sha1_bin(src)) end
    key = conf.prefix .. "{" .. conf.room .. "}"
    ttl_ms = tostring(conf.ttl * 1000)
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

-- runs one script; returns its result, or nil and a status to answer
local function run(name, ...)
    local red = redis:new()
    red:set_timeout(conf.timeout)
    local ok, err = red:connect(conf.host, conf.port)
    if not ok then
        ngx.log(ngx.ERR, "redis connect: ", err)
        return nil, 503
    end
    local res
    res, err = red:evalsha(sha[name], 1, key, ...)
    if not res and err and err:find("NOSCRIPT", 1, true) then
        res, err = red:eval(scripts[name], 1, key, ...)
    end
    if not res then
        ngx.log(ngx.ERR, "redis ", name, ": ", err)
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
    local n, status = run("heartbeat", user, ttl_ms)
    if not n then return redis_error(status) end
    return send(200, concat({
        '{"user_id":', cjson.encode(user), ',"room":', json_room,
        ',"ttl":', conf.ttl, ',"online":', n, '}' }))
end

function _M.online()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx.header["Allow"] = "GET, HEAD"
        return fail(405, "method_not_allowed", "Use GET.")
    end
    local res, status = run("online", conf.limit)
    if not res then return redis_error(status) end
    local users = res[2]
    sort(users)   -- bytewise: nginx workers run in the C locale
    -- written in the module's key order; this cjson writes {} for an
    -- empty table, so an empty list is spelled out
    return send(200, concat({
        '{"room":', json_room, ',"ttl":', conf.ttl, ',"count":', res[1],
        ',"users":', #users > 0 and cjson.encode(users) or '[]', '}' }))
end

return _M

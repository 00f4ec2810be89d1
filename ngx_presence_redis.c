
/*
 * ngx_http_presence_module, the Redis side: a worker's context, the
 * scripts of the data model and the commands that run them.
 *
 * A worker holds one context (ngx_presence_redis_t) and, in it, one
 * connection per Redis it talks to (ngx_presence_redis_conn.c).  A
 * command is written only to a connection whose handshake has succeeded,
 * waits in the connection's queue until then, and is bounded by a timer
 * of the request that sent it: hiredis 0.14 has no timeouts of its own.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_sha1.h>

#include "ngx_presence_redis.h"


static ngx_presence_cmd_t *ngx_presence_redis_cmd(ngx_presence_redis_t *rds,
    ngx_uint_t script, ngx_str_t *key, ngx_str_t *args, ngx_uint_t nargs,
    ngx_presence_reply_pt handler, void *data, ngx_log_t *log);
static ngx_presence_cmd_t *ngx_presence_redis_submit(ngx_presence_cmd_t *cmd);
static ngx_int_t ngx_presence_redis_unavailable(ngx_presence_conn_t *conn);
static ngx_int_t ngx_presence_redis_send(ngx_presence_cmd_t *cmd);
static ngx_int_t ngx_presence_redis_send_asking(ngx_presence_cmd_t *cmd,
    redisAsyncContext *ac);
static void ngx_presence_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_presence_redis_refused(ngx_presence_cmd_t *cmd);
static ngx_int_t ngx_presence_redis_noscript(ngx_presence_cmd_t *cmd,
    redisReply *reply);
static ngx_int_t ngx_presence_redis_readonly(ngx_presence_cmd_t *cmd,
    redisReply *reply);
static void ngx_presence_redis_send_queue(ngx_presence_conn_t *conn,
    ngx_queue_t *queue);
static char *ngx_presence_redis_parse_addrs(ngx_conf_t *cf,
    ngx_array_t **addrs, ngx_str_t *values, ngx_uint_t n, char *directive,
    char *what);
static char *ngx_presence_redis_parse_addr(ngx_conf_t *cf,
    ngx_presence_addr_t *addr, ngx_str_t *value, char *directive,
    ngx_uint_t unix_ok);


/*
 * The data model (docs/design.md).  KEYS[1], the room: a sorted set of
 * users, each scored with the moment, by the Redis server's clock, at
 * which the user's last session ends.  KEYS[2], the room's sessions: a
 * hash of user -> the user's named sessions, "<id>\n<ends>\n" each, where
 * a negative end is a session on its way out (a leave with a grace).  A
 * user who only ever heartbeats without a session_id has one session,
 * the default one, and no field in KEYS[2] at all: the room alone says
 * all there is, and costs what it did before sessions.
 */

/*
 * Every script starts here: the time, and the users whose last session
 * has ended pruned from the room and from the sessions.  Numbers go to
 * Redis formatted as integers: a Lua number as an argument is printed as
 * a float, which took a tenth of Redis's time per heartbeat.
 *
 * Each user who comes or goes is an event for the live streams, event()
 * below; a user pruned here goes with the reason "leave" when the
 * session that ended last was a leave's grace, "timeout" otherwise.
 */

#define NGX_PRESENCE_LUA_NOW                                                  \
    "local t = redis.call('TIME')\n"                                          \
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"                     \
    NGX_PRESENCE_LUA_EVENTS                                                   \
    "local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',"               \
    " string.format('%d', now))\n"                                            \
    "if #gone > 0 then\n"                                                     \
    "  local why = {}\n"                                                      \
    "  for i, u in ipairs(gone) do\n"                                         \
    "    local v, last = redis.call('HGET', KEYS[2], u), 0\n"                 \
    "    why[i] = 'T'\n"                                                      \
    "    for e in string.gmatch(v or '', '[^\\n]*\\n([^\\n]*)\\n') do\n"      \
    "      e = tonumber(e)\n"                                                 \
    "      if math.abs(e) >= last then\n"                                     \
    "        last = math.abs(e)\n"                                            \
    "        why[i] = e < 0 and 'L' or 'T'\n"                                 \
    "      end\n"                                                             \
    "    end\n"                                                               \
    "  end\n"                                                                 \
    "  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf',"                       \
    " string.format('%d', now))\n"                                            \
    "  for i = 1, #gone, 1000 do\n"                                           \
    "    redis.call('HDEL', KEYS[2],"                                         \
    " unpack(gone, i, math.min(i + 999, #gone)))\n"                           \
    "  end\n"                                                                 \
    "  local n = redis.call('ZCARD', KEYS[1])\n"                              \
    "  for i, u in ipairs(gone) do event(why[i], u, n + #gone - i) end\n"     \
    "end\n"

/*
 * The events of a script, published at its end on the room's channel
 * KEYS[1]..":e", one line each: "<id> <J|L|T> <count> <user>\n" (a user
 * id has no control characters).  KEYS[3] holds the room's last id.  An
 * id is never below the Redis clock in ms: when the key has expired, the
 * ids still go on increasing, and a snapshot of a room without the key
 * takes the clock as its id and stores it, with the life an event's id
 * would have (ngx_presence_scripts[ONLINE]).
 */

#define NGX_PRESENCE_LUA_EVENTS                                               \
    "local ev = {}\n"                                                         \
    "local function event(kind, user, count)\n"                               \
    "  ev[#ev + 1] = kind .. ' ' .. string.format('%d', count) .. ' '"        \
    " .. user .. '\\n'\n"                                                     \
    "end\n"                                                                   \
    "local function publish()\n"                                              \
    "  if #ev == 0 then return end\n"                                         \
    "  local id = math.max(tonumber(redis.call('GET', KEYS[3]) or 0), now)\n" \
    "  for i = 1, #ev do\n"                                                   \
    "    ev[i] = string.format('%d', id + i) .. ' ' .. ev[i]\n"               \
    "  end\n"                                                                 \
    "  redis.call('SET', KEYS[3], string.format('%d', id + #ev), 'PX',"       \
    " string.format('%d', id + #ev - now + " NGX_PRESENCE_VERSION_TTL "))\n"  \
    "  redis.call('PUBLISH', KEYS[1] .. ':e', table.concat(ev))\n"            \
    "end\n"

/*
 * The last id lives a minute after the clock has passed it: ids stay above
 * those sent before, even after a burst of more events than milliseconds
 * (a prune of a million users) took them ahead of the clock
 */
#define NGX_PRESENCE_VERSION_TTL  "60000"

/*
 * A user's sessions: load() the live ones of a field; pack() them into
 * what the user's field and score become (the field is false for one
 * default session that is not ending: it needs none), with how many are
 * not on their way out; store() writes that back.
 */

#define NGX_PRESENCE_LUA_SESSIONS                                             \
    "local function load(v)\n"                                                \
    "  local s = {}\n"                                                        \
    "  for id, e in string.gmatch(v, '([^\\n]*)\\n([^\\n]*)\\n') do\n"        \
    "    e = tonumber(e)\n"                                                   \
    "    if math.abs(e) > now then s[#s + 1] = {id, e} end\n"                 \
    "  end\n"                                                                 \
    "  return s\n"                                                            \
    "end\n"                                                                   \
    "local function pack(s)\n"                                                \
    "  local last, n, v = 0, 0, {}\n"                                         \
    "  for _, x in ipairs(s) do\n"                                            \
    "    last = math.max(last, math.abs(x[2]))\n"                             \
    "    if x[2] > 0 then n = n + 1 end\n"                                    \
    "    v[#v + 1] = x[1] .. '\\n' .. string.format('%d', x[2]) .. '\\n'\n"   \
    "  end\n"                                                                 \
    "  if #s == 1 and s[1][1] == '' and s[1][2] > 0 then v = false\n"         \
    "  else v = table.concat(v) end\n"                                        \
    "  return n, last, v\n"                                                   \
    "end\n"                                                                   \
    "local function store(user, s)\n"                                         \
    "  if #s == 0 then\n"                                                     \
    "    redis.call('ZREM', KEYS[1], user)\n"                                 \
    "    redis.call('HDEL', KEYS[2], user)\n"                                 \
    "    return 0\n"                                                          \
    "  end\n"                                                                 \
    "  local n, last, v = pack(s)\n"                                          \
    "  redis.call('ZADD', KEYS[1], string.format('%d', last), user)\n"        \
    "  if v then\n"                                                           \
    "    redis.call('HSET', KEYS[2], user, v)\n"                              \
    "  else\n"                                                                \
    "    redis.call('HDEL', KEYS[2], user)\n"                                 \
    "  end\n"                                                                 \
    "  return n\n"                                                            \
    "end\n"

/*
 * A key's expiry only ever moves later: a location with a short
 * presence_ttl must not end a room that others keep alive longer (PTTL
 * is -1 for a key that has just been made).
 */

#define NGX_PRESENCE_LUA_EXTEND                                               \
    "local function extend(key, ttl)\n"                                       \
    "  if redis.call('PTTL', key) < ttl then\n"                               \
    "    redis.call('PEXPIRE', key, string.format('%d', ttl))\n"              \
    "  end\n"                                                                 \
    "end\n"

static ngx_str_t  ngx_presence_scripts[NGX_PRESENCE_NSCRIPTS] = {

    /*
     * heartbeat, of one user or of several in the room: ARGV[1] ttl in
     * ms, ARGV[2] most sessions (a new session beyond them replaces the
     * one seen least recently), ARGV[3] how long the keys live after it
     * (longer than the ttl: a key that expires takes its users with it
     * unannounced, so the sweeps must find them first), then a user and
     * a session ('' for the default one) each.  Returns {count, sessions
     * of the first user, of the second...}.  Whatever the number of
     * users, Redis is asked the same few commands: their scores (ZMSCORE;
     * a ZSCORE each before Redis 6.2) and, when the sessions hash exists,
     * their fields (HMGET); then one ZADD and at most one HSET and one
     * HDEL write them back.  A user who comes twice in one call is seen
     * as the first heartbeat left it.
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               NGX_PRESENCE_LUA_SESSIONS
               NGX_PRESENCE_LUA_EXTEND
               "local ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
               "local life, users = tonumber(ARGV[3]), {}\n"
               "for a = 4, #ARGV, 2 do users[#users + 1] = ARGV[a] end\n"
               "local hv, zs = {}, redis.pcall('ZMSCORE', KEYS[1],"
               " unpack(users))\n"
               "if zs.err then\n"
               "  zs = {}\n"
               "  for i, u in ipairs(users) do\n"
               "    zs[i] = redis.call('ZSCORE', KEYS[1], u)\n"
               "  end\n"
               "end\n"
               "if redis.call('EXISTS', KEYS[2]) == 1 then\n"
               "  hv = redis.call('HMGET', KEYS[2], unpack(users))\n"
               "end\n"
               "local count = redis.call('ZCARD', KEYS[1])\n"
               "local cur, seen, out = {}, {}, {0}\n"
               "for i, user in ipairs(users) do\n"
               "  local id, c = ARGV[2 * i + 3], cur[user]\n"
               "  if not c then\n"
               "    c = {hv[i], zs[i]}\n"
               "    cur[user] = c\n"
               "    seen[#seen + 1] = user\n"
               "  end\n"
               "  local v, old, n = c[1], c[2], 1\n"
               "  if v or id ~= '' then\n"
               "    local s = {}\n"
               "    if v then\n"
               "      s = load(v)\n"
               "    elseif old then\n"
               "      s[1] = {'', tonumber(old)}\n"
               "    end\n"
               "    local this\n"
               "    for _, x in ipairs(s) do\n"
               "      if x[1] == id then this = x end\n"
               "    end\n"
               "    if not this then\n"
               "      if #s >= most then\n"
               "        local o = 1\n"
               "        for i = 2, #s do\n"
               "          if math.abs(s[i][2]) < math.abs(s[o][2]) then"
               " o = i end\n"
               "        end\n"
               "        table.remove(s, o)\n"
               "      end\n"
               "      this = {id}\n"
               "      s[#s + 1] = this\n"
               "    end\n"
               "    this[2] = now + ttl\n"
               "    n, c[2], c[1] = pack(s)\n"
               "    c[3] = true\n"
               "  else\n"
               "    c[2] = now + ttl\n"
               "  end\n"
               "  if not v and not old then\n"
               "    count = count + 1\n"
               "    event('J', user, count)\n"
               "  end\n"
               "  out[#out + 1] = n\n"
               "end\n"
               "local z, h, d = {}, {}, {}\n"
               "for _, u in ipairs(seen) do\n"
               "  local c = cur[u]\n"
               "  z[#z + 1] = string.format('%d', c[2])\n"
               "  z[#z + 1] = u\n"
               "  if c[1] then\n"
               "    h[#h + 1] = u\n"
               "    h[#h + 1] = c[1]\n"
               "  elseif c[3] then\n"
               "    d[#d + 1] = u\n"
               "  end\n"
               "end\n"
               "redis.call('ZADD', KEYS[1], unpack(z))\n"
               "if #h > 0 then redis.call('HSET', KEYS[2], unpack(h)) end\n"
               "if #d > 0 then redis.call('HDEL', KEYS[2], unpack(d)) end\n"
               "if #h > 0 then extend(KEYS[2], life) end\n"
               "extend(KEYS[1], life)\n"
               "out[1] = count\n"
               "publish()\n"
               "return out\n"),

    /*
     * leave: ARGV[1] user, ARGV[2] session ('' for all of the user's),
     * ARGV[3] grace in ms: a session named ends then, unless it heartbeats
     * again.  Returns {count, sessions}.
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               NGX_PRESENCE_LUA_SESSIONS
               "local user, id = ARGV[1], ARGV[2]\n"
               "local grace = tonumber(ARGV[3])\n"
               "local n, left = 0, false\n"
               "if id == '' then\n"
               "  left = redis.call('ZREM', KEYS[1], user) == 1\n"
               "  redis.call('HDEL', KEYS[2], user)\n"
               "else\n"
               "  local v = redis.call('HGET', KEYS[2], user)\n"
               "  if v then\n"
               "    local s, keep = load(v), {}\n"
               "    for _, x in ipairs(s) do\n"
               "      if x[1] ~= id then\n"
               "        keep[#keep + 1] = x\n"
               "      elseif grace > 0 then\n"
               "        x[2] = -math.min(math.abs(x[2]), now + grace)\n"
               "        keep[#keep + 1] = x\n"
               "      end\n"
               "    end\n"
               "    n = store(user, keep)\n"
               "    left = #keep == 0\n"
               "  elseif redis.call('ZSCORE', KEYS[1], user) then\n"
               "    n = 1\n"
               "  end\n"
               "end\n"
               "local count = redis.call('ZCARD', KEYS[1])\n"
               "if left then event('L', user, count) end\n"
               "publish()\n"
               "return {count, n}\n"),

    /*
     * online: returns {count, id}, the id of the room's last event: a
     * stream's snapshot holds every event up to it and none after.  When
     * the id has expired (a room without events for a minute), the clock
     * becomes the id and is stored, to live as an event's would: the
     * next events still take ids above it, and the listings of a quiet
     * room keep the same head, which the workers' memos of listings go by
     * (ngx_http_presence_cache.c).  The members come from a ZREVRANGE in
     * the same MULTI, which answers straight from Redis: a thousand
     * members through a Lua table cost Redis three times as much.
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "publish()\n"
               "local id = redis.call('GET', KEYS[3])\n"
               "if not id then\n"
               "  id = string.format('%d', now)\n"
               "  redis.call('SET', KEYS[3], id, 'NX', 'PX', '"
               NGX_PRESENCE_VERSION_TTL "')\n"
               "end\n"
               "return {redis.call('ZCARD', KEYS[1]), tonumber(id)}\n"),

    /*
     * lookup: ARGV[1] user; returns {ms left, sessions}, {0, 0} when the
     * user is not online
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "publish()\n"
               "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
               "if not s then return {0, 0} end\n"
               "local n = 1\n"
               "local v = redis.call('HGET', KEYS[2], ARGV[1])\n"
               "if v then\n"
               "  n = 0\n"
               "  for e in string.gmatch(v, '[^\\n]*\\n([^\\n]*)\\n') do\n"
               "    if tonumber(e) > now then n = n + 1 end\n"
               "  end\n"
               "end\n"
               "return {tonumber(s) - now, n}\n"),

    /*
     * sweep, by the workers that hold streams of the room: the prune
     * alone, so that a timeout is an event even when nobody touches the
     * room.  Returns the ms until the next user's time runs out, -1 for
     * an empty room.
     */
    ngx_string(NGX_PRESENCE_LUA_NOW
               "publish()\n"
               "local f = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
               "if #f == 0 then return -1 end\n"
               "return tonumber(f[2]) - now\n")
};


/* the keys of a room's sessions and of its last event id */
#define NGX_PRESENCE_SESSIONS_SUFFIX  ":s"
#define NGX_PRESENCE_VERSION_SUFFIX   ":v"


/* the SHA1 of each script, as EVALSHA takes it */
static u_char  ngx_presence_sha[NGX_PRESENCE_NSCRIPTS][40];


/*
 * The operations.  Each returns the command, which the caller may detach
 * or time out, or NULL when Redis is unavailable (the handler is then
 * never called).
 */

ngx_presence_cmd_t *
ngx_presence_redis_eval(ngx_presence_redis_t *rds, ngx_uint_t script,
    ngx_str_t *key, ngx_str_t *args, ngx_uint_t nargs,
    ngx_presence_reply_pt handler, void *data, ngx_log_t *log)
{
    ngx_presence_cmd_t  *cmd;

    cmd = ngx_presence_redis_cmd(rds, script, key, args, nargs, handler,
                                 data, log);
    if (cmd == NULL) {
        return NULL;
    }

    if (script == NGX_PRESENCE_HEARTBEAT
        && ngx_presence_redis_batch_add(cmd) == NGX_OK)
    {
        return cmd;
    }

    return ngx_presence_redis_submit(cmd);
}


/*
 * A listing is MULTI, the script (prune, count, last event id), ZREVRANGE
 * of the limit most recently seen, EXEC; only the reply of EXEC,
 * [[count, id], members] or [[count, id]] for a limit of 0, comes to the
 * handler.
 */

ngx_presence_cmd_t *
ngx_presence_redis_online(ngx_presence_redis_t *rds, ngx_str_t *key,
    ngx_uint_t limit, ngx_presence_reply_pt handler, void *data,
    ngx_log_t *log)
{
    ngx_presence_cmd_t  *cmd;

    cmd = ngx_presence_redis_cmd(rds, NGX_PRESENCE_ONLINE, key, NULL, 0,
                                 handler, data, log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->limit = limit;

    if (limit) {
        cmd->stop_len = ngx_sprintf(cmd->stop, "%ui", limit - 1) - cmd->stop;
    }

    return ngx_presence_redis_submit(cmd);
}


/*
 * The command keeps its own copy of the key and the arguments: after a
 * NOSCRIPT it is sent again as EVAL, maybe after its request is gone.
 */

static ngx_presence_cmd_t *
ngx_presence_redis_cmd(ngx_presence_redis_t *rds, ngx_uint_t script,
    ngx_str_t *key, ngx_str_t *args, ngx_uint_t nargs,
    ngx_presence_reply_pt handler, void *data, ngx_log_t *log)
{
    u_char               *p;
    size_t                size;
    ngx_uint_t            i;
    ngx_presence_cmd_t   *cmd;
    ngx_presence_conn_t  *conn;

    conn = &rds->data;

    if (rds->cluster == NULL && ngx_presence_redis_unavailable(conn)) {
        return NULL;
    }

    /* the room's key, its sessions' and its last id's: one hash tag */

    size = sizeof(ngx_presence_cmd_t) + 3 * key->len
           + sizeof(NGX_PRESENCE_SESSIONS_SUFFIX) - 1
           + sizeof(NGX_PRESENCE_VERSION_SUFFIX) - 1;

    for (i = 0; i < nargs; i++) {
        size += args[i].len;
    }

    cmd = ngx_alloc(size, log);
    if (cmd == NULL) {
        return NULL;
    }

    ngx_memzero(cmd, sizeof(ngx_presence_cmd_t));

    cmd->argv = cmd->args;
    cmd->argvlen = cmd->lens;
    cmd->conn = conn;
    cmd->redis = rds;
    cmd->handler = handler;
    cmd->data = data;
    cmd->log = log;
    cmd->script = script;
    cmd->argc = 6 + nargs;

    cmd->argv[0] = "EVALSHA";
    cmd->argvlen[0] = 7;
    cmd->argv[1] = (char *) ngx_presence_sha[script];
    cmd->argvlen[1] = 40;
    cmd->argv[2] = "3";
    cmd->argvlen[2] = 1;

    p = (u_char *) cmd + sizeof(ngx_presence_cmd_t);

    cmd->argv[3] = (char *) p;
    cmd->argvlen[3] = key->len;
    p = ngx_cpymem(p, key->data, key->len);

    cmd->argv[4] = (char *) p;
    cmd->argvlen[4] = key->len + sizeof(NGX_PRESENCE_SESSIONS_SUFFIX) - 1;
    p = ngx_cpymem(p, key->data, key->len);
    p = ngx_cpymem(p, NGX_PRESENCE_SESSIONS_SUFFIX,
                   sizeof(NGX_PRESENCE_SESSIONS_SUFFIX) - 1);

    cmd->argv[5] = (char *) p;
    cmd->argvlen[5] = key->len + sizeof(NGX_PRESENCE_VERSION_SUFFIX) - 1;
    p = ngx_cpymem(p, key->data, key->len);
    p = ngx_cpymem(p, NGX_PRESENCE_VERSION_SUFFIX,
                   sizeof(NGX_PRESENCE_VERSION_SUFFIX) - 1);

    for (i = 0; i < nargs; i++) {
        cmd->argv[6 + i] = (char *) p;
        cmd->argvlen[6 + i] = args[i].len;

        /* an empty argument (no session) may have no data at all */
        if (args[i].len) {
            p = ngx_cpymem(p, args[i].data, args[i].len);
        }
    }

    if (rds->cluster) {
        cmd->conn = NULL;
        cmd->slot = ngx_presence_redis_cluster_slot(key);
        cmd->created = ngx_current_msec;
    }

    return cmd;
}


static ngx_presence_cmd_t *
ngx_presence_redis_submit(ngx_presence_cmd_t *cmd)
{
    if (ngx_presence_redis_start(cmd) != NGX_OK) {
        ngx_free(cmd);
        return NULL;
    }

    return cmd;
}


/*
 * To the connection of the room's master; NGX_ERROR, the command not
 * taken, when Redis is unavailable
 */

ngx_int_t
ngx_presence_redis_start(ngx_presence_cmd_t *cmd)
{
    ngx_presence_conn_t  *conn;

    if (cmd->redis->cluster) {
        return ngx_presence_redis_cluster_submit(cmd);
    }

    conn = &cmd->redis->data;

    if (ngx_presence_redis_unavailable(conn)) {
        return NGX_ERROR;
    }

    return ngx_presence_redis_submit_to(cmd, conn);
}


/*
 * The single Redis takes no command: no connection, one backing off, or
 * one being dropped.  Asked when a command is made and again when it
 * goes (a batched heartbeat goes at the end of the pass).
 */

static ngx_int_t
ngx_presence_redis_unavailable(ngx_presence_conn_t *conn)
{
    return conn->ac == NULL || conn->state == NGX_PRESENCE_DOWN
           || conn->broken;
}


/*
 * The command goes out on this connection, or waits there for the
 * handshake; NGX_ERROR: hiredis refused it, the caller still owns it.
 */

ngx_int_t
ngx_presence_redis_submit_to(ngx_presence_cmd_t *cmd,
    ngx_presence_conn_t *conn)
{
    cmd->conn = conn;

    if (conn->state != NGX_PRESENCE_READY) {
        /* no command goes out before the handshake has succeeded */

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                       "presence: redis command %p waits for the handshake",
                       cmd);

        cmd->queued = 1;
        ngx_queue_insert_tail(&conn->waiting, &cmd->queue);
        return NGX_OK;
    }

    return ngx_presence_redis_send(cmd);
}


/* EVALSHA (or EVAL), or the transaction of a listing */

static ngx_int_t
ngx_presence_redis_send(ngx_presence_cmd_t *cmd)
{
    size_t                 len[4];
    const char            *argv[4];
    redisAsyncContext     *ac;
    redisCallbackFn       *queued;
    ngx_presence_conn_t   *conn;

    conn = cmd->conn;
    ac = conn->ac;

    (void) clock_gettime(CLOCK_MONOTONIC, &cmd->start);

    if (cmd->asking && ngx_presence_redis_send_asking(cmd, ac) != NGX_OK) {
        return NGX_ERROR;
    }

    if (cmd->script != NGX_PRESENCE_ONLINE) {
        if (redisAsyncCommandArgv(ac, ngx_presence_redis_reply, cmd,
                                  cmd->argc, cmd->argv, cmd->argvlen)
            != REDIS_OK)
        {
            if (cmd->asking) {
                goto broken;
            }

            return NGX_ERROR;
        }

        goto sent;
    }

    /*
     * In a cluster, a redirection of the transaction comes as the reply
     * of a queued command, and EXEC then only says EXECABORT
     */

    queued = cmd->redis->cluster ? ngx_presence_redis_queued_reply : NULL;
    cmd->refused = 0;

    argv[0] = "MULTI";
    len[0] = 5;

    if (redisAsyncCommandArgv(ac, NULL, NULL, 1, argv, len) != REDIS_OK) {
        goto broken;
    }

    if (redisAsyncCommandArgv(ac, queued, cmd, cmd->argc, cmd->argv,
                              cmd->argvlen)
        != REDIS_OK)
    {
        goto broken;
    }

    if (cmd->limit) {
        argv[0] = "ZREVRANGE";
        len[0] = 9;
        argv[1] = cmd->argv[3];
        len[1] = cmd->argvlen[3];
        argv[2] = "0";
        len[2] = 1;
        argv[3] = (char *) cmd->stop;
        len[3] = cmd->stop_len;

        if (redisAsyncCommandArgv(ac, queued, cmd, 4, argv, len)
            != REDIS_OK)
        {
            goto broken;
        }
    }

    argv[0] = "EXEC";
    len[0] = 4;

    if (redisAsyncCommandArgv(ac, ngx_presence_redis_reply, cmd, 1, argv, len)
        != REDIS_OK)
    {
        goto broken;
    }

sent:

    conn->redis->worker->in_flight++;

    return NGX_OK;

broken:

    /*
     * MULTI went out without its EXEC, or ASKING without its command
     * (hiredis ran out of memory): any later command would join the
     * transaction or be asked.  The connection is dropped instead, and
     * nothing more is written to it meanwhile.
     */

    conn->broken = 1;

    if (!conn->drop.posted) {
        ngx_post_event(&conn->drop, &ngx_posted_events);
    }

    return NGX_ERROR;
}


/* ASKING: the target of a cluster's ASK runs the next command */

static ngx_int_t
ngx_presence_redis_send_asking(ngx_presence_cmd_t *cmd, redisAsyncContext *ac)
{
    size_t       len[1];
    const char  *argv[1];

    argv[0] = "ASKING";
    len[0] = 6;

    if (redisAsyncCommandArgv(ac, NULL, NULL, 1, argv, len) != REDIS_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a listing's script or ZREVRANGE, queued in the MULTI of a cluster */

void
ngx_presence_redis_queued_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply          *reply;
    ngx_presence_cmd_t  *cmd;

    reply = r;
    cmd = privdata;

    if (reply && reply->type == REDIS_REPLY_ERROR && !cmd->refused) {
        ngx_presence_redis_cluster_refused(cmd, reply);
    }
}


void
ngx_presence_redis_detach(ngx_presence_cmd_t *cmd)
{
    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                   "presence: redis command %p detached", cmd);

    if (cmd->queued) {
        /* not written yet: it never will be */
        ngx_queue_remove(&cmd->queue);

        if (cmd->batch) {
            ngx_presence_redis_batch_leave(cmd);
        }

        ngx_free(cmd);
        return;
    }

    /* Redis answers in order: the command stays pending, its reply dropped */
    cmd->data = NULL;
}


/* detaches the command; a connection that keeps timing out is dropped */

void
ngx_presence_redis_timed_out(ngx_presence_cmd_t *cmd)
{
    ngx_presence_conn_t  *conn;

    conn = cmd->queued ? NULL : cmd->conn;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                   "presence: redis command %p timed out", cmd);

    ngx_presence_redis_detach(cmd);

    /* one that waited for a connection or a retry proves nothing of it */

    if (conn
        && ++conn->timeouts >= NGX_PRESENCE_MAX_TIMEOUTS
        && conn->ac && !conn->drop.posted)
    {
        ngx_post_event(&conn->drop, &ngx_posted_events);
    }
}


/*
 * A reply the scripts never give: an error (WRONGTYPE, OOM, READONLY...)
 * or another type.  Every request then answers 503; the log says so once
 * per connection, without a request's context (the URL may hold a user
 * id), so that a misconfigured Redis does not write a line per request.
 */

void
ngx_presence_redis_unexpected(ngx_presence_redis_t *rds, redisReply *reply)
{
    char  *what;

    if (rds->unexpected) {
        return;
    }

    rds->unexpected = 1;

    what = rds->cluster ? "redis cluster of" : "redis at";

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                      "presence: %s \"%V\" answers an error, requests "
                      "get 503 (logged once per connection): %*s",
                      what, &rds->master.name, (size_t) reply->len,
                      reply->str);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                  "presence: %s \"%V\" answers a reply of type %d "
                  "where the scripts give another, requests get 503 "
                  "(logged once per connection)",
                  what, &rds->master.name, reply->type);
}


static void
ngx_presence_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply            *reply;
    struct timespec        now;
    ngx_presence_cmd_t    *cmd;
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    reply = r;
    cmd = privdata;
    conn = cmd->conn;
    rds = conn->redis;

    rds->worker->in_flight--;

    if (reply) {
        conn->timeouts = 0;

        (void) clock_gettime(CLOCK_MONOTONIC, &now);

        (void) ngx_atomic_fetch_add(&rds->counters->redis_rtt_us_sum,
                             (now.tv_sec - cmd->start.tv_sec) * 1000000
                             + (now.tv_nsec - cmd->start.tv_nsec) / 1000);
        (void) ngx_atomic_fetch_add(&rds->counters->redis_rtt_count, 1);
    }

    if (reply && rds->cluster && conn->ac == ac && !rds->exiting
        && ngx_presence_redis_cluster_reply(cmd, reply) == NGX_OK)
    {
        /* redirected, retried later, or failed: the cluster has it */
        return;
    }

    if (reply && !cmd->retried && conn->ac == ac && !rds->exiting
        && ngx_presence_redis_noscript(cmd, reply))
    {
        ngx_presence_redis_refused(cmd);
        return;
    }

    if (reply && rds->sentinel && conn->ac == ac && !rds->exiting
        && ngx_presence_redis_readonly(cmd, reply))
    {
        /*
         * A replica: Sentinel has made this master one since the
         * handshake.  The request gets 503; the connection goes to
         * where the sentinels say the master is now, through ROLE again.
         */

        if (!conn->moved) {
            ngx_log_error(NGX_LOG_ERR, rds->log, 0,
                          "presence: redis at \"%V\" is read-only, asking "
                          "the sentinels", &rds->master.name);
        }

        ngx_presence_redis_move(conn);
        ngx_presence_redis_sentinel_ask(rds);
    }

    if (reply && !ngx_queue_empty(&conn->retry)) {
        /*
         * Redis ran this command, written after those it refused: run
         * now, they would take effect after it, a heartbeat after the
         * leave that followed it.  They fail instead.
         */
        ngx_presence_redis_fail_queue(&conn->retry);
    }

    ngx_presence_redis_finish(cmd, reply);
}


/*
 * The script cache was flushed (SCRIPT FLUSH; a restart or a failover
 * comes with a new connection, whose handshake loads the scripts).  The
 * scripts are loaded again; new commands wait meanwhile, and the refused
 * one goes again as EVAL once every command written before the loads has
 * been answered, so that none overtakes another.
 */

static void
ngx_presence_redis_refused(ngx_presence_cmd_t *cmd)
{
    ngx_presence_conn_t  *conn;

    conn = cmd->conn;

    if (cmd->data == NULL) {
        ngx_free(cmd);
        return;
    }

    if (conn->state == NGX_PRESENCE_READY) {
        ngx_log_debug0(NGX_LOG_DEBUG_EVENT, conn->redis->log, 0,
                       "presence: redis answers NOSCRIPT, loading the "
                       "scripts again");

        conn->state = NGX_PRESENCE_LOADING;
        ngx_presence_redis_load_scripts(conn);

        if (conn->timer.timer_set) {
            ngx_del_timer(&conn->timer);
        }

        ngx_add_timer(&conn->timer, conn->redis->conf->timeout);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, cmd->log, 0,
                   "presence: redis command %p goes again as EVAL", cmd);

    cmd->retried = 1;
    cmd->argv[0] = "EVAL";
    cmd->argvlen[0] = 4;
    cmd->argv[1] = (char *) ngx_presence_scripts[cmd->script].data;
    cmd->argvlen[1] = ngx_presence_scripts[cmd->script].len;

    cmd->queued = 1;
    ngx_queue_insert_tail(&conn->retry, &cmd->queue);
}


/*
 * The script is not in Redis's cache.  In a MULTI, Redis refuses the
 * EVALSHA when it is queued (EXECABORT) or, in older versions, answers
 * NOSCRIPT in its place in the reply of EXEC.
 */

static ngx_int_t
ngx_presence_redis_noscript(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    if (cmd->script == NGX_PRESENCE_ONLINE
        && reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0)
    {
        reply = reply->element[0];
    }

    return reply->type == REDIS_REPLY_ERROR
           && (ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
               || (cmd->script == NGX_PRESENCE_ONLINE
                   && ngx_strncmp(reply->str, "EXECABORT", 9) == 0));
}


/* READONLY, for a command or, in a listing, for the script in the MULTI */

static ngx_int_t
ngx_presence_redis_readonly(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    if (cmd->script == NGX_PRESENCE_ONLINE
        && reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0)
    {
        reply = reply->element[0];
    }

    return reply->type == REDIS_REPLY_ERROR
           && reply->len >= 8
           && ngx_strncmp(reply->str, "READONLY", 8) == 0;
}


void
ngx_presence_redis_finish(ngx_presence_cmd_t *cmd, redisReply *reply)
{
    if (cmd->many) {
        /* every heartbeat of the batch gets its part, or is freed */
        ngx_presence_redis_batch_done(cmd->data, reply);

    } else if (cmd->data && !cmd->redis->exiting) {
        cmd->handler(cmd->data, reply);
    }

    ngx_free(cmd);
}


/* commands that never went out, when the connection is gone */

void
ngx_presence_redis_fail_queue(ngx_queue_t *queue)
{
    ngx_presence_cmd_t  *cmd;

    while ((cmd = ngx_presence_redis_dequeue(queue))) {
        ngx_presence_redis_finish(cmd, NULL);
    }
}


/* the first command of a queue, taken off it; NULL when it is empty */

ngx_presence_cmd_t *
ngx_presence_redis_dequeue(ngx_queue_t *queue)
{
    ngx_queue_t         *q;
    ngx_presence_cmd_t  *cmd;

    if (ngx_queue_empty(queue)) {
        return NULL;
    }

    q = ngx_queue_head(queue);
    ngx_queue_remove(q);

    cmd = ngx_queue_data(q, ngx_presence_cmd_t, queue);
    cmd->queued = 0;

    return cmd;
}


/*
 * SCRIPT LOAD of every script, counted in conn->handshake: at the
 * handshake, and again after a NOSCRIPT (SCRIPT FLUSH).  Their replies
 * come after those of every command written before them.
 */

void
ngx_presence_redis_load_scripts(ngx_presence_conn_t *conn)
{
    size_t       len[3];
    ngx_uint_t   i;
    const char  *argv[3];

    for (i = 0; i < NGX_PRESENCE_NSCRIPTS; i++) {
        argv[0] = "SCRIPT";
        len[0] = 6;
        argv[1] = "LOAD";
        len[1] = 4;
        argv[2] = (char *) ngx_presence_scripts[i].data;
        len[2] = ngx_presence_scripts[i].len;

        if (redisAsyncCommandArgv(conn->ac,
                                  ngx_presence_redis_handshake_reply,
                                  NULL, 3, argv, len)
            == REDIS_OK)
        {
            conn->handshake++;
        }
    }
}


/*
 * The connection is good: the commands refused with NOSCRIPT go again,
 * then those that waited, in the order they came.
 */

void
ngx_presence_redis_flush(ngx_presence_conn_t *conn)
{
    ngx_presence_redis_send_queue(conn, &conn->retry);
    ngx_presence_redis_send_queue(conn, &conn->waiting);
}


static void
ngx_presence_redis_send_queue(ngx_presence_conn_t *conn, ngx_queue_t *queue)
{
    ngx_presence_cmd_t  *cmd;

    while ((cmd = ngx_presence_redis_dequeue(queue))) {
        if (conn->broken || ngx_presence_redis_send(cmd) != NGX_OK) {
            ngx_presence_redis_finish(cmd, NULL);
        }
    }
}


char *
ngx_presence_redis_parse_address(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *value)
{
    ngx_presence_addr_t  addr;

    if (ngx_presence_redis_parse_addr(cf, &addr, value, "presence_redis", 1)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    rcf->name = addr.name;
    rcf->host = addr.host;
    rcf->path = addr.path;
    rcf->port = addr.port;

    return NGX_CONF_OK;
}


/*
 * presence_redis_sentinel NAME ADDRESS...: each sentinel's address is
 * resolved here, like presence_redis's; a unix socket is refused, the
 * workers reach sentinels over TCP only
 */

char *
ngx_presence_redis_parse_sentinel(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *values, ngx_uint_t n)
{
    if (values[0].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty master name in the "
                           "\"presence_redis_sentinel\" directive");
        return NGX_CONF_ERROR;
    }

    rcf->master = values[0];

    return ngx_presence_redis_parse_addrs(cf, &rcf->sentinels, &values[1],
                                          n - 1, "presence_redis_sentinel",
                                          "sentinel");
}


/*
 * presence_redis_cluster ADDRESS...: the seeds, over TCP, as the nodes
 * announce themselves to each other
 */

char *
ngx_presence_redis_parse_cluster(ngx_conf_t *cf,
    ngx_presence_redis_conf_t *rcf, ngx_str_t *values, ngx_uint_t n)
{
    return ngx_presence_redis_parse_addrs(cf, &rcf->seeds, values, n,
                                          "presence_redis_cluster", "node");
}


static char *
ngx_presence_redis_parse_addrs(ngx_conf_t *cf, ngx_array_t **addrs,
    ngx_str_t *values, ngx_uint_t n, char *directive, char *what)
{
    ngx_uint_t            i, j;
    ngx_array_t          *a;
    ngx_presence_addr_t  *addr, *known;

    a = ngx_array_create(cf->pool, n, sizeof(ngx_presence_addr_t));
    if (a == NULL) {
        return NGX_CONF_ERROR;
    }

    *addrs = a;

    for (i = 0; i < n; i++) {
        addr = ngx_array_push(a);
        if (addr == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_presence_redis_parse_addr(cf, addr, &values[i], directive, 0)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

        known = a->elts;

        for (j = 0; j < a->nelts - 1; j++) {
            if (known[j].port == addr->port
                && known[j].host.len == addr->host.len
                && ngx_strncmp(known[j].host.data, addr->host.data,
                               addr->host.len)
                   == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "duplicate %s \"%V\" in the \"%s\" "
                                   "directive", what, &values[i], directive);
                return NGX_CONF_ERROR;
            }
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_presence_redis_parse_addr(ngx_conf_t *cf, ngx_presence_addr_t *addr,
    ngx_str_t *value, char *directive, ngx_uint_t unix_ok)
{
    u_char     *p;
    size_t      len;
    ngx_url_t   u;

    ngx_memzero(addr, sizeof(ngx_presence_addr_t));
    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = ngx_strcmp(directive, "presence_redis_sentinel") == 0
                     ? 26379 : 6379;

    /* a name is resolved here, once: a worker never waits on DNS */

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\" of the \"%s\" directive",
                               u.err, &u.url, directive);
        }

        return NGX_CONF_ERROR;
    }

    if (u.uri.len || u.naddrs == 0 || (!unix_ok && u.family == AF_UNIX)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\" of the \"%s\" "
                           "directive: expected %s", &u.url, directive,
                           unix_ok ? "\"host:port\" or \"unix:/path\""
                                   : "\"host:port\"");
        return NGX_CONF_ERROR;
    }

    addr->name = *value;

#if (NGX_HAVE_UNIX_DOMAIN)

    if (u.family == AF_UNIX) {
        p = (u_char *) ((struct sockaddr_un *) u.addrs[0].sockaddr)->sun_path;
        len = ngx_strlen(p);

        addr->path.data = ngx_pnalloc(cf->pool, len + 1);
        if (addr->path.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(addr->path.data, p, len + 1);
        addr->path.len = len;

        return NGX_CONF_OK;
    }

#endif

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                        NGX_SOCKADDR_STRLEN, 0);
    p[len] = '\0';

    addr->host.data = p;
    addr->host.len = len;
    addr->port = ngx_inet_get_port(u.addrs[0].sockaddr);

    return NGX_CONF_OK;
}


/* at init_process: the worker's context and its first connect */

ngx_presence_redis_t *
ngx_presence_redis_create(ngx_cycle_t *cycle, ngx_presence_redis_conf_t *rcf,
    ngx_presence_counters_t *counters, ngx_presence_worker_t *worker)
{
    u_char                 digest[20];
    ngx_uint_t             i;
    ngx_sha1_t             sha1;
    ngx_presence_conn_t   *conn;
    ngx_presence_redis_t  *rds;

    for (i = 0; i < NGX_PRESENCE_NSCRIPTS; i++) {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, ngx_presence_scripts[i].data,
                        ngx_presence_scripts[i].len);
        ngx_sha1_final(digest, &sha1);
        ngx_hex_dump(ngx_presence_sha[i], digest, sizeof(digest));
    }

    rds = ngx_pcalloc(cycle->pool, sizeof(ngx_presence_redis_t));
    if (rds == NULL) {
        return NULL;
    }

    rds->conf = rcf;
    rds->log = cycle->log;
    rds->counters = counters;
    rds->worker = worker;

    if (rcf->sentinels) {
        /* no master until the sentinels name one */
        rds->master.name = rcf->master;
        rds->master.host.data = rds->master_host;

    } else if (rcf->seeds) {
        /* none until a node has answered */
        rds->master.name = ((ngx_presence_addr_t *) rcf->seeds->elts)->name;
        rds->master.host.data = rds->master_host;

    } else {
        rds->master.name = rcf->name;
        rds->master.host = rcf->host;
        rds->master.path = rcf->path;
        rds->master.port = rcf->port;
    }

    conn = &rds->data;

    ngx_presence_redis_conn_init(conn, rds, cycle->log);
    conn->addr = &rds->master;

    ngx_presence_redis_batch_init(rds);

    /*
     * The first handshake's timer counts from the cached clock, which the
     * start of a worker (or valgrind) may have left seconds behind.
     */
    ngx_time_update();

    if (rcf->seeds) {
        if (ngx_presence_redis_cluster_start(rds) != NGX_OK) {
            return NULL;
        }

        return rds;
    }

    ngx_presence_redis_connect(conn);

    if (rcf->sentinels && ngx_presence_redis_sentinel_start(rds) != NGX_OK) {
        return NULL;
    }

    return rds;
}


/* at exit_process: no callback of a request runs any more */

void
ngx_presence_redis_destroy(ngx_presence_redis_t *rds)
{
    rds->exiting = 1;

    ngx_presence_redis_batch_close(rds);
    ngx_presence_redis_sentinel_stop(rds);
    ngx_presence_redis_cluster_stop(rds);
    ngx_presence_redis_conn_close(&rds->data);
    ngx_presence_redis_pubsub_close(rds);
}

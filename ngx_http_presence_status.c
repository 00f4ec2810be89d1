
/*
 * ngx_http_presence_module: presence_status, and the counters behind it.
 *
 * The counters of all workers live in a shared memory zone that outlives
 * reloads; each worker also has a slot of its own there for the state of
 * its Redis connection.  Requests are counted in one place,
 * ngx_http_presence_count(), as they are answered.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_presence.h"


/* worker slots in the status zone: old and new workers during a reload */
#define NGX_HTTP_PRESENCE_WORKERS    256


typedef struct {
    ngx_presence_counters_t     counters;
    ngx_presence_worker_t       workers[NGX_HTTP_PRESENCE_WORKERS];
} ngx_http_presence_shctx_t;


static ngx_uint_t ngx_http_presence_status_text(ngx_http_request_t *r);
static u_char *ngx_http_presence_status_json(u_char *p,
    ngx_http_presence_shctx_t *sh);
static u_char *ngx_http_presence_status_prometheus(u_char *p,
    ngx_http_presence_shctx_t *sh);
static ngx_uint_t ngx_http_presence_sum(ngx_http_presence_shctx_t *sh,
    size_t offset);
static ngx_presence_worker_t *ngx_http_presence_next_worker(
    ngx_http_presence_shctx_t *sh, ngx_uint_t *i);
static ngx_int_t ngx_http_presence_worker_alive(ngx_presence_worker_t *w);
static ngx_atomic_uint_t ngx_http_presence_start_time(ngx_pid_t pid,
    ngx_uint_t *zombie);
static ngx_int_t ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


/* presence_status: name, what it counts, where */

typedef struct {
    ngx_str_t                   name;
    ngx_str_t                   help;
    size_t                      offset;
} ngx_http_presence_counter_t;


#define ngx_http_presence_counter(name, help)                                 \
    { ngx_string(#name), ngx_string(help),                                    \
      offsetof(ngx_presence_counters_t, name) }

static ngx_http_presence_counter_t  ngx_http_presence_counter_list[] = {
    ngx_http_presence_counter(heartbeats, "Heartbeats answered 200."),
    ngx_http_presence_counter(leaves, "Leaves answered 200."),
    ngx_http_presence_counter(listings,
                              "Listings and lookups answered 200 or 304."),
    ngx_http_presence_counter(client_errors,
                              "Requests answered with a 4xx error."),
    ngx_http_presence_counter(redis_unavailable,
                              "Requests answered 503: Redis unavailable."),
    ngx_http_presence_counter(redis_timeouts,
                              "Requests answered 504: Redis too slow."),
    ngx_http_presence_counter(redis_reconnects,
                              "Redis connections opened again after a drop."),
    ngx_http_presence_counter(redis_failovers,
                              "Redis masters followed to a new address "
                              "(Sentinel, Cluster)."),
    ngx_http_presence_counter(redis_redirects,
                              "Commands redirected by a Redis Cluster "
                              "(MOVED, ASK)."),
    ngx_http_presence_counter(redis_rtt_us_sum,
                              "Microseconds from command to reply, summed."),
    ngx_http_presence_counter(redis_rtt_count, "Redis replies timed."),
    ngx_http_presence_counter(stream_events,
                              "Joins and leaves written to live streams, "
                              "one per stream.")
};

#define NGX_HTTP_PRESENCE_NCOUNTERS                                           \
    (sizeof(ngx_http_presence_counter_list)                                   \
     / sizeof(ngx_http_presence_counter_t))

#define ngx_http_presence_counter_value(sh, i)                                \
    *(ngx_atomic_t *) ((u_char *) &(sh)->counters                             \
                       + ngx_http_presence_counter_list[i].offset)


/* until the status zone is there, and in processes without a slot */
static ngx_presence_counters_t  ngx_http_presence_local_counters;
static ngx_presence_worker_t    ngx_http_presence_local_worker;

static ngx_presence_counters_t  *ngx_http_presence_counters_p =
    &ngx_http_presence_local_counters;
static ngx_presence_worker_t    *ngx_http_presence_worker_p =
    &ngx_http_presence_local_worker;


/*
 * presence_status: the counters of all workers and the Redis connection
 * of each, as JSON, or as Prometheus text when asked for with
 * ?format=prometheus or an Accept header that prefers text/plain.
 */

ngx_int_t
ngx_http_presence_status_handler(ngx_http_request_t *r)
{
    size_t                          size;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_http_presence_shctx_t      *sh;
    ngx_http_presence_main_conf_t  *pmcf;

    static ngx_str_t  vary = ngx_string("Vary");
    static ngx_str_t  accept = ngx_string("Accept");

    /* nginx's own 400 for a broken chunked body: see the update handler */

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_error(r, NGX_HTTP_PRESENCE_ERR_METHOD);
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    sh = pmcf->shm_zone->data;

    /* the format depends on Accept: a cache must keep one of each */

    if (ngx_http_presence_add_header(r, &vary, &accept, NULL) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a generous bound: every line at its longest */

    size = NGX_HTTP_PRESENCE_NCOUNTERS * 256 + 512
           + NGX_HTTP_PRESENCE_WORKERS * 256;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_presence_status_text(r)) {
        b->last = ngx_http_presence_status_prometheus(b->last, sh);

        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4; charset=utf-8");
        r->headers_out.content_type_len = sizeof("text/plain") - 1;

    } else {
        b->last = ngx_http_presence_status_json(b->last, sh);
    }

    return ngx_http_presence_send(r, NGX_HTTP_OK, b);
}


/*
 * Text for ?format=prometheus, or when the Accept header lines weigh
 * text/plain above application/json (ngx_http_presence_accept_text()).
 * All the lines: before nginx 1.23 headers_in.accept holds the first only.
 */

static ngx_uint_t
ngx_http_presence_status_text(ngx_http_request_t *r)
{
    ngx_str_t                    format;
    ngx_uint_t                   i;
    ngx_list_part_t             *part;
    ngx_table_elt_t             *h;
    ngx_http_presence_accept_t   accept;

    if (ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK
        && format.len == 10
        && ngx_strncmp(format.data, "prometheus", 10) == 0)
    {
        return 1;
    }

    ngx_memzero(&accept, sizeof(ngx_http_presence_accept_t));

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0
            && h[i].key.len == sizeof("Accept") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept",
                               sizeof("Accept") - 1)
               == 0)
        {
            ngx_http_presence_accept(&accept, &h[i].value);
        }
    }

    return ngx_http_presence_accept_text(&accept);
}


static u_char *
ngx_http_presence_status_json(u_char *p, ngx_http_presence_shctx_t *sh)
{
    ngx_uint_t              i, n;
    ngx_presence_worker_t  *w;

    *p++ = '{';

    for (i = 0; i < NGX_HTTP_PRESENCE_NCOUNTERS; i++) {
        p = ngx_sprintf(p, "\"%V\":%uA,",
                        &ngx_http_presence_counter_list[i].name,
                        ngx_http_presence_counter_value(sh, i));
    }

    p = ngx_sprintf(p, "\"redis_in_flight\":%ui,\"streams\":%ui,"
                    "\"workers\":[",
                    ngx_http_presence_sum(sh, offsetof(ngx_presence_worker_t,
                                                       in_flight)),
                    ngx_http_presence_sum(sh, offsetof(ngx_presence_worker_t,
                                                       streams)));

    for (i = 0, n = 0; (w = ngx_http_presence_next_worker(sh, &i)); n++) {
        p = ngx_sprintf(p, "%s{\"pid\":%uA,\"redis_connected\":%s,"
                        "\"redis_in_flight\":%uA,\"redis_reconnects\":%uA,"
                        "\"streams\":%uA}",
                        n ? "," : "", w->pid,
                        w->connected ? "true" : "false",
                        w->in_flight, w->reconnects, w->streams);
    }

    return ngx_cpymem(p, "]}", 2);
}


static u_char *
ngx_http_presence_status_prometheus(u_char *p, ngx_http_presence_shctx_t *sh)
{
    ngx_str_t              *name;
    ngx_uint_t              i;
    ngx_presence_worker_t  *w;

    for (i = 0; i < NGX_HTTP_PRESENCE_NCOUNTERS; i++) {
        name = &ngx_http_presence_counter_list[i].name;

        p = ngx_sprintf(p, "# HELP nginx_presence_%V_total %V\n"
                        "# TYPE nginx_presence_%V_total counter\n"
                        "nginx_presence_%V_total %uA\n",
                        name, &ngx_http_presence_counter_list[i].help, name,
                        name, ngx_http_presence_counter_value(sh, i));
    }

    p = ngx_sprintf(p, "# HELP nginx_presence_redis_in_flight "
                    "Commands sent to Redis and not answered yet.\n"
                    "# TYPE nginx_presence_redis_in_flight gauge\n"
                    "nginx_presence_redis_in_flight %ui\n"
                    "# HELP nginx_presence_streams "
                    "Live streams open.\n"
                    "# TYPE nginx_presence_streams gauge\n"
                    "nginx_presence_streams %ui\n"
                    "# HELP nginx_presence_redis_connected "
                    "Whether a worker's Redis connection is up.\n"
                    "# TYPE nginx_presence_redis_connected gauge\n",
                    ngx_http_presence_sum(sh, offsetof(ngx_presence_worker_t,
                                                       in_flight)),
                    ngx_http_presence_sum(sh, offsetof(ngx_presence_worker_t,
                                                       streams)));

    for (i = 0; (w = ngx_http_presence_next_worker(sh, &i)); /* void */) {
        p = ngx_sprintf(p, "nginx_presence_redis_connected{pid=\"%uA\"} %d\n",
                        w->pid, w->connected ? 1 : 0);
    }

    return p;
}


/*
 * Every answer of the module passes here (ngx_http_presence_send()): 200
 * and 304 count as what the location does, 503 and 504 as Redis's, the
 * rest as the client's error.
 */

void
ngx_http_presence_count(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_atomic_t                  *counter;
    ngx_presence_counters_t       *c;
    ngx_http_presence_loc_conf_t  *plcf;

    c = ngx_http_presence_counters_p;

    switch (status) {

    case NGX_HTTP_OK:
    case NGX_HTTP_NOT_MODIFIED:
        plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

        switch (plcf->handler) {
        case NGX_HTTP_PRESENCE_HEARTBEAT:
            counter = &c->heartbeats;
            break;
        case NGX_HTTP_PRESENCE_LEAVE:
            counter = &c->leaves;
            break;
        case NGX_HTTP_PRESENCE_ONLINE:
            counter = &c->listings;
            break;
        default: /* NGX_HTTP_PRESENCE_STATUS, NGX_HTTP_PRESENCE_STREAM */
            return;
        }

        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

        if (plcf->handler == NGX_HTTP_PRESENCE_STREAM) {
            /* presence_stream_max_clients, not Redis */
            return;
        }

        counter = &c->redis_unavailable;
        break;

    case NGX_HTTP_GATEWAY_TIME_OUT:
        counter = &c->redis_timeouts;
        break;

    default:
        counter = &c->client_errors;
        break;
    }

    (void) ngx_atomic_fetch_add(counter, 1);
}


ngx_presence_counters_t *
ngx_http_presence_counters(void)
{
    return ngx_http_presence_counters_p;
}


ngx_presence_worker_t *
ngx_http_presence_worker(void)
{
    return ngx_http_presence_worker_p;
}


/* a gauge of the live workers' slots, summed */

static ngx_uint_t
ngx_http_presence_sum(ngx_http_presence_shctx_t *sh, size_t offset)
{
    ngx_uint_t              i, n;
    ngx_presence_worker_t  *w;

    n = 0;

    for (i = 0; (w = ngx_http_presence_next_worker(sh, &i)); /* void */) {
        n += *(ngx_atomic_t *) ((u_char *) w + offset);
    }

    return n;
}


/* the slot of the next live worker from *i on, or NULL */

static ngx_presence_worker_t *
ngx_http_presence_next_worker(ngx_http_presence_shctx_t *sh, ngx_uint_t *i)
{
    ngx_presence_worker_t  *w;

    while (*i < NGX_HTTP_PRESENCE_WORKERS) {
        w = &sh->workers[(*i)++];

        if (ngx_http_presence_worker_alive(w)) {
            return w;
        }
    }

    return NULL;
}


/*
 * A worker that crashed never clears its slot, and its pid may later be
 * another process's: kill(pid, 0) alone would take that process for the
 * worker, list it, sum its stale in_flight, and keep the slot from ever
 * being reused; it would also take a killed worker that the master has
 * not reaped yet, a zombie, for alive.  So a slot holds the pid and the
 * start time of the worker's process, which the worker reads itself when
 * it claims the slot, and the worker is alive while a process with that
 * pid started at that time and is no zombie.  A pid and a start time name
 * one process only.  Reading procfs does not block.  Where it cannot be
 * read (no procfs, another system than Linux) the start time is 0, and
 * kill(pid, 0) decides as before.
 */

static ngx_int_t
ngx_http_presence_worker_alive(ngx_presence_worker_t *w)
{
    ngx_pid_t          pid;
    ngx_uint_t         zombie;
    ngx_atomic_uint_t  start, now;

    pid = (ngx_pid_t) w->pid;
    ngx_memory_barrier();
    start = w->start;

    if (pid == 0) {
        return 0;
    }

    if (start) {
        now = ngx_http_presence_start_time(pid, &zombie);

        if (now == (ngx_atomic_uint_t) NGX_ERROR) {
            return 0;
        }

        if (now) {
            return now == start && !zombie;
        }
    }

    return !(kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH);
}


/*
 * The start time of a process, field 22 of /proc/<pid>/stat (after the
 * command, which is in parentheses and may hold any character); 0 when
 * procfs cannot tell, NGX_ERROR when there is no such process.
 */

static ngx_atomic_uint_t
ngx_http_presence_start_time(ngx_pid_t pid, ngx_uint_t *zombie)
{
#if (NGX_LINUX)
    off_t        t;
    u_char      *p, *last, *end;
    ssize_t      n;
    ngx_fd_t     fd;
    ngx_err_t    err;
    ngx_uint_t   field;
    u_char       name[sizeof("/proc//stat") + NGX_INT64_LEN];
    u_char       buf[1024];

    if (zombie) {
        *zombie = 0;
    }

    ngx_sprintf(name, "/proc/%P/stat%Z", pid);

    fd = ngx_open_file(name, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        err = ngx_errno;
        return (err == NGX_ENOENT || err == NGX_ESRCH)
               ? (ngx_atomic_uint_t) NGX_ERROR : 0;
    }

    n = ngx_read_fd(fd, buf, sizeof(buf));
    err = ngx_errno;

    (void) ngx_close_file(fd);

    if (n == -1) {
        /* the process went away between open() and read() */
        return (err == NGX_ESRCH) ? (ngx_atomic_uint_t) NGX_ERROR : 0;
    }

    end = buf + n;

    for (p = end; p > buf && p[-1] != ')'; p--) { /* void */ }

    if (p == buf) {
        return 0;
    }

    /* p is past the command: " state ppid ...", the state is field 3 */

    for (field = 2; field < 22; field++) {
        while (p < end && *p == ' ') {
            p++;
        }

        if (field == 2 && zombie) {
            *zombie = (p < end && (*p == 'Z' || *p == 'X'));
        }

        if (field < 21) {
            while (p < end && *p != ' ') {
                p++;
            }
        }
    }

    for (last = p; last < end && *last != ' '; last++) { /* void */ }

    t = ngx_atoof(p, last - p);

    return (t > 0) ? (ngx_atomic_uint_t) t : 0;

#else

    if (zombie) {
        *zombie = 0;
    }

    return 0;

#endif
}


/* at init_main_conf, for a configuration that uses the module */

ngx_int_t
ngx_http_presence_status_zone(ngx_conf_t *cf,
    ngx_http_presence_main_conf_t *pmcf)
{
    static ngx_str_t  name = ngx_string("presence_status");

    pmcf->shm_zone = ngx_shared_memory_add(cf, &name, 64 * 1024,
                                           &ngx_http_presence_module);
    if (pmcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    pmcf->shm_zone->init = ngx_http_presence_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t            *shpool;
    ngx_http_presence_shctx_t  *sh;

    if (data) {
        /* a reload: the counters go on */
        sh = data;
        goto done;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        sh = shpool->data;
        goto done;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_presence_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;

done:

    shm_zone->data = sh;
    ngx_http_presence_counters_p = &sh->counters;

    return NGX_OK;
}


/*
 * A slot of its own for this worker: a free one, or a dead worker's.  The
 * zone's mutex keeps two new workers from taking the same dead worker's
 * slot (a pid and a start time cannot be set in one atomic step); nginx's
 * master frees the mutex if a worker dies holding it.  The pid is written
 * last: a reader that sees it sees the rest.
 */

void
ngx_http_presence_status_claim(ngx_cycle_t *cycle,
    ngx_http_presence_main_conf_t *pmcf)
{
    ngx_uint_t                  i;
    ngx_slab_pool_t            *shpool;
    ngx_presence_worker_t      *w;
    ngx_http_presence_shctx_t  *sh;

    if (pmcf->shm_zone == NULL) {
        return;
    }

    sh = pmcf->shm_zone->data;
    shpool = (ngx_slab_pool_t *) pmcf->shm_zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < NGX_HTTP_PRESENCE_WORKERS; i++) {
        w = &sh->workers[i];

        if (ngx_http_presence_worker_alive(w)) {
            continue;
        }

        w->pid = 0;
        ngx_memory_barrier();

        w->in_flight = 0;
        w->reconnects = 0;
        w->connected = 0;
        w->streams = 0;
        w->start = ngx_http_presence_start_time(ngx_pid, NULL);
        ngx_memory_barrier();

        w->pid = (ngx_atomic_uint_t) ngx_pid;

        ngx_shmtx_unlock(&shpool->mutex);

        ngx_http_presence_worker_p = w;
        return;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                  "presence: no free status slot, this worker's redis "
                  "connection is not listed by presence_status");
}


/* at exit_process: the slot is free for the next worker */

void
ngx_http_presence_status_release(void)
{
    ngx_presence_worker_t  *w;

    w = ngx_http_presence_worker_p;

    if (w == &ngx_http_presence_local_worker) {
        return;
    }

    w->connected = 0;
    w->in_flight = 0;
    w->streams = 0;
    w->pid = 0;
}

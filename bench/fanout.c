/*
 * bench/fanout.c: the load client of bench/run's fan-out rows.
 *
 * Opens N Server-Sent Events streams (GET) to one server, waits until every
 * stream has seen its "ready" markers, then, R times, sends one trigger
 * request (a POST on a connection of its own) and measures the time from
 * sending it until every stream has received the event it causes.  Given
 * the pid of the server's (one) worker, it also reads that worker's CPU
 * time around every round and its VmRSS before the streams, with the
 * streams idle and after the rounds.
 *
 * Plain libc and Linux (epoll), one thread; compiled by bench/run with the
 * system cc.  The streams' bodies are de-chunked (Transfer-Encoding:
 * chunked) before they are matched, so a marker split over two chunks is
 * still found.
 *
 * Usage: fanout [options]
 *   -p PORT          the server (127.0.0.1 unless -H)
 *   -H ADDR          IPv4 address (127.0.0.1)
 *   -u PATH          the stream's path (GET, Accept: text/event-stream)
 *   -n N             streams (10000)
 *   -r R             rounds (5)
 *   -y STRING        a ready marker; several -y are matched in order, after
 *                    the response headers (none: the headers are enough)
 *   -e STRING        the round's event; several -e are matched in order, in
 *                    the data that arrives after the trigger was sent
 *   -t PATH          the trigger's path (POST)
 *   -b STRING        the trigger's body
 *   -T TYPE          the trigger's Content-Type (text/plain)
 *   -s STATUS        the trigger's expected status (any 2xx)
 *   -w PID           the server's worker: its CPU and memory are reported
 *   -g MS            the pause before each round and after it (300)
 *   -G MS            a further pause once the streams are ready, before the
 *                    first round (0; for a profiler to attach)
 *   -W N             streams opened and not yet ready at a time (256: the
 *                    listen backlog, 511, never overflows)
 *   -x SECONDS       how long the streams, or one round, may take (60)
 *   -v               a line per round on stderr as it goes
 * In the strings of -y, -e and -b, \n \r \t \\ are escapes, and {r} stands
 * for a token unique to the round (this run's own prefix and the round's
 * number), so that an event of an earlier run or round never counts.
 *
 * Output (stdout): a line once the streams are ready (READY n=... ready_ms=...),
 * a line per round and a summary, key=value:
 *   ROUND r=1 ms=... first_ms=... p50_ms=... cpu_us=... utime=... stime=... status=...
 *   FANOUT n=... rounds=... ready_ms=... median_ms=... min_ms=... max_ms=...
 *          cpu_us_per_stream=... kernel_pct=... client_us_per_stream=...
 *          rss_before_kb=... rss_idle_kb=...
 *          rss_after_kb=... idle_kb_per_stream=... after_kb_per_stream=...
 * ms: the time until the last stream had the event (first_ms, p50_ms: the
 * first, the median stream); cpu_us: the worker's CPU time over the round
 * (trigger, fan-out, its reply, a pause of -g ms), from /proc/PID/schedstat
 * (ns), utime/stime from /proc/PID/stat (clock ticks); client_us: this
 * process's own CPU time from the trigger to the last stream's event, the
 * mean of the rounds.  Exit status 0, or 1
 * with the reason on stderr (a stream closed or answered other than 200,
 * the trigger failed, a timeout).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXPAT   8
#define PATLEN   256          /* a marker's longest */
#define HDRMAX   4096         /* the response headers' longest */
#define RBUF     (256 * 1024)

enum { C_IDLE, C_CONNECTING, C_HEADERS, C_BODY, C_CLOSED };
/* chunked decoding */
enum { K_SIZE, K_EXT, K_SIZE_LF, K_DATA, K_DATA_CR, K_DATA_LF, K_TRAILER };

typedef struct {
    int       fd;
    uint8_t   state;
    uint8_t   chunked;
    uint8_t   kstate;
    uint8_t   stage;          /* markers matched so far */
    uint8_t   done;           /* all markers of the phase matched */
    uint16_t  carry_len;
    size_t    krem;           /* chunk bytes left */
    char     *hdr;            /* while C_HEADERS */
    size_t    hdr_len;
    char      carry[PATLEN];  /* the tail not yet matched */
} conn_t;

static conn_t   *conns;
static int       nconns = 10000, rounds = 5, port, ep;
static const char *addr = "127.0.0.1", *path, *tpath, *tbody = "",
                  *ttype = "text/plain";
static int       texpect, hold_ms, gap_ms = 300, window = 256, timeout_s = 60, verbose;
static long      wpid;
static char     *ready[MAXPAT], *event_fmt[MAXPAT], *cur[MAXPAT];
static int       nready, nevent, ncur;
static size_t    curlen[MAXPAT], maxlen;
static int       pending;     /* streams whose phase is not done */
static double   *arrive;      /* per stream, this round */
static char      prefix[64];
static char      rbuf[RBUF];
static char      scratch[RBUF + PATLEN];

static void
die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fanout: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static char *
unescape(const char *s)
{
    char *o = malloc(strlen(s) + 1), *p = o;
    for (; *s; s++) {
        if (*s != '\\' || !s[1]) { *p++ = *s; continue; }
        s++;
        *p++ = *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s == 't' ? '\t' : *s;
    }
    *p = 0;
    return o;
}

/* s with every {r} replaced by the round's token */
static char *
subst(const char *s, int r)
{
    char tok[96], *o;
    size_t n = 0, tl;
    const char *p;
    snprintf(tok, sizeof tok, "%s%d", prefix, r);
    tl = strlen(tok);
    o = malloc(strlen(s) * (tl + 1) + 1);
    for (p = s; *p; ) {
        if (!strncmp(p, "{r}", 3)) { memcpy(o + n, tok, tl); n += tl; p += 3; }
        else o[n++] = *p++;
    }
    o[n] = 0;
    return o;
}

/* the phase's markers: the ready ones, or round r's */
static void
set_markers(char **pats, int n, int r)
{
    int i;
    for (i = 0; i < ncur; i++) free(cur[i]);
    ncur = n;
    maxlen = 1;
    for (i = 0; i < n; i++) {
        cur[i] = r ? subst(pats[i], r) : strdup(pats[i]);
        curlen[i] = strlen(cur[i]);
        if (curlen[i] >= PATLEN) die("a marker is longer than %d bytes", PATLEN - 1);
        if (curlen[i] > maxlen) maxlen = curlen[i];
    }
}

static void
phase_start(void)
{
    int i;
    pending = 0;
    for (i = 0; i < nconns; i++) {
        conns[i].stage = 0;
        conns[i].carry_len = 0;
        conns[i].done = 0;
    }
    pending = nconns;
}

/* body bytes of stream i: advance its markers */
static void
match(int i, const char *d, size_t len)
{
    conn_t *c = &conns[i];
    size_t wl, pos = 0, keep;
    char *w;

    if (c->done || !len) return;
    w = scratch;
    memcpy(w, c->carry, c->carry_len);
    memcpy(w + c->carry_len, d, len);
    wl = c->carry_len + len;
    while (c->stage < ncur) {
        char *f = memmem(w + pos, wl - pos, cur[c->stage], curlen[c->stage]);
        if (!f) break;
        pos = f - w + curlen[c->stage];
        c->stage++;
    }
    if (c->stage == ncur) {
        c->done = 1;
        c->carry_len = 0;
        arrive[i] = now_ms();
        pending--;
        return;
    }
    keep = wl - pos;
    if (keep > maxlen - 1) keep = maxlen - 1;
    memmove(c->carry, w + wl - keep, keep);
    c->carry_len = keep;
}

/* body bytes as they came: de-chunked when chunked */
static void
body(int i, const char *d, size_t len)
{
    conn_t *c = &conns[i];
    size_t k = 0;

    if (!c->chunked) { match(i, d, len); return; }
    while (k < len) {
        char ch = d[k];
        switch (c->kstate) {
        case K_SIZE:
            if (ch >= '0' && ch <= '9') c->krem = c->krem * 16 + (ch - '0');
            else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
                c->krem = c->krem * 16 + ((ch | 0x20) - 'a' + 10);
            else if (ch == '\r') c->kstate = K_SIZE_LF;
            else c->kstate = K_EXT;
            k++;
            break;
        case K_EXT:
            if (ch == '\r') c->kstate = K_SIZE_LF;
            k++;
            break;
        case K_SIZE_LF:
            if (ch != '\n') die("stream %d: bad chunk size line", i);
            c->kstate = c->krem ? K_DATA : K_TRAILER;
            k++;
            break;
        case K_DATA: {
            size_t n = len - k < c->krem ? len - k : c->krem;
            match(i, d + k, n);
            k += n;
            c->krem -= n;
            if (!c->krem) c->kstate = K_DATA_CR;
            break;
        }
        case K_DATA_CR:
            if (ch != '\r') die("stream %d: no CRLF after a chunk", i);
            c->kstate = K_DATA_LF;
            k++;
            break;
        case K_DATA_LF:
            if (ch != '\n') die("stream %d: no CRLF after a chunk", i);
            c->kstate = K_SIZE;
            c->krem = 0;
            k++;
            break;
        case K_TRAILER:     /* the last chunk: the server ended the stream */
            k = len;
            break;
        }
    }
}

static void
headers(int i, const char *d, size_t len)
{
    conn_t *c = &conns[i];
    char *end, *p;
    size_t hl, n = len;

    if (c->hdr_len + n > HDRMAX) n = HDRMAX - c->hdr_len;
    memcpy(c->hdr + c->hdr_len, d, n);
    c->hdr_len += n;
    c->hdr[c->hdr_len] = 0;
    end = memmem(c->hdr, c->hdr_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->hdr_len >= HDRMAX) die("stream %d: response headers over %d bytes", i, HDRMAX);
        return;
    }
    hl = end + 4 - c->hdr;
    if (strncmp(c->hdr, "HTTP/1.1 200 ", 13) && strncmp(c->hdr, "HTTP/1.0 200 ", 13)) {
        end[0] = 0;
        die("stream %d: answered \"%.300s\", not 200", i, c->hdr);
    }
    for (p = c->hdr; p < end; p++) {
        if (!strncasecmp(p, "\ntransfer-encoding:", 19)) {
            char *v = p + 19;
            while (*v == ' ') v++;
            c->chunked = !strncasecmp(v, "chunked", 7);
        }
    }
    c->state = C_BODY;
    c->kstate = K_SIZE;
    c->krem = 0;
    /* what came after the headers: from the copy, whatever was cut off
       at HDRMAX from d */
    {
        size_t rest_hdr = c->hdr_len - hl;
        char *tail = malloc(rest_hdr + (len - n) + 1);
        memcpy(tail, c->hdr + hl, rest_hdr);
        memcpy(tail + rest_hdr, d + n, len - n);
        free(c->hdr);
        c->hdr = NULL;
        if (ncur == 0) {            /* no ready markers: the headers suffice */
            c->done = 1;
            arrive[i] = now_ms();
            pending--;
        }
        body(i, tail, rest_hdr + (len - n));
        free(tail);
    }
}

static int opened;

static void
open_one(void)
{
    struct sockaddr_in sa;
    struct epoll_event ev;
    conn_t *c = &conns[opened];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s (stream %d)", strerror(errno), opened);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *) &sa, sizeof sa) && errno != EINPROGRESS)
        die("connect: %s (stream %d)", strerror(errno), opened);
    c->fd = fd;
    c->state = C_CONNECTING;
    c->hdr = malloc(HDRMAX + 1);
    c->hdr_len = 0;
    ev.events = EPOLLOUT | EPOLLIN;
    ev.data.u32 = opened;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) die("epoll_ctl: %s", strerror(errno));
    opened++;
}

static char reqbuf[2048];
static size_t reqlen;

static void
on_event(int i, uint32_t evs)
{
    conn_t *c = &conns[i];
    ssize_t n;

    if (c->state == C_CONNECTING && (evs & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        struct epoll_event ev;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) die("connect: %s (stream %d)", strerror(err), i);
        n = write(c->fd, reqbuf, reqlen);
        if (n != (ssize_t) reqlen) die("stream %d: the GET was not sent at once", i);
        c->state = C_HEADERS;
        ev.events = EPOLLIN;
        ev.data.u32 = i;
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    for (;;) {
        n = read(c->fd, rbuf, sizeof rbuf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) {
            die("stream %d closed by the server (%s)%s", i,
                n ? strerror(errno) : "EOF",
                c->state == C_HEADERS ? " before its response headers" : "");
        }
        if (c->state == C_HEADERS) {
            headers(i, rbuf, n);
        } else {
            body(i, rbuf, n);
        }
        if (n < (ssize_t) sizeof rbuf) return;
    }
}

#define TRIGGER_ID 0xffffffffu

static int    tfd = -1;
static char   tresp[8192];
static size_t tresp_len;
static int    tdone;

static void
trigger_event(void)
{
    for (;;) {
        ssize_t n = read(tfd, tresp + tresp_len, sizeof tresp - 1 - tresp_len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n < 0) die("trigger: read: %s", strerror(errno));
        if (n == 0 || tresp_len + n >= sizeof tresp - 1) {
            tresp_len += n;
            tresp[tresp_len] = 0;
            tdone = 1;
            epoll_ctl(ep, EPOLL_CTL_DEL, tfd, NULL);
            close(tfd);
            tfd = -1;
            return;
        }
        tresp_len += n;
    }
}

static void
poll_once(int ms)
{
    struct epoll_event evs[1024];
    int k, n = epoll_wait(ep, evs, 1024, ms);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (k = 0; k < n; k++) {
        if (evs[k].data.u32 == TRIGGER_ID) trigger_event();
        else on_event(evs[k].data.u32, evs[k].events);
    }
}

/* the streams' data for ms, as it comes */
static void
drain(int ms)
{
    double end = now_ms() + ms;
    for (;;) {
        double left = end - now_ms();
        if (left <= 0) break;
        poll_once((int) left + 1);
    }
}

/* the worker's CPU: ns from schedstat, utime/stime ticks from stat */
static void
worker_cpu(unsigned long long *ns, unsigned long *ut, unsigned long *st)
{
    char fn[64], buf[4096], *p;
    FILE *f;
    int k;
    *ns = 0; *ut = *st = 0;
    if (!wpid) return;
    snprintf(fn, sizeof fn, "/proc/%ld/schedstat", wpid);
    if ((f = fopen(fn, "r"))) { if (fscanf(f, "%llu", ns) != 1) *ns = 0; fclose(f); }
    snprintf(fn, sizeof fn, "/proc/%ld/stat", wpid);
    if (!(f = fopen(fn, "r"))) die("%s: %s", fn, strerror(errno));
    buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
    fclose(f);
    p = strrchr(buf, ')');
    if (!p) die("%s: unreadable", fn);
    p += 2;
    for (k = 0; k < 11 && p; k++) p = strchr(p + 1, ' ');   /* to field 14 */
    if (!p || sscanf(p, " %lu %lu", ut, st) != 2) die("%s: unreadable", fn);
}

static long
worker_rss(void)
{
    char fn[64], line[256];
    long kb = -1;
    FILE *f;
    if (!wpid) return -1;
    snprintf(fn, sizeof fn, "/proc/%ld/status", wpid);
    if (!(f = fopen(fn, "r"))) die("%s: %s", fn, strerror(errno));
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

/* this process's CPU time, µs */
static double
self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6
           + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

static int
cmp_d(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

/* the trigger's status, once its answer is complete: a wrong one ends the
   run at once */
static int
trigger_status(int r)
{
    int status;
    if (sscanf(tresp, "HTTP/1.%*d %d", &status) != 1)
        die("round %d: the trigger's answer: \"%.200s\"", r, tresp);
    if (texpect ? status != texpect : status / 100 != 2)
        die("round %d: the trigger answered \"%.300s\"", r, tresp);
    return status;
}

static void
fire(int r)
{
    struct sockaddr_in sa;
    struct epoll_event ev;
    char *b = subst(tbody, r), req[4096];
    int len, one = 1;

    tfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (tfd < 0) die("trigger: socket: %s", strerror(errno));
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    if (connect(tfd, (struct sockaddr *) &sa, sizeof sa))
        die("trigger: connect: %s", strerror(errno));
    setsockopt(tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    len = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: %s\r\n"
                   "Content-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s", tpath, addr, ttype,
                   strlen(b), b);
    free(b);
    fcntl(tfd, F_SETFL, O_NONBLOCK);
    ev.events = EPOLLIN;
    ev.data.u32 = TRIGGER_ID;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    tresp_len = 0;
    tdone = 0;
    if (write(tfd, req, len) != len) die("trigger: the request was not sent at once");
}

int
main(int argc, char **argv)
{
    struct rlimit rl;
    int opt, i, r;
    double t0, *ms, *cpu, ready_ms, client_us = 0;
    long rss0, rss1, rss2;
    unsigned long ut_sum = 0, st_sum = 0;

    while ((opt = getopt(argc, argv, "p:H:u:n:r:y:e:t:b:T:s:w:g:G:W:x:v")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'H': addr = optarg; break;
        case 'u': path = optarg; break;
        case 'n': nconns = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'y': if (nready == MAXPAT) die("at most %d -y", MAXPAT);
                  ready[nready++] = unescape(optarg); break;
        case 'e': if (nevent == MAXPAT) die("at most %d -e", MAXPAT);
                  event_fmt[nevent++] = unescape(optarg); break;
        case 't': tpath = optarg; break;
        case 'b': tbody = unescape(optarg); break;
        case 'T': ttype = optarg; break;
        case 's': texpect = atoi(optarg); break;
        case 'w': wpid = atol(optarg); break;
        case 'g': gap_ms = atoi(optarg); break;
        case 'G': hold_ms = atoi(optarg); break;
        case 'W': window = atoi(optarg); break;
        case 'x': timeout_s = atoi(optarg); break;
        case 'v': verbose = 1; break;
        default:
            fprintf(stderr, "usage: fanout -p PORT -u PATH -t PATH -e EVENT"
                    " [-n N] [-r R] [-y READY]... [-b BODY] [-T TYPE] [-s STATUS]"
                    " [-w PID] [-g MS] [-G MS] [-W N] [-x S] [-H ADDR] [-v]\n");
            return 2;
        }
    }
    if (!port || !path || !tpath || !nevent || nconns < 1 || rounds < 1 || window < 1)
        die("needs -p, -u, -t and -e (and N, R, W of at least 1)");

    /* the streams need N descriptors: the soft limit up to the hard one */
    if (getrlimit(RLIMIT_NOFILE, &rl)) die("getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl)) die("setrlimit: %s", strerror(errno));
    if ((rlim_t) nconns + 16 > rl.rlim_cur)
        die("%d streams need more descriptors than the limit, %lu", nconns,
            (unsigned long) rl.rlim_cur);

    snprintf(prefix, sizeof prefix, "f%ld-%ld-", (long) getpid(), (long) time(NULL) % 100000);
    conns = calloc(nconns, sizeof *conns);
    arrive = calloc(nconns, sizeof *arrive);
    ms = calloc(rounds, sizeof *ms);
    cpu = calloc(rounds, sizeof *cpu);
    if (!conns || !arrive || !ms || !cpu) die("out of memory");
    reqlen = snprintf(reqbuf, sizeof reqbuf, "GET %s HTTP/1.1\r\nHost: %s\r\n"
                      "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                      path, addr);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));

    /* the streams, W connecting at a time (the listen backlog is 511) */
    rss0 = worker_rss();
    set_markers(ready, nready, 0);
    phase_start();
    t0 = now_ms();
    while (pending) {
        /* opened, and not yet ready */
        while (opened < nconns && opened - (nconns - pending) < window) open_one();
        poll_once(100);
        if (now_ms() - t0 > timeout_s * 1e3)
            die("%d of %d streams not ready after %d s (%d opened)", pending,
                nconns, timeout_s, opened);
    }
    ready_ms = now_ms() - t0;
    drain(gap_ms);
    rss1 = worker_rss();
    printf("READY n=%d ready_ms=%.0f\n", nconns, ready_ms);
    fflush(stdout);
    if (verbose)
        fprintf(stderr, "fanout: %d streams ready in %.0f ms\n", nconns, ready_ms);
    drain(hold_ms);

    for (r = 1; r <= rounds; r++) {
        unsigned long long ns0, ns1;
        unsigned long ut0, st0, ut1, st1;
        double tr, *sorted;
        int status;

        set_markers(event_fmt, nevent, r);
        phase_start();
        double c0;

        worker_cpu(&ns0, &ut0, &st0);
        c0 = self_cpu_us();
        tr = now_ms();
        fire(r);
        while (pending) {
            poll_once(100);
            if (tdone) trigger_status(r);
            if (now_ms() - tr > timeout_s * 1e3)
                die("round %d: %d of %d streams without the event after %d s"
                    " (trigger: %.200s)", r, pending, nconns, timeout_s,
                    tresp_len ? tresp : "no answer");
        }
        ms[r - 1] = 0;
        for (i = 0; i < nconns; i++) {
            arrive[i] -= tr;
            if (arrive[i] > ms[r - 1]) ms[r - 1] = arrive[i];
        }
        while (!tdone) {
            poll_once(100);
            if (now_ms() - tr > timeout_s * 1e3) die("round %d: the trigger got no answer", r);
        }
        status = trigger_status(r);
        client_us += self_cpu_us() - c0;
        drain(gap_ms);
        worker_cpu(&ns1, &ut1, &st1);
        cpu[r - 1] = ns1 ? (ns1 - ns0) / 1e3 : (ut1 + st1 - ut0 - st0) * 1e6 / sysconf(_SC_CLK_TCK);
        ut_sum += ut1 - ut0;
        st_sum += st1 - st0;
        sorted = arrive;
        qsort(sorted, nconns, sizeof *sorted, cmp_d);
        printf("ROUND r=%d ms=%.2f first_ms=%.2f p50_ms=%.2f cpu_us=%.0f"
               " utime=%lu stime=%lu status=%d\n", r, ms[r - 1], sorted[0],
               sorted[nconns / 2], cpu[r - 1], ut1 - ut0, st1 - st0, status);
        if (verbose)
            fprintf(stderr, "fanout: round %d: %.1f ms (first %.1f, median %.1f),"
                    " worker %.0f us\n", r, ms[r - 1], sorted[0],
                    sorted[nconns / 2], cpu[r - 1]);
        fflush(stdout);
    }
    rss2 = worker_rss();

    {
        double sm[rounds], sc[rounds], med, medc;
        memcpy(sm, ms, sizeof sm);
        memcpy(sc, cpu, sizeof sc);
        qsort(sm, rounds, sizeof *sm, cmp_d);
        qsort(sc, rounds, sizeof *sc, cmp_d);
        med = rounds % 2 ? sm[rounds / 2] : (sm[rounds / 2 - 1] + sm[rounds / 2]) / 2;
        medc = rounds % 2 ? sc[rounds / 2] : (sc[rounds / 2 - 1] + sc[rounds / 2]) / 2;
        printf("FANOUT n=%d rounds=%d ready_ms=%.0f median_ms=%.2f min_ms=%.2f"
               " max_ms=%.2f cpu_us=%.0f cpu_us_per_stream=%.2f kernel_pct=%.0f"
               " client_us_per_stream=%.2f",
               nconns, rounds, ready_ms, med, sm[0], sm[rounds - 1], medc,
               medc / nconns, ut_sum + st_sum ? 100.0 * st_sum / (ut_sum + st_sum) : 0,
               client_us / rounds / nconns);
        if (wpid)
            printf(" rss_before_kb=%ld rss_idle_kb=%ld rss_after_kb=%ld"
                   " idle_kb_per_stream=%.2f after_kb_per_stream=%.2f",
                   rss0, rss1, rss2, (double) (rss1 - rss0) / nconns,
                   (double) (rss2 - rss0) / nconns);
        printf("\n");
    }
    return 0;
}

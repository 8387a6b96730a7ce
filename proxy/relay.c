/* The proxy's data plane in C: ttrpc frames between clients and backends, on one thread.
 *
 * The contract (what Python relies on) is in proxy/relay.py; in short: the relay owns the
 * front door's listening socket and every connection it accepts. A Request it can route
 * (a service in the route table, every namespace it names already known, a replica it can
 * reach) goes, with only its stream id rewritten, to the replica with the fewest open calls,
 * over the client's own connection to it (made on its first call there, as if the client
 * talked to the backend itself: a client that stops reading holds back only its own
 * calls), and the backend's frames come back the same way. Every other frame of a client (own
 * services, unknown services, unknown namespaces, requests it cannot read, replicas it
 * cannot reach, everything while closing) goes verbatim, with the client's own stream ids,
 * over a socketpair to the Python splice (proxy/splice.py's Front), which answers it as it
 * answers any client; its frames go back to the client verbatim. The Python end of each
 * socketpair is announced by writing its fd (a native int) to the notify pipe.
 *
 * The relay answers itself only what needs the whole connection's state: stream ids that
 * are even or do not increase, Data for a stream it does not know, frames over the size
 * limit (their bodies are skipped unread), and the calls of a backend connection that
 * drops (UNAVAILABLE naming the service and the process).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "relay.h"

#define HEADER 10
#define MAX_MESSAGE (4u << 20)
#define T_REQUEST 1
#define T_RESPONSE 2
#define T_DATA 3
#define F_REMOTE_CLOSED 1
#define F_REMOTE_OPEN 2
#define F_NO_DATA 4
#define MAX_SID 0x7fffffffu
#define ADOPT (1u << 20) /* how far a backend connection's next id jumps to keep a client's */
#define HIGH_WATER (256u << 10)
#define LOW_WATER (64u << 10)
#define READ_MIN (64u << 10)
#define SCRATCH_KEEP (1u << 20)
#define OUT_KEEP (16u << 10)
#define RETRY_NS 500000000LL /* a replica that refused a connection is left out this long */
#define EVENTS 256
#define DRAIN_TICK_MS 10 /* while closing: how often an untold RELAY_DRAINED is tried again */

#define CODE_INVALID_ARGUMENT 3
#define CODE_RESOURCE_EXHAUSTED 8
#define CODE_UNAVAILABLE 14

static const char NS_KEY[] = "containerd-namespace-ttrpc";

/* buffers ------------------------------------------------------------------------------ */

typedef struct {
    uint8_t *p;
    size_t off, len, cap; /* bytes p[off:len] are pending */
} buf;

static int buf_reserve(buf *b, size_t more) {
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + more <= b->cap)
        return 0;
    if (b->off) { /* compact before growing */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + more <= b->cap)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline size_t buf_pending(const buf *b) { return b->len - b->off; }

static void buf_free(buf *b) {
    free(b->p);
    b->p = NULL;
    b->off = b->len = b->cap = 0;
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static inline uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* stream maps: uint32 id -> (ptr, aux, extra); id 0 is never a stream ------------------- */

typedef struct {
    uint32_t key, aux, extra;
    void *ptr;
} slot;

typedef struct {
    slot *s;
    uint32_t cap, n; /* cap: a power of two, or 0 */
} map;

static inline uint32_t map_home(uint32_t key, uint32_t cap) { return (key * 0x9E3779B1u) & (cap - 1); }

static slot *map_get(const map *m, uint32_t key) {
    if (!m->cap)
        return NULL;
    for (uint32_t i = map_home(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->s[i].key == key)
            return &m->s[i];
        if (!m->s[i].key)
            return NULL;
    }
}

static slot *map_put(map *m, uint32_t key);

static int map_grow(map *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    slot *old = m->s;
    uint32_t oldcap = m->cap;
    m->s = calloc(cap, sizeof(slot));
    if (!m->s) {
        m->s = old;
        return -1;
    }
    m->cap = cap;
    m->n = 0;
    for (uint32_t i = 0; i < oldcap; i++)
        if (old[i].key)
            *map_put(m, old[i].key) = old[i];
    free(old);
    return 0;
}

/* The slot for ``key`` (new ones zeroed but for the key); NULL when out of memory. */
static slot *map_put(map *m, uint32_t key) {
    if ((m->n + 1) * 4 > m->cap * 3 && map_grow(m) < 0)
        return NULL;
    uint32_t i = map_home(key, m->cap);
    while (m->s[i].key && m->s[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->s[i].key) {
        memset(&m->s[i], 0, sizeof(slot));
        m->s[i].key = key;
        m->n++;
    }
    return &m->s[i];
}

/* Remove the slot (linear probing, backward shift: no tombstones). */
static void map_del(map *m, slot *at) {
    uint32_t mask = m->cap - 1, i = (uint32_t)(at - m->s), j = i;
    m->s[i].key = 0;
    m->n--;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->s[j].key)
            return;
        uint32_t home = map_home(m->s[j].key, m->cap);
        /* move j back to i unless its home lies cyclically in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            m->s[i] = m->s[j];
            m->s[j].key = 0;
            i = j;
        }
    }
}

static void map_free(map *m) {
    free(m->s);
    m->s = NULL;
    m->cap = m->n = 0;
}

/* string sets (known namespaces), guarded by the relay's lock ------------------------- */

typedef struct {
    char **s; /* each: a uint32 length, then the bytes */
    uint32_t cap, n;
} strset;

static uint32_t fnv(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static inline uint32_t str_len(const char *s) {
    uint32_t n;
    memcpy(&n, s, 4);
    return n;
}

static char **strset_find(const strset *set, const uint8_t *p, size_t n) {
    if (!set->cap)
        return NULL;
    for (uint32_t i = fnv(p, n) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
        char *s = set->s[i];
        if (!s)
            return &set->s[i];
        if (str_len(s) == n && !memcmp(s + 4, p, n))
            return &set->s[i];
    }
}

static int strset_insert_owned(strset *set, char *item);

static int strset_rebuild(strset *set, uint32_t cap, const char *skip) {
    char **old = set->s;
    uint32_t oldcap = set->cap;
    set->s = calloc(cap, sizeof(char *));
    if (!set->s) {
        set->s = old;
        return -1;
    }
    set->cap = cap;
    set->n = 0;
    for (uint32_t i = 0; i < oldcap; i++) {
        if (!old[i])
            continue;
        if (old[i] == skip)
            free(old[i]);
        else
            strset_insert_owned(set, old[i]);
    }
    free(old);
    return 0;
}

static int strset_insert_owned(strset *set, char *item) {
    if ((set->n + 1) * 2 > set->cap && strset_rebuild(set, set->cap ? set->cap * 2 : 16, NULL) < 0)
        return -1;
    char **at = strset_find(set, (uint8_t *)item + 4, str_len(item));
    if (*at) {
        free(item);
        return 0;
    }
    *at = item;
    set->n++;
    return 0;
}

static int strset_add(strset *set, const uint8_t *p, size_t n) {
    char **at = strset_find(set, p, n);
    if (at && *at)
        return 0;
    char *item = malloc(4 + n);
    if (!item)
        return -1;
    uint32_t len = (uint32_t)n;
    memcpy(item, &len, 4);
    memcpy(item + 4, p, n);
    return strset_insert_owned(set, item);
}

static void strset_discard(strset *set, const uint8_t *p, size_t n) {
    char **at = strset_find(set, p, n);
    if (at && *at)
        strset_rebuild(set, set->cap, *at);
}

static void strset_free(strset *set) {
    for (uint32_t i = 0; i < set->cap; i++)
        free(set->s[i]);
    free(set->s);
    set->s = NULL;
    set->cap = set->n = 0;
}

/* the relay's objects ------------------------------------------------------------------ */

enum kind { K_LISTEN, K_WAKE, K_CLIENT, K_UPSTREAM, K_PUNT };

typedef struct conn conn;
typedef struct replica replica;

typedef struct {
    char *name;
    replica **replicas;
    uint32_t n;
} process;

struct replica {
    process *proc;
    struct sockaddr_un addr;
    socklen_t addrlen;
    uint32_t index;     /* in every client's ``links`` */
    uint32_t load;      /* calls open on it, over every client's connection */
    int64_t down_until; /* monotonic ns before which it is not tried */
};

typedef struct {
    char *name;
    uint32_t len;
    process *proc;
} route;

struct conn {
    int fd;
    enum kind kind;
    int dead, refs, on_grave;
    uint32_t events; /* as registered with epoll */
    buf in, out;
    conn *next_dirty, *next_grave;
    conn *prev_all, *next_all; /* every open connection, for the stop */
    int dirty;
    uint32_t pausers; /* blocked clients with streams here: reading waits for them */
    conn **waiters;   /* clients not read until this connection's output drains */
    uint32_t nwaiters, capwaiters;
    /* a client */
    uint32_t last_sid;
    uint64_t skip;   /* bytes of an oversized frame still to discard */
    map streams;     /* client id -> (upstream conn, backend id) or (PUNTED, 0) */
    conn *punt;
    conn **paused;   /* connections this client, while blocked, keeps from being read */
    uint32_t npaused, cappaused;
    int blocked;
    conn *waiting_on; /* the destination this client waits for */
    /* an upstream: backend id -> (client, client id, route index | SENDING) */
    replica *rep;
    uint64_t next_sid;
    int retired, close_when_flushed;
    map ups;
    conn **links; /* its live connection to each replica (by index), or NULL */
    /* a punt connection, or an upstream: the client it serves (NULL once retired) */
    conn *owner;
};

#define SENDING 0x80000000u
static conn PUNTED_MARK;
#define PUNTED (&PUNTED_MARK)

struct relay {
    int ep, wake, notify;
    conn *listen, *wakec;
    process **procs;
    uint32_t nprocs, nreplicas;
    uint32_t *routes;   /* open addressing on the name: index into route_list + 1, 0 empty */
    uint32_t caproutes;
    route *route_list;
    uint32_t nroute_list;
    pthread_mutex_t lock; /* guards known, stop, closing */
    strset known;
    int stop, closing, listen_closed, drained_told;
    int open_streams;
    conn *all, *dirty, *grave;
    buf scratch; /* what connections without a partial frame read into */
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* epoll interest ----------------------------------------------------------------------- */

static int wants_read(const conn *c) { return !c->dead && !c->pausers && !c->waiting_on; }

static void update_events(relay *r, conn *c) {
    if (c->dead)
        return;
    uint32_t want = (wants_read(c) ? EPOLLIN : 0) | (buf_pending(&c->out) ? EPOLLOUT : 0);
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = want;
}

static conn *conn_new(relay *r, int fd, enum kind kind) {
    conn *c = calloc(1, sizeof(conn));
    if (!c)
        return NULL;
    c->fd = fd;
    c->kind = kind;
    c->events = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(c);
        return NULL;
    }
    c->next_all = r->all;
    if (r->all)
        r->all->prev_all = c;
    r->all = c;
    return c;
}

static void mark_dirty(relay *r, conn *c) {
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = r->dirty;
        r->dirty = c;
    }
}

static void unref(relay *r, conn *c) {
    if (--c->refs == 0 && c->dead && !c->on_grave) {
        c->on_grave = 1;
        c->next_grave = r->grave;
        r->grave = c;
    }
}

/* No call left open and every answer written out to its client (stopping drops what a
 * client has not read yet). */
static int drained(const relay *r) {
    if (r->open_streams)
        return 0;
    for (const conn *c = r->all; c; c = c->next_all)
        if (c->kind == K_CLIENT && !c->dead && buf_pending(&c->out))
            return 0;
    return 1;
}

/* Closing and drained: tell Python once, on the notify pipe (RELAY_DRAINED). relay_run asks
 * after every round of events, and on a tick while untold (a full pipe). */
static void tell_if_drained(relay *r) {
    if (r->drained_told || !__atomic_load_n(&r->closing, __ATOMIC_RELAXED) || !drained(r))
        return;
    int word = RELAY_DRAINED;
    if (write(r->notify, &word, sizeof word) == (ssize_t)sizeof word)
        r->drained_told = 1;
}

/* relay_run's epoll timeout: none, but while closing and not yet told, a retry tick (a
 * full notify pipe, a slow client that went away with its answers unread). */
static int wait_ms(const relay *r) {
    return __atomic_load_n(&r->closing, __ATOMIC_RELAXED) && !r->drained_told ? DRAIN_TICK_MS : -1;
}

/* One carried call is over (answered, given up, or its backend gone). */
static void call_ended(relay *r) {
    __atomic_store_n(&r->open_streams, r->open_streams - 1, __ATOMIC_RELAXED);
    tell_if_drained(r);
}

static void conn_close(relay *r, conn *c);

/* writing ------------------------------------------------------------------------------ */

static void client_block(relay *r, conn *c);

/* Queue one frame for ``c``; it leaves with the others when this turn's reads are done. */
static void put_frame(relay *r, conn *c, uint32_t sid, uint8_t type, uint8_t flags, const uint8_t *body,
                      uint32_t len) {
    if (c->dead)
        return;
    if (buf_reserve(&c->out, HEADER + (size_t)len) < 0) {
        conn_close(r, c);
        return;
    }
    uint8_t *p = c->out.p + c->out.len;
    put_be32(p, len);
    put_be32(p + 4, sid);
    p[8] = type;
    p[9] = flags;
    if (len)
        memcpy(p + HEADER, body, len);
    c->out.len += HEADER + (size_t)len;
    mark_dirty(r, c);
    if (c->kind == K_CLIENT && !c->blocked && buf_pending(&c->out) > HIGH_WATER)
        client_block(r, c);
}

static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* A Response of stream ``sid`` with status (code, message) and nothing else. */
static void send_error(relay *r, conn *c, uint32_t sid, uint32_t code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    uint8_t status[sizeof msg + 16], body[sizeof msg + 32];
    size_t s = 0, b = 0;
    status[s++] = 0x08;
    s += put_varint(status + s, code);
    if (n) {
        status[s++] = 0x12;
        s += put_varint(status + s, (uint64_t)n);
        memcpy(status + s, msg, (size_t)n);
        s += (size_t)n;
    }
    body[b++] = 0x0A;
    b += put_varint(body + b, s);
    memcpy(body + b, status, s);
    b += s;
    put_frame(r, c, sid, T_RESPONSE, 0, body, (uint32_t)b);
}

static void release_waiters(relay *r, conn *dest) {
    for (uint32_t i = 0; i < dest->nwaiters; i++) {
        conn *w = dest->waiters[i];
        w->waiting_on = NULL;
        update_events(r, w);
    }
    dest->nwaiters = 0;
}

static void client_unblock(relay *r, conn *c) {
    c->blocked = 0;
    for (uint32_t i = 0; i < c->npaused; i++) {
        conn *src = c->paused[i];
        if (!--src->pausers)
            update_events(r, src);
        unref(r, src);
    }
    c->npaused = 0;
}

static void flush(relay *r, conn *c) {
    while (buf_pending(&c->out)) {
        ssize_t n = write(c->fd, c->out.p + c->out.off, buf_pending(&c->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                conn_close(r, c);
                return;
            }
            break;
        }
        c->out.off += (size_t)n;
    }
    size_t left = buf_pending(&c->out);
    if (!left) {
        c->out.off = c->out.len = 0;
        if (c->out.cap > OUT_KEEP) /* give a burst's memory back */
            buf_free(&c->out);
        if (c->close_when_flushed) {
            conn_close(r, c);
            return;
        }
    }
    if (left < LOW_WATER) {
        if (c->nwaiters)
            release_waiters(r, c);
        if (c->blocked)
            client_unblock(r, c);
    }
    update_events(r, c);
}

/* Append ``c`` to the array (*arr, *n, *cap); -1 when out of memory. */
static int push(conn ***arr, uint32_t *n, uint32_t *cap, conn *c) {
    if (*n == *cap) {
        uint32_t more = *cap ? *cap * 2 : 4;
        conn **p = realloc(*arr, more * sizeof(conn *));
        if (!p)
            return -1;
        *arr = p;
        *cap = more;
    }
    (*arr)[(*n)++] = c;
    return 0;
}

/* A client whose output is over the high water mark stops its sources being read. */
static void pause_source(relay *r, conn *c, conn *src) {
    for (uint32_t i = 0; i < c->npaused; i++)
        if (c->paused[i] == src)
            return;
    if (push(&c->paused, &c->npaused, &c->cappaused, src) < 0)
        return;
    src->refs++;
    if (src->pausers++ == 0)
        update_events(r, src);
}

static void client_block(relay *r, conn *c) {
    c->blocked = 1;
    for (uint32_t i = 0; i < c->streams.cap; i++) {
        slot *s = &c->streams.s[i];
        if (s->key && s->ptr != PUNTED)
            pause_source(r, c, s->ptr);
    }
    if (c->punt)
        pause_source(r, c, c->punt);
}

/* ``c`` just queued bytes for ``dest``: past the high water mark, ``c`` is not read until
 * ``dest`` drains (memory stays bounded when a backend reads slower than a client sends). */
static void maybe_wait(relay *r, conn *c, conn *dest) {
    if (c->waiting_on || buf_pending(&dest->out) <= HIGH_WATER)
        return;
    if (push(&dest->waiters, &dest->nwaiters, &dest->capwaiters, c) < 0)
        return;
    c->waiting_on = dest;
    update_events(r, c);
}

/* streams ------------------------------------------------------------------------------ */

/* The backend ended stream ``bs`` of ``up``: forget it on both sides. */
static void stream_ended(relay *r, conn *up, slot *bs) {
    conn *client = bs->ptr;
    slot *fs = map_get(&client->streams, bs->aux);
    if (fs && fs->ptr == up)
        map_del(&client->streams, fs);
    map_del(&up->ups, bs);
    call_ended(r);
    up->rep->load--;
    if (up->retired && !up->ups.n) {
        up->close_when_flushed = 1;
        mark_dirty(r, up);
    }
}

/* ``client`` is gone (or gave up stream ``bsid``): drop the backend's replies, and end
 * the backend's input when the client could still send, so its handler sees the end. */
static void forget(relay *r, conn *up, uint32_t bsid) {
    slot *bs = map_get(&up->ups, bsid);
    if (!bs)
        return;
    int sending = (bs->extra & SENDING) != 0;
    map_del(&up->ups, bs);
    call_ended(r);
    up->rep->load--;
    if (sending)
        put_frame(r, up, bsid, T_DATA, F_REMOTE_CLOSED | F_NO_DATA, NULL, 0);
    if (up->retired && !up->ups.n) {
        up->close_when_flushed = 1;
        mark_dirty(r, up);
    }
}

static void unlink_upstream(conn *up) {
    if (up->owner && up->owner->links[up->rep->index] == up)
        up->owner->links[up->rep->index] = NULL;
    up->owner = NULL;
}

static void retire(conn *up) {
    up->retired = 1;
    unlink_upstream(up);
}

/* connections -------------------------------------------------------------------------- */

static void conn_close(relay *r, conn *c) {
    if (c->dead)
        return;
    c->dead = 1;
    epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (!r->listen_closed && c != r->listen && r->listen->pausers) { /* an fd is free again */
        r->listen->pausers = 0;
        update_events(r, r->listen);
    }
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        r->all = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    if (c->waiting_on) {
        conn *d = c->waiting_on;
        for (uint32_t i = 0; i < d->nwaiters; i++)
            if (d->waiters[i] == c) {
                d->waiters[i] = d->waiters[--d->nwaiters];
                break;
            }
        c->waiting_on = NULL;
    }
    if (c->nwaiters)
        release_waiters(r, c);
    if (c->blocked)
        client_unblock(r, c);
    switch (c->kind) {
    case K_CLIENT:
        for (uint32_t i = 0; i < c->streams.cap; i++) {
            slot *s = &c->streams.s[i];
            if (s->key && s->ptr != PUNTED)
                forget(r, s->ptr, s->aux);
        }
        map_free(&c->streams);
        if (c->punt) {
            c->punt->owner = NULL;
            conn_close(r, c->punt);
            c->punt = NULL;
        }
        for (uint32_t i = 0; c->links && i < r->nreplicas; i++) {
            conn *up = c->links[i];
            if (up) { /* its calls were forgotten above: nothing is left on it */
                unlink_upstream(up);
                conn_close(r, up);
            }
        }
        break;
    case K_UPSTREAM: {
        unlink_upstream(c);
        const char *proc = c->rep->proc->name;
        for (uint32_t i = 0; i < c->ups.cap; i++) {
            slot *s = &c->ups.s[i];
            if (!s->key)
                continue;
            conn *client = s->ptr;
            slot *fs = map_get(&client->streams, s->aux);
            if (fs && fs->ptr == c)
                map_del(&client->streams, fs);
            call_ended(r);
            c->rep->load--;
            route *rt = &r->route_list[s->extra & ~SENDING];
            send_error(r, client, s->aux, CODE_UNAVAILABLE,
                       "service %.*s is unavailable: %s went away during the call", (int)rt->len, rt->name, proc);
        }
        map_free(&c->ups);
        break;
    }
    case K_PUNT: {
        conn *client = c->owner;
        if (client) {
            client->punt = NULL;
            for (uint32_t i = 0; i < client->streams.cap;) {
                slot *s = &client->streams.s[i];
                if (s->key && s->ptr == PUNTED) {
                    uint32_t sid = s->key;
                    map_del(&client->streams, s); /* shifts a later slot into i: look again */
                    send_error(r, client, sid, CODE_UNAVAILABLE, "proxy is shutting down");
                    continue;
                }
                i++;
            }
        }
        break;
    }
    default:
        break;
    }
    c->refs++; /* the grave's own reference, dropped when it is swept */
    c->on_grave = 1;
    c->next_grave = r->grave;
    r->grave = c;
}

static void conn_free(conn *c) {
    buf_free(&c->in);
    buf_free(&c->out);
    map_free(&c->streams);
    map_free(&c->ups);
    free(c->waiters);
    free(c->paused);
    free(c->links);
    free(c);
}

static void sweep(relay *r) {
    conn *c = r->grave;
    r->grave = NULL;
    while (c) {
        conn *next = c->next_grave;
        c->on_grave = 0;
        if (--c->refs == 0)
            conn_free(c);
        c = next;
    }
}

/* A connection for ``client`` to ``rep`` now; NULL (and the replica left out a while, unless
 * it is only busy) when it fails. */
static conn *connect_replica(relay *r, conn *client, replica *rep) {
    if (!client->links && !(client->links = calloc(r->nreplicas, sizeof(conn *))))
        return NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (connect(fd, (struct sockaddr *)&rep->addr, rep->addrlen) < 0 && errno != EINPROGRESS) {
        if (errno != EAGAIN) /* refused or gone; a full backlog is only busy */
            rep->down_until = now_ns() + RETRY_NS;
        close(fd);
        return NULL;
    }
    conn *c = conn_new(r, fd, K_UPSTREAM);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->rep = rep;
    c->next_sid = 1;
    c->owner = client;
    client->links[rep->index] = c;
    rep->down_until = 0;
    return c;
}

/* ``client``'s connection to the replica of ``p`` with the fewest open calls (over every
 * client), connected now if it has none; replicas that refused a connection a moment ago
 * are left out; NULL when none can be reached. Each client has connections of its own, as
 * it would talking to the backend directly: one that stops reading holds back only its
 * own calls. */
static conn *choose(relay *r, conn *client, process *p) {
    uint64_t tried = 0;
    int64_t now = -1;
    for (;;) {
        replica *best = NULL;
        uint32_t besti = 0;
        for (uint32_t i = 0; i < p->n && i < 64; i++) {
            replica *rep = p->replicas[i];
            if (tried >> i & 1)
                continue;
            if (rep->down_until) {
                if (now < 0)
                    now = now_ns();
                if (rep->down_until > now)
                    continue;
            }
            if (!best || rep->load < best->load) {
                best = rep;
                besti = i;
            }
        }
        if (!best)
            return NULL;
        conn *up = client->links ? client->links[best->index] : NULL;
        if (up || (up = connect_replica(r, client, best)))
            return up;
        tried |= 1ull << besti;
    }
}

/* the punt path: frames for the Python splice ------------------------------------------- */

static conn *punt_of(relay *r, conn *client) {
    if (client->punt)
        return client->punt;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return NULL;
    int fd = sv[1];
    if (write(r->notify, &fd, sizeof fd) != (ssize_t)sizeof fd) {
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    conn *p = conn_new(r, sv[0], K_PUNT);
    if (!p) {
        close(sv[0]); /* Python sees the end of its side at once */
        return NULL;
    }
    p->owner = client;
    client->punt = p;
    if (client->blocked)
        pause_source(r, client, p);
    return p;
}

/* Hand the client's frame to Python as it came (the client's stream id). */
static void punt(relay *r, conn *c, uint32_t sid, uint8_t type, uint8_t flags, const uint8_t *body, uint32_t len) {
    conn *p = punt_of(r, c);
    if (!p) {
        if (type == T_REQUEST)
            send_error(r, c, sid, CODE_UNAVAILABLE, "proxy: cannot take the call: %s", strerror(errno));
        return;
    }
    if (type == T_REQUEST) {
        slot *s = map_put(&c->streams, sid);
        if (s) {
            s->ptr = PUNTED;
            s->aux = 0;
        }
    }
    put_frame(r, p, sid, type, flags, body, len);
    maybe_wait(r, c, p);
}

/* reading a Request envelope ------------------------------------------------------------ */

static int varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end)
            return -1;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skip one field of wire type ``wire``; its bytes (wire type 2) in [*vp, *vp + *vn). */
static int field(const uint8_t **pp, const uint8_t *end, unsigned wire, const uint8_t **vp, uint64_t *vn) {
    uint64_t v;
    switch (wire) {
    case 0:
        return varint(pp, end, &v);
    case 1:
        if (end - *pp < 8)
            return -1;
        *pp += 8;
        return 0;
    case 5:
        if (end - *pp < 4)
            return -1;
        *pp += 4;
        return 0;
    case 2:
        if (varint(pp, end, &v) < 0 || v > (uint64_t)(end - *pp))
            return -1;
        *vp = *pp;
        *vn = v;
        *pp += v;
        return 0;
    default:
        return -1;
    }
}

/* The service of the Request in [p, end) and whether every namespace it names is known;
 * -1 when anything is unusual (Python's full decoder then answers). */
static int scan_request(relay *r, const uint8_t *p, const uint8_t *end, const uint8_t **svc, uint32_t *svclen,
                        int *known) {
    *svc = NULL;
    *svclen = 0;
    *known = 1;
    int locked = 0;
    int rc = 0;
    while (p < end) {
        uint64_t tag, vn = 0;
        const uint8_t *vp = NULL;
        if (varint(&p, end, &tag) < 0 || tag >> 3 == 0) {
            rc = -1;
            break;
        }
        unsigned num = (unsigned)(tag >> 3), wire = tag & 7;
        if ((num >= 1 && num <= 3) || num == 5) {
            if (wire != 2) {
                rc = -1;
                break;
            }
        } else if (num == 4 && wire != 0) {
            rc = -1;
            break;
        }
        if (field(&p, end, wire, &vp, &vn) < 0) {
            rc = -1;
            break;
        }
        if (num == 1) {
            *svc = vp;
            *svclen = (uint32_t)vn;
        } else if (num == 5) { /* a KeyValue */
            const uint8_t *q = vp, *qend = vp + vn, *key = NULL, *val = NULL;
            uint64_t keyn = 0, valn = 0;
            while (q < qend) {
                uint64_t t, n = 0;
                const uint8_t *v = NULL;
                if (varint(&q, qend, &t) < 0 || t >> 3 == 0 || field(&q, qend, t & 7, &v, &n) < 0) {
                    rc = -1;
                    break;
                }
                if ((t >> 3) <= 2 && (t & 7) != 2) {
                    rc = -1;
                    break;
                }
                if (t >> 3 == 1) {
                    key = v;
                    keyn = n;
                } else if (t >> 3 == 2) {
                    val = v;
                    valn = n;
                }
            }
            if (rc < 0)
                break;
            if (key && keyn == sizeof NS_KEY - 1 && !memcmp(key, NS_KEY, keyn) && valn) {
                if (!locked) {
                    pthread_mutex_lock(&r->lock);
                    locked = 1;
                }
                char **at = strset_find(&r->known, val, valn);
                if (!at || !*at)
                    *known = 0;
            }
        }
    }
    if (locked)
        pthread_mutex_unlock(&r->lock);
    return rc;
}

static route *find_route(relay *r, const uint8_t *name, uint32_t n) {
    if (!r->caproutes || !name)
        return NULL;
    for (uint32_t i = fnv(name, n) & (r->caproutes - 1);; i = (i + 1) & (r->caproutes - 1)) {
        if (!r->routes[i])
            return NULL;
        route *rt = &r->route_list[r->routes[i] - 1];
        if (rt->len == n && !memcmp(rt->name, name, n))
            return rt;
    }
}

/* a client's frames -------------------------------------------------------------------- */

/* Whether ``sid`` may open a stream (odd, above every id before it: then it is the last);
 * if not, the client has its error. */
static int new_stream(relay *r, conn *c, uint32_t sid) {
    if (!(sid & 1)) {
        send_error(r, c, sid, CODE_INVALID_ARGUMENT, "StreamID must be odd for client initiated streams");
        return 0;
    }
    if (sid <= c->last_sid) {
        send_error(r, c, sid, CODE_INVALID_ARGUMENT, "StreamID cannot be re-used and must increment");
        return 0;
    }
    c->last_sid = sid;
    return 1;
}

static void client_request(relay *r, conn *c, uint32_t sid, uint8_t flags, const uint8_t *body, uint32_t len) {
    if (!new_stream(r, c, sid))
        return;
    const uint8_t *svc;
    uint32_t svclen;
    int known;
    route *rt;
    conn *up;
    if (__atomic_load_n(&r->closing, __ATOMIC_RELAXED) || scan_request(r, body, body + len, &svc, &svclen, &known) < 0 ||
        !known || !(rt = find_route(r, svc, svclen)) || !(up = choose(r, c, rt->proc))) {
        punt(r, c, sid, T_REQUEST, flags, body, len);
        return;
    }
    uint64_t bsid = up->next_sid;
    if (bsid < sid && sid <= bsid + ADOPT) /* the client's id is ahead: keep it */
        bsid = sid;
    slot *fs = map_put(&c->streams, sid);
    slot *bs = fs ? map_put(&up->ups, (uint32_t)bsid) : NULL;
    if (!bs) {
        if (fs)
            map_del(&c->streams, fs);
        send_error(r, c, sid, CODE_RESOURCE_EXHAUSTED, "proxy: out of memory");
        return;
    }
    up->next_sid = bsid + 2;
    fs->ptr = up;
    fs->aux = (uint32_t)bsid;
    bs->ptr = c;
    bs->aux = sid;
    bs->extra = (uint32_t)(rt - r->route_list) | ((flags & F_REMOTE_OPEN) ? SENDING : 0);
    __atomic_store_n(&r->open_streams, r->open_streams + 1, __ATOMIC_RELAXED);
    up->rep->load++;
    put_frame(r, up, (uint32_t)bsid, T_REQUEST, flags, body, len);
    if (up->next_sid > MAX_SID) /* ids used up: new calls go to a fresh connection */
        retire(up);
    if (c->blocked)
        pause_source(r, c, up);
    maybe_wait(r, c, up);
}

static void client_frame(relay *r, conn *c, uint32_t sid, uint8_t type, uint8_t flags, const uint8_t *body,
                         uint32_t len) {
    if (type == T_REQUEST) {
        client_request(r, c, sid, flags, body, len);
        return;
    }
    if (type != T_DATA) /* other types: ignored, as ttrpc servers do */
        return;
    slot *fs = map_get(&c->streams, sid);
    if (!fs) {
        send_error(r, c, sid, CODE_INVALID_ARGUMENT, "StreamID is no longer active");
        return;
    }
    if (fs->ptr == PUNTED) {
        punt(r, c, sid, type, flags, body, len);
        return;
    }
    conn *up = fs->ptr;
    slot *bs = map_get(&up->ups, fs->aux);
    if (!bs)
        return;
    if (flags & F_REMOTE_CLOSED)
        bs->extra &= ~SENDING;
    put_frame(r, up, fs->aux, T_DATA, flags, body, len);
    maybe_wait(r, c, up);
}

static void oversize_message(relay *r, conn *c, uint32_t sid, uint32_t len) {
    send_error(r, c, sid, CODE_RESOURCE_EXHAUSTED, "message length %u exceed maximum message size of %u", len,
               MAX_MESSAGE);
}

/* A frame over the limit: answered now, its body skipped as it comes. */
static void client_oversized(relay *r, conn *c, uint32_t sid, uint8_t type, uint32_t len) {
    if (type == T_REQUEST) {
        if (new_stream(r, c, sid))
            oversize_message(r, c, sid, len);
    } else if (type == T_DATA) {
        slot *fs = map_get(&c->streams, sid);
        if (!fs) {
            send_error(r, c, sid, CODE_INVALID_ARGUMENT, "StreamID is no longer active");
            return;
        }
        conn *up = fs->ptr;
        uint32_t bsid = fs->aux;
        map_del(&c->streams, fs);
        if (up != PUNTED)
            forget(r, up, bsid);
        oversize_message(r, c, sid, len);
    }
}

/* reading ------------------------------------------------------------------------------ */

/* Read what is there into c->in; 0 when the peer is gone (the connection is closed). */
static int fill(relay *r, conn *c) {
    if (buf_reserve(&c->in, READ_MIN) < 0) {
        conn_close(r, c);
        return 0;
    }
    for (;;) {
        ssize_t n = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            return 1;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 1;
        conn_close(r, c);
        return 0;
    }
}

static void client_frames(relay *r, conn *c);
static void upstream_frames(relay *r, conn *up);
static void punt_frames(relay *r, conn *p);

/* Read and handle what ``c`` sent. A connection with no partial frame reads into the
 * relay's one scratch buffer and keeps only what is left of a frame cut by the read, so
 * an idle connection holds no input buffer. */
static void on_readable(relay *r, conn *c) {
    int borrowed = !c->in.p;
    if (borrowed) {
        c->in = r->scratch;
        r->scratch = (buf){0};
    }
    if (fill(r, c)) {
        if (c->kind == K_CLIENT)
            client_frames(r, c);
        else if (c->kind == K_UPSTREAM)
            upstream_frames(r, c);
        else
            punt_frames(r, c);
    }
    buf *in = &c->in;
    size_t left = c->dead ? 0 : buf_pending(in);
    if (borrowed) {
        buf b = *in;
        *in = (buf){0};
        if (left && buf_reserve(in, left) == 0) {
            memcpy(in->p, b.p + b.off, left);
            in->len = left;
        } else if (left) {
            conn_close(r, c);
        }
        b.off = b.len = 0;
        if (b.cap > SCRATCH_KEEP) { /* a big frame grew it: do not keep that much */
            buf_free(&b);
        }
        r->scratch = b;
    } else if (!left) {
        buf_free(in);
    }
}

typedef struct {
    uint32_t len, sid;
    uint8_t type, flags;
    const uint8_t *body; /* in c->in: good until c reads again */
} frame;

enum { CUT_MORE, CUT_WHOLE, CUT_OVERSIZED };

/* A backend's (or the splice's) frame that ends its stream. */
static inline int ends_stream(const frame *f) {
    return f->type == T_RESPONSE || (f->type == T_DATA && (f->flags & F_REMOTE_CLOSED));
}

/* The next frame in c->in: CUT_WHOLE (taken), CUT_OVERSIZED (its header taken, its body
 * skipped as it comes), or CUT_MORE (the rest has not come yet). */
static int next_frame(relay *r, conn *c, frame *f) {
    buf *in = &c->in;
    for (;;) {
        size_t avail = in->len - in->off;
        if (c->skip) {
            size_t k = avail < c->skip ? avail : (size_t)c->skip;
            in->off += k;
            c->skip -= k;
            if (c->skip)
                return CUT_MORE;
            continue;
        }
        if (avail < HEADER)
            return CUT_MORE;
        const uint8_t *h = in->p + in->off;
        f->len = get_be32(h);
        f->sid = get_be32(h + 4);
        f->type = h[8];
        f->flags = h[9];
        if (f->len > MAX_MESSAGE) {
            in->off += HEADER;
            c->skip = f->len;
            return CUT_OVERSIZED;
        }
        if (avail < HEADER + (size_t)f->len) {
            if (buf_reserve(in, HEADER + (size_t)f->len - avail) < 0)
                conn_close(r, c);
            return CUT_MORE;
        }
        f->body = h + HEADER;
        in->off += HEADER + (size_t)f->len;
        return CUT_WHOLE;
    }
}

static void client_frames(relay *r, conn *c) {
    frame f;
    int cut;
    while (!c->dead && (cut = next_frame(r, c, &f)) != CUT_MORE) {
        if (cut == CUT_OVERSIZED)
            client_oversized(r, c, f.sid, f.type, f.len);
        else
            client_frame(r, c, f.sid, f.type, f.flags, f.body, f.len);
    }
}

static void upstream_frames(relay *r, conn *up) {
    frame f;
    int cut;
    while (!up->dead && (cut = next_frame(r, up, &f)) != CUT_MORE) {
        slot *bs = map_get(&up->ups, f.sid);
        if (!bs)
            continue; /* a stream the client gave up */
        conn *client = bs->ptr;
        uint32_t fsid = bs->aux;
        if (cut == CUT_OVERSIZED) {
            stream_ended(r, up, bs);
            oversize_message(r, client, fsid, f.len);
            continue;
        }
        if (ends_stream(&f))
            stream_ended(r, up, bs);
        put_frame(r, client, fsid, f.type, f.flags, f.body, f.len);
    }
}

static void punt_frames(relay *r, conn *p) {
    frame f;
    int cut;
    while (!p->dead && (cut = next_frame(r, p, &f)) != CUT_MORE) {
        if (cut == CUT_OVERSIZED) { /* the splice never sends one */
            conn_close(r, p);
            break;
        }
        conn *client = p->owner;
        if (!client)
            continue;
        if (ends_stream(&f)) {
            slot *fs = map_get(&client->streams, f.sid);
            if (fs && fs->ptr == PUNTED)
                map_del(&client->streams, fs);
        }
        put_frame(r, client, f.sid, f.type, f.flags, f.body, f.len);
    }
}

static void on_listen(relay *r) {
    for (int i = 0; i < 64; i++) {
        int fd = accept4(r->listen->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of fds: the listener waits (still ready, it would spin) until one closes */
                r->listen->pausers = 1;
                update_events(r, r->listen);
            }
            return;
        }
        conn *c = conn_new(r, fd, K_CLIENT);
        if (!c)
            close(fd);
    }
}

static void close_listener(relay *r) {
    if (!r->listen_closed) {
        r->listen_closed = 1;
        conn_close(r, r->listen);
    }
}

static void on_wake(relay *r) {
    uint64_t v;
    if (read(r->wake, &v, sizeof v) < 0 && errno != EAGAIN)
        return;
    pthread_mutex_lock(&r->lock);
    int closing = r->closing;
    pthread_mutex_unlock(&r->lock);
    if (closing) {
        close_listener(r);
        tell_if_drained(r);
    }
}

/* the public API ------------------------------------------------------------------------ */

relay *relay_new(int listen_fd, int notify_fd) {
    relay *r = calloc(1, sizeof(relay));
    if (!r)
        return NULL;
    pthread_mutex_init(&r->lock, NULL);
    r->notify = notify_fd;
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->ep < 0 || r->wake < 0)
        goto fail;
    r->wakec = conn_new(r, r->wake, K_WAKE);
    r->listen = conn_new(r, listen_fd, K_LISTEN);
    if (!r->wakec || !r->listen)
        goto fail;
    return r;
fail:
    if (r->ep >= 0)
        close(r->ep);
    if (r->wake >= 0)
        close(r->wake);
    free(r->wakec);
    free(r->listen);
    free(r);
    return NULL;
}

int relay_add_process(relay *r, const char *name) {
    process **procs = realloc(r->procs, (r->nprocs + 1) * sizeof(process *));
    if (!procs)
        return -1;
    r->procs = procs;
    process *p = calloc(1, sizeof(process));
    if (!p || !(p->name = strdup(name))) {
        free(p);
        return -1;
    }
    procs[r->nprocs] = p;
    return (int)r->nprocs++;
}

int relay_add_replica(relay *r, int proc, const char *path) {
    if (proc < 0 || (uint32_t)proc >= r->nprocs || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -1;
    process *p = r->procs[proc];
    replica **reps = realloc(p->replicas, (p->n + 1) * sizeof(replica *));
    if (!reps)
        return -1;
    p->replicas = reps;
    replica *rep = calloc(1, sizeof(replica));
    if (!rep)
        return -1;
    rep->proc = p;
    rep->index = r->nreplicas++;
    rep->addr.sun_family = AF_UNIX;
    strcpy(rep->addr.sun_path, path);
    rep->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    reps[p->n++] = rep;
    return 0;
}

int relay_add_route(relay *r, const char *service, int proc) {
    if (proc < 0 || (uint32_t)proc >= r->nprocs)
        return -1;
    route *list = realloc(r->route_list, (r->nroute_list + 1) * sizeof(route));
    if (!list)
        return -1;
    r->route_list = list;
    route *rt = &list[r->nroute_list++];
    rt->len = (uint32_t)strlen(service);
    if (!(rt->name = strdup(service)))
        return -1;
    rt->proc = r->procs[proc];
    /* rebuild the lookup table (routes are set once, before the relay runs) */
    uint32_t cap = 16;
    while (cap < r->nroute_list * 2)
        cap *= 2;
    uint32_t *table = calloc(cap, sizeof(uint32_t));
    if (!table)
        return -1;
    for (uint32_t k = 0; k < r->nroute_list; k++) {
        route *src = &r->route_list[k];
        uint32_t i = fnv((uint8_t *)src->name, src->len) & (cap - 1);
        while (table[i])
            i = (i + 1) & (cap - 1);
        table[i] = k + 1;
    }
    free(r->routes);
    r->routes = table;
    r->caproutes = cap;
    return 0;
}

int relay_know(relay *r, const char *ns, size_t n) {
    pthread_mutex_lock(&r->lock);
    int rc = strset_add(&r->known, (const uint8_t *)ns, n);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void relay_forget(relay *r, const char *ns, size_t n) {
    pthread_mutex_lock(&r->lock);
    strset_discard(&r->known, (const uint8_t *)ns, n);
    pthread_mutex_unlock(&r->lock);
}

static void wake(relay *r) {
    uint64_t one = 1;
    ssize_t rc = write(r->wake, &one, sizeof one);
    (void)rc;
}

void relay_set_closing(relay *r) {
    pthread_mutex_lock(&r->lock);
    __atomic_store_n(&r->closing, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->lock);
    wake(r);
}

void relay_stop(relay *r) {
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_mutex_unlock(&r->lock);
    wake(r);
}

int relay_open_streams(relay *r) { return __atomic_load_n(&r->open_streams, __ATOMIC_RELAXED); }

int relay_run(relay *r) {
    struct epoll_event evs[EVENTS];
    pthread_setname_np(pthread_self(), "moorage-relay"); /* as ps -L and top -H show it */
    /* SCHED_BATCH: woken by a peer's write, the relay does not preempt that peer; the peer
     * finishes its turn and sleeps, then the relay runs. That saves a pair of context
     * switches per hop on a busy CPU (bench/proxy.py: about 6 µs a call); on an idle CPU
     * it changes nothing. */
    struct sched_param batch = {0};
    sched_setscheduler((pid_t)gettid(), SCHED_BATCH, &batch);
    for (;;) {
        pthread_mutex_lock(&r->lock);
        int stop = r->stop;
        pthread_mutex_unlock(&r->lock);
        if (stop)
            break;
        int n = epoll_wait(r->ep, evs, EVENTS, wait_ms(r));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->dead)
                continue;
            uint32_t e = evs[i].events;
            if ((e & EPOLLOUT) && buf_pending(&c->out))
                flush(r, c);
            if (c->dead)
                continue;
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !wants_read(c) && c->kind != K_LISTEN &&
                c->kind != K_WAKE) {
                if (e & (EPOLLHUP | EPOLLERR)) /* gone while not read: nothing more will come */
                    conn_close(r, c);
                continue;
            }
            if (!(e & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            switch (c->kind) {
            case K_LISTEN:
                on_listen(r);
                break;
            case K_WAKE:
                on_wake(r);
                break;
            default:
                on_readable(r, c);
                break;
            }
        }
        while (r->dirty) {
            conn *c = r->dirty;
            r->dirty = c->next_dirty;
            c->dirty = 0;
            if (!c->dead)
                flush(r, c);
        }
        sweep(r);
        tell_if_drained(r);
    }
    /* stopping: every connection goes (clients, backends and the Python ends see EOF) */
    r->listen_closed = 1;
    while (r->all)
        conn_close(r, r->all);
    r->dirty = NULL;
    sweep(r);
    return 0;
}

void relay_free(relay *r) {
    while (r->all)
        conn_close(r, r->all);
    r->dirty = NULL;
    sweep(r);
    close(r->ep);
    for (uint32_t k = 0; k < r->nprocs; k++) {
        process *p = r->procs[k];
        for (uint32_t i = 0; i < p->n; i++)
            free(p->replicas[i]);
        free(p->replicas);
        free(p->name);
        free(p);
    }
    free(r->procs);
    for (uint32_t k = 0; k < r->nroute_list; k++)
        free(r->route_list[k].name);
    free(r->route_list);
    free(r->routes);
    strset_free(&r->known);
    buf_free(&r->scratch);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

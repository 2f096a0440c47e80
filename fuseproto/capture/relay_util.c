/* relay_util.c -- little helpers of the relay: errors, clocks, two small maps. */
#include "relay.h"

/* --- little helpers --------------------------------------------------------------------- */
void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuseproto relay: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(70);
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die("out of memory (%zu bytes)", n);
    return q;
}



uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Python's "[Errno N] text" for an OSError, as the notes said it before. */
const char *oserr(int e)
{
    static char buf[160];
    snprintf(buf, sizeof buf, "[Errno %d] %s", e, strerror(e));
    return buf;
}

/* --- a u64 -> u64 hash map (linear probing, backward-shift deletion) -------------------- */

static inline size_t map_slot(const map_t *m, uint64_t k)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 17) & (m->cap - 1);
}


static void map_grow(map_t *m)
{
    map_t old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->k = calloc(m->cap, sizeof *m->k);
    m->v = calloc(m->cap, sizeof *m->v);
    m->used = calloc(m->cap, 1);
    if (!m->k || !m->v || !m->used)
        die("out of memory");
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.used[i])
            map_put(m, old.k[i], old.v[i]);
    free(old.k);
    free(old.v);
    free(old.used);
}

static int map_find(const map_t *m, uint64_t k, size_t *at)
{
    if (!m->n)
        return 0;
    for (size_t i = map_slot(m, k);; i = (i + 1) & (m->cap - 1)) {
        if (!m->used[i])
            return 0;
        if (m->k[i] == k) {
            *at = i;
            return 1;
        }
    }
}

int map_get(const map_t *m, uint64_t k, uint64_t *v)
{
    size_t i;
    if (!map_find(m, k, &i))
        return 0;
    *v = m->v[i];
    return 1;
}

void map_put(map_t *m, uint64_t k, uint64_t v)
{
    size_t i;
    if (map_find(m, k, &i)) {
        m->v[i] = v;
        return;
    }
    if ((m->n + 1) * 4 > m->cap * 3)
        map_grow(m);
    for (i = map_slot(m, k); m->used[i]; i = (i + 1) & (m->cap - 1))
        ;
    m->used[i] = 1;
    m->k[i] = k;
    m->v[i] = v;
    m->n++;
}

int map_del(map_t *m, uint64_t k)
{
    size_t i;
    if (!map_find(m, k, &i))
        return 0;
    m->used[i] = 0;
    m->n--;
    /* backward shift: move later members of the run into the hole when they may */
    for (size_t j = (i + 1) & (m->cap - 1); m->used[j]; j = (j + 1) & (m->cap - 1)) {
        size_t home = map_slot(m, m->k[j]);
        int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (between)
            continue;
        m->k[i] = m->k[j];
        m->v[i] = m->v[j];
        m->used[i] = 1;
        m->used[j] = 0;
        i = j;
    }
    return 1;
}

void map_clear(map_t *m)
{
    if (m->cap)
        memset(m->used, 0, m->cap);
    m->n = 0;
}

/* --- an insertion-ordered map unique -> small value, oldest dropped first --------------
 * (Python's dict used as a bounded FIFO: the opcode hints of the recorder, the requests
 * read late.) */


static void fifo_reshape(fifo_t *f)
{
    /* Keep the live entries (in order), in a buffer with room for as many again. */
    size_t cap = 16;
    while (cap < 2 * f->live + 2)
        cap *= 2;
    struct fent *e = calloc(cap, sizeof *e);
    if (!e)
        die("out of memory");
    uint64_t n = 0;
    for (uint64_t p = f->head; p < f->tail; p++) {
        struct fent *x = &f->e[p & (f->cap - 1)];
        if (!x->live)
            continue;
        e[n] = *x;
        map_put(&f->pos, x->unique, n);
        n++;
    }
    free(f->e);
    f->e = e;
    f->cap = cap;
    f->head = 0;
    f->tail = n;
}

struct fent *fifo_get(fifo_t *f, uint64_t unique)
{
    uint64_t p;
    if (!map_get(&f->pos, unique, &p))
        return NULL;
    return &f->e[p & (f->cap - 1)];
}

void fifo_del(fifo_t *f, uint64_t unique)
{
    struct fent *x = fifo_get(f, unique);
    if (!x)
        return;
    x->live = 0;
    map_del(&f->pos, unique);
    f->live--;
}

/* Insert (or, with keep_place, update in place), then drop the oldest above max. */
void fifo_put(fifo_t *f, uint64_t unique, const void *data, size_t len, int keep_place,
                     size_t max)
{
    struct fent *x = fifo_get(f, unique);
    if (x && keep_place) {
        memcpy(x->data, data, len);
        x->len = (uint8_t)len;
        return;
    }
    if (x)
        fifo_del(f, unique);
    if (f->tail - f->head == f->cap)
        fifo_reshape(f);
    x = &f->e[f->tail & (f->cap - 1)];
    x->unique = unique;
    x->live = 1;
    x->len = (uint8_t)len;
    memcpy(x->data, data, len);
    map_put(&f->pos, unique, f->tail);
    f->tail++;
    f->live++;
    while (f->live > max) {
        struct fent *o = &f->e[f->head & (f->cap - 1)];
        f->head++;
        if (o->live) {
            o->live = 0;
            map_del(&f->pos, o->unique);
            f->live--;
        }
    }
    while (f->head < f->tail && !f->e[f->head & (f->cap - 1)].live)
        f->head++;
}

void fifo_clear(fifo_t *f)
{
    f->head = f->tail = 0;
    f->live = 0;
    if (f->cap)
        memset(f->e, 0, f->cap * sizeof *f->e);
    map_clear(&f->pos);
}


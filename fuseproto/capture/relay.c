/* relay.c -- the data plane of `fuseproto capture proxy`.
 *
 * A process of its own, started by fuseproto/capture/relay.py (which builds it with the
 * system's gcc, cached by this file's hash) for each proxied session, and driven by the
 * control plane (fuseproto/capture/proxy.py) over a SOCK_SEQPACKET socket (fd argv[1]):
 * commands in, events out, file descriptors with SCM_RIGHTS.
 *
 * It owns what happens per request:
 *   - it epolls the kick eventfds the VMM writes and the call eventfds the proxy handed
 *     the daemon; on a kick it reads the new avail entries (chains, indirect tables
 *     included) and records each request, then writes the daemon's kick eventfd; on a
 *     call it reads the new used entries, records each reply from the writable buffers
 *     (used.len bytes), then writes the VMM's call eventfd;
 *   - records go to the pcap file with writev straight from its read-only mapping of
 *     guest memory (no copies): each scan's records in one writev, before the kick or
 *     call is passed on (no user-space buffer outlives a scan);
 *   - anything it cannot follow becomes an annotation record and the traffic goes on;
 *   - while chains are in flight it reads the rings every scan_interval, every
 *     hot_interval while the driver has its interrupts off (a guest that drains its used
 *     ring takes replies no call announced), and kicks again a queue whose chains stay
 *     pending with no used entry (rekick_first, doubling up to rekick_max).
 *
 * What it leaves to Python: every vhost-user message (it only hears what they change:
 * memory regions, ring sizes, addresses and bases, the eventfds), the INIT negotiation
 * (an INIT request and its reply are handed over as INIT events; the relay waits for the
 * answer -- the minor for the pseudo-headers -- before it goes on), and the kick-ordering
 * rule: a kick must not overtake a front-end message sent before it, so a kick that comes
 * while a message waits on the VMM's socket (or while Python is forwarding one: FE_BEGIN /
 * FE_END) is handed back as a DEFERRED event; Python forwards the messages, then sends
 * KICK.
 *
 * Layouts are not written here twice: the pcap record header, the pseudo-header (with
 * the constant bytes of both as a template), the FUSE header fields and the split-ring
 * layout come from Python (CONFIG), from the modules that own them.
 *
 * Being a process of its own: a SIGKILL of the proxy (the Python process) does not cut a
 * record in half -- the relay finishes the write it is in, sees its control socket close
 * and exits; and if the relay dies, the proxy goes on forwarding kicks and calls itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* --- the interface with relay.py, which reads these lists from this file ----------------
 * Every message, both ways: struct msg, then a payload (the rest of the datagram). */
#define COMMANDS(X) \
    X(CONFIG) X(MEM_CLEAR) X(MEM_ADD) X(MEM_REMOVE) X(VRING_NUM) X(VRING_ADDR) \
    X(VRING_BASE) X(VRING_START) X(VRING_STOP) X(SCAN) X(SCAN_ALL) X(NOTIFY_SET) \
    X(NOTIFY_DROP) X(FE_BEGIN) X(FE_END) X(KICK) X(ANNOTATE) X(MINOR) X(RESUME) X(SYNC) \
    X(FINISH) X(FEATURES)
#define EVENTS(X) X(INIT) X(DEFERRED) X(LOG) X(SYNCED) X(STATS)
#define STATS_FIELDS(X) X(kicks) X(calls) X(rekicks) X(requests) X(replies) X(notes)
/* CONFIG's payload: one u64 per field, in this order, then the record template. */
#define CONFIG_FIELDS(X) \
    X(msg_size) X(template_len) \
    X(ts_sec_off) X(ts_sec_size) X(ts_frac_off) X(ts_frac_size) X(ts_frac_div) \
    X(caplen_off) X(caplen_size) X(orig_len_off) X(orig_len_size) X(frame_len) \
    X(direction_off) X(direction_size) X(queue_off) X(queue_size) X(flags_off) \
    X(flags_size) X(minor_off) X(minor_size) X(opcode_off) X(opcode_size) \
    X(flag_opcode_valid) X(flag_minor_valid) \
    X(dir_request) X(dir_reply) X(dir_annotation) \
    X(in_size) X(in_opcode_off) X(in_opcode_size) X(in_unique_off) X(in_unique_size) \
    X(out_size) X(out_len_off) X(out_len_size) X(out_unique_off) X(out_unique_size) \
    X(op_init) X(op_cuse_init) \
    X(desc_size) X(desc_addr_off) X(desc_addr_size) X(desc_len_off) X(desc_len_size) \
    X(desc_flags_off) X(desc_flags_size) X(desc_next_off) X(desc_next_size) \
    X(f_next) X(f_write) X(f_indirect) \
    X(avail_idx_off) X(avail_ring_off) X(used_idx_off) X(used_ring_off) X(used_elem_size) \
    X(used_id_off) X(used_id_size) X(used_len_off) X(used_len_size) X(max_queue_size) \
    X(limit) X(max_record) X(min_read) X(max_opcodes) X(max_inits) X(init_data_max) \
    X(avail_flags_off) X(f_no_interrupt) X(f_event_idx) \
    X(scan_interval_ns) X(idle_interval_ns) X(hot_interval_ns) \
    X(rekick_first_ns) X(rekick_max_ns) \
    X(answer_timeout_ns) X(minor) X(has_vmm)

struct msg {
    uint32_t type;
    uint32_t queue;
    uint64_t a, b, c, d;
};

#define ENUM_ITEM(name) name,
enum command { CMD_NONE, COMMANDS(ENUM_ITEM) };
enum event { EV_NONE = 0, EVENTS(ENUM_ITEM) };
#define ENUM_CFG(name) CFG_##name,
enum { CONFIG_FIELDS(ENUM_CFG) CFG_COUNT };

static int ctl_fd = -1; /* argv[1] */
#define MAX_PAYLOAD (256 << 10)
#define MAX_FDS 8
#define MAX_QUEUES 256
#define KEY_DATA 64     /* a request's first bytes kept to know it again (and its length) */
#define OUT_IOV 1024    /* IOV_MAX */
#define OUT_RECS 256
#define TEXT_ARENA (64 << 10)
#define PREFIX_MAX 64
#define BACKEND_QUEUE 0xFFFF
#define RESCANS 4 /* the rings are read again (before a kick or call is passed on) while they
                   * moved during the previous reading, this many times at most */
#define MAX_CHAIN 65536 /* descriptors followed in one chain at most (2x the largest ring) */

static uint64_t cfg[CFG_COUNT];
#define C(name) (cfg[CFG_##name])
static unsigned char tmpl[PREFIX_MAX];

static struct {
#define STAT_FIELD(name) uint64_t name;
    STATS_FIELDS(STAT_FIELD)
} stats;

static int minor = -1; /* the negotiated minor, once Python says */

/* --- little helpers --------------------------------------------------------------------- */
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuseproto relay: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(70);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die("out of memory (%zu bytes)", n);
    return q;
}

static inline uint64_t ld(const unsigned char *p, uint64_t size)
{
    uint64_t v = 0;
    for (uint64_t i = 0; i < size; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static inline void st(unsigned char *p, uint64_t size, uint64_t v)
{
    for (uint64_t i = 0; i < size; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Python's "[Errno N] text" for an OSError, as the notes said it before. */
static const char *oserr(int e)
{
    static char buf[160];
    snprintf(buf, sizeof buf, "[Errno %d] %s", e, strerror(e));
    return buf;
}

/* --- a u64 -> u64 hash map (linear probing, backward-shift deletion) -------------------- */
typedef struct {
    uint64_t *k, *v;
    uint8_t *used;
    size_t cap, n;
} map_t;

static inline size_t map_slot(const map_t *m, uint64_t k)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 17) & (m->cap - 1);
}

static void map_put(map_t *m, uint64_t k, uint64_t v);

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

static int map_get(const map_t *m, uint64_t k, uint64_t *v)
{
    size_t i;
    if (!map_find(m, k, &i))
        return 0;
    *v = m->v[i];
    return 1;
}

static void map_put(map_t *m, uint64_t k, uint64_t v)
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

static int map_del(map_t *m, uint64_t k)
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

static void map_clear(map_t *m)
{
    if (m->cap)
        memset(m->used, 0, m->cap);
    m->n = 0;
}

/* --- an insertion-ordered map unique -> small value, oldest dropped first --------------
 * (Python's dict used as a bounded FIFO: the opcode hints of the recorder, the requests
 * read late.) */
struct fent {
    uint64_t unique;
    uint8_t live;
    uint8_t len;
    unsigned char data[KEY_DATA + 4];
};

typedef struct {
    struct fent *e;
    uint64_t head, tail; /* absolute positions; slot = pos & (cap - 1) */
    size_t cap, live;
    map_t pos; /* unique -> absolute position */
} fifo_t;

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

static struct fent *fifo_get(fifo_t *f, uint64_t unique)
{
    uint64_t p;
    if (!map_get(&f->pos, unique, &p))
        return NULL;
    return &f->e[p & (f->cap - 1)];
}

static void fifo_del(fifo_t *f, uint64_t unique)
{
    struct fent *x = fifo_get(f, unique);
    if (!x)
        return;
    x->live = 0;
    map_del(&f->pos, unique);
    f->live--;
}

/* Insert (or, with keep_place, update in place), then drop the oldest above max. */
static void fifo_put(fifo_t *f, uint64_t unique, const void *data, size_t len, int keep_place,
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

static void fifo_clear(fifo_t *f)
{
    f->head = f->tail = 0;
    f->live = 0;
    if (f->cap)
        memset(f->e, 0, f->cap * sizeof *f->e);
    map_clear(&f->pos);
}

/* --- guest memory ----------------------------------------------------------------------- */
struct region {
    uint64_t gpa, size, uaddr;
    unsigned char *base; /* the region's first byte in our mapping */
    void *map;
    size_t maplen;
};
static struct region *regions;
static size_t nregions;
static uint64_t mem_generation;

/* Something the relay cannot follow in guest memory (becomes a note). */
static char ring_error[512];
static int ring_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ring_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ring_error, sizeof ring_error, fmt, ap);
    va_end(ap);
    return -1;
}
#define RING_FAIL(...) ring_fail(__VA_ARGS__)

/* [addr, addr+len) in guest memory, by guest physical address (by_uaddr 0: descriptor
 * addresses) or by the front-end's own address (1: SET_VRING_ADDR's ring addresses). */
static const unsigned char *region_ptr(uint64_t addr, uint64_t len, int by_uaddr)
{
    for (size_t i = 0; i < nregions; i++) {
        struct region *r = &regions[i];
        uint64_t start = by_uaddr ? r->uaddr : r->gpa;
        uint64_t off = addr - start;
        if (addr >= start && off <= r->size && len <= r->size - off)
            return r->base + off;
    }
    RING_FAIL("%s address 0x%" PRIx64 "+0x%" PRIx64 " is not in guest memory",
              by_uaddr ? "frontend" : "guest", addr, len);
    return NULL;
}

static const unsigned char *gpa_ptr(uint64_t addr, uint64_t len)
{
    return region_ptr(addr, len, 0);
}

static const unsigned char *uaddr_ptr(uint64_t addr, uint64_t len)
{
    return region_ptr(addr, len, 1);
}

static void mem_clear(void)
{
    for (size_t i = 0; i < nregions; i++)
        munmap(regions[i].map, regions[i].maplen);
    nregions = 0;
    mem_generation++;
}

static int mem_add(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t offset, int fd)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = offset - offset % (uint64_t)page;
    uint64_t rem = offset - start;
    if (size == 0 || size > (1ull << 46)) {
        errno = EINVAL;
        return -1;
    }
    void *p = mmap(NULL, rem + size, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (p == MAP_FAILED)
        return -1;
    regions = xrealloc(regions, (nregions + 1) * sizeof *regions);
    regions[nregions++] = (struct region){gpa, size, uaddr, (unsigned char *)p + rem, p,
                                          rem + size};
    mem_generation++;
    return 0;
}

static int mem_remove(uint64_t gpa, uint64_t size, uint64_t uaddr)
{
    for (size_t i = 0; i < nregions; i++) {
        struct region *r = &regions[i];
        if (r->gpa == gpa && r->size == size && r->uaddr == uaddr) {
            munmap(r->map, r->maplen);
            memmove(r, r + 1, (nregions - i - 1) * sizeof *r);
            nregions--;
            mem_generation++;
            return 1;
        }
    }
    return 0;
}

/* --- pieces: guest buffers as pointers into our mapping ----------------------------------- */
typedef struct {
    uint64_t addr, len;
} seg_t;
typedef struct {
    seg_t *v;
    size_t n, cap;
} segvec_t;

static void seg_push(segvec_t *s, uint64_t addr, uint64_t len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = (seg_t){addr, len};
}

typedef struct {
    struct iovec *v;
    size_t n, cap;
} piecevec_t;

static piecevec_t pieces; /* the message being recorded */

static void piece_push(piecevec_t *p, const void *base, size_t len)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->v = xrealloc(p->v, p->cap * sizeof *p->v);
    }
    p->v[p->n++] = (struct iovec){(void *)base, len};
}

/* The first `limit` bytes of `segs` (guest-physical) as pieces of our mapping; a buffer
 * that crosses from one region into the next is split. Returns the bytes, or -1. */
static int64_t gather(const seg_t *segs, size_t nsegs, uint64_t limit, piecevec_t *out)
{
    out->n = 0;
    uint64_t left = limit, got = 0;
    for (size_t s = 0; s < nsegs && left > 0; s++) {
        uint64_t addr = segs[s].addr, ln = segs[s].len < left ? segs[s].len : left;
        left -= ln;
        while (ln) {
            size_t i;
            for (i = 0; i < nregions; i++) {
                struct region *r = &regions[i];
                if (addr >= r->gpa && addr - r->gpa < r->size)
                    break;
            }
            if (i == nregions)
                return RING_FAIL("guest address 0x%" PRIx64 " (of a %" PRIu64
                                 "-byte buffer) is not in guest memory", addr, ln);
            struct region *r = &regions[i];
            uint64_t off = addr - r->gpa, piece = r->size - off < ln ? r->size - off : ln;
            piece_push(out, r->base + off, piece);
            addr += piece;
            ln -= piece;
            got += piece;
        }
    }
    return (int64_t)got;
}

/* Copy the first `n` bytes of the pieces into `dst`; returns how many there were. */
static size_t copy_head(const piecevec_t *p, unsigned char *dst, size_t n)
{
    size_t done = 0;
    for (size_t i = 0; i < p->n && done < n; i++) {
        size_t k = p->v[i].iov_len < n - done ? p->v[i].iov_len : n - done;
        memcpy(dst + done, p->v[i].iov_base, k);
        done += k;
    }
    return done;
}

/* --- SIGBUS: guest memory that went away under the mapping (a truncated memfd) ---------- */
static sigjmp_buf bus_jump;
static volatile sig_atomic_t in_guest;

static void on_sigbus(int sig)
{
    if (in_guest) {
        in_guest = 0;
        siglongjmp(bus_jump, 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* --- the capture file ----------------------------------------------------------------------- */
static int out_fd = -1;
static int out_broken;
static struct {
    struct iovec iov[OUT_IOV];
    int niov;
    unsigned char hdr[OUT_RECS][PREFIX_MAX];
    int nhdr;
    char text[TEXT_ARENA];
    size_t ntext;
} out;
static int faulted; /* guest memory faulted under a writev: a note is owed */
static void send_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Write what is batched. A record is never left half-written by us: a short write goes on
 * from where it stopped, and guest memory that faults under writev is written as zeros. */
static void out_flush(void)
{
    static const unsigned char zeros[4096];
    struct iovec *v = out.iov;
    int n = out.niov;
    while (n > 0 && !out_broken) {
        ssize_t w = writev(out_fd, v, n > OUT_IOV ? OUT_IOV : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EFAULT) {
            faulted = 1;
            size_t left = v->iov_len;
            while (left && !out_broken) {
                ssize_t z = write(out_fd, zeros, left < sizeof zeros ? left : sizeof zeros);
                if (z < 0 && errno == EINTR)
                    continue;
                if (z <= 0) {
                    out_broken = 1;
                    send_log("cannot write the capture: %s; recording stops here, the "
                             "traffic goes on", oserr(errno));
                    break;
                }
                left -= (size_t)z;
            }
            v++;
            n--;
            continue;
        }
        if (w <= 0) {
            out_broken = 1;
            send_log("cannot write the capture: %s; recording stops here, the traffic goes on",
                     oserr(w < 0 ? errno : ENOSPC));
            break;
        }
        while (n > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    out.niov = 0;
    out.nhdr = 0;
    out.ntext = 0;
}

/* Opcode hints: the recorder's unique -> opcode of the requests recorded (bounded). */
static fifo_t opcodes;

/* One record: the template's prefix filled in, then the pieces (at most `limit` bytes of
 * a message of `length`). opcode < 0: no hint. */
static void record(int direction, unsigned queue, int64_t opcode, const struct iovec *pv,
                   size_t np, uint64_t length)
{
    if (out_broken)
        return;
    uint64_t cap = length < C(limit) ? length : C(limit);
    size_t need = 1;
    uint64_t sum = 0;
    for (size_t i = 0; i < np && sum < cap; i++, need++)
        sum += pv[i].iov_len;
    if (sum < cap) /* (never: the pieces hold at least this much) the header says the truth */
        cap = sum;
    if (out.niov + (int)need > OUT_IOV || out.nhdr == OUT_RECS)
        out_flush();
    unsigned char *h = out.hdr[out.nhdr++];
    memcpy(h, tmpl, C(template_len));
    uint64_t ts = now_ns(CLOCK_REALTIME);
    st(h + C(ts_sec_off), C(ts_sec_size), (ts / 1000000000u) & 0xFFFFFFFFu);
    st(h + C(ts_frac_off), C(ts_frac_size), (ts % 1000000000u) / C(ts_frac_div));
    st(h + C(caplen_off), C(caplen_size), C(frame_len) + cap);
    st(h + C(orig_len_off), C(orig_len_size), C(frame_len) + length);
    unsigned flags = 0;
    if (opcode >= 0) {
        flags |= (unsigned)C(flag_opcode_valid);
        st(h + C(opcode_off), C(opcode_size), (uint64_t)opcode);
    }
    if (minor >= 0) {
        flags |= (unsigned)C(flag_minor_valid);
        st(h + C(minor_off), C(minor_size), (uint64_t)minor);
    }
    st(h + C(direction_off), C(direction_size), (uint64_t)direction);
    st(h + C(queue_off), C(queue_size), queue);
    st(h + C(flags_off), C(flags_size), flags);
    out.iov[out.niov++] = (struct iovec){h, C(template_len)};
    uint64_t left = cap;
    for (size_t i = 0; i < np && left; i++) {
        size_t k = pv[i].iov_len < left ? pv[i].iov_len : left;
        if (out.niov == OUT_IOV) { /* a message in more pieces than one writev takes */
            out_flush();
        }
        out.iov[out.niov++] = (struct iovec){pv[i].iov_base, k};
        left -= k;
    }
}

static void annotate_at(unsigned queue, const char *text, size_t len, uint64_t ts)
{
    if (out_broken)
        return;
    if (len > TEXT_ARENA)
        len = TEXT_ARENA;
    /* room for the text and its record first (record() must not flush: the text is
     * batched by pointer) */
    if (out.ntext + len > TEXT_ARENA || out.niov + 2 > OUT_IOV || out.nhdr == OUT_RECS)
        out_flush();
    char *t = out.text + out.ntext;
    memcpy(t, text, len);
    out.ntext += len;
    struct iovec iv = {t, len};
    record((int)C(dir_annotation), queue, -1, &iv, 1, len);
    if (ts) { /* Python's time, not ours */
        unsigned char *h = out.hdr[out.nhdr - 1];
        st(h + C(ts_sec_off), C(ts_sec_size), (ts / 1000000000u) & 0xFFFFFFFFu);
        st(h + C(ts_frac_off), C(ts_frac_size), (ts % 1000000000u) / C(ts_frac_div));
    }
}

static void note(unsigned queue, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(unsigned queue, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    stats.notes++;
    annotate_at(queue, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, 0);
}

/* --- the control socket ---------------------------------------------------------------------- */
struct cmd {
    struct msg m;
    unsigned char *payload;
    size_t len;
    int fds[MAX_FDS];
    int nfds;
    struct cmd *next;
};
static struct cmd *queued_head, *queued_tail; /* read while waiting for an answer */
static unsigned char rxbuf[MAX_PAYLOAD + sizeof(struct msg)];

static void send_event(uint32_t type, uint32_t queue, uint64_t a, uint64_t b, const void *data,
                       size_t len)
{
    struct msg m = {type, queue, a, b, 0, 0};
    struct iovec iv[2] = {{&m, sizeof m}, {(void *)data, len}};
    struct msghdr h = {.msg_iov = iv, .msg_iovlen = len ? 2 : 1};
    while (sendmsg(ctl_fd, &h, MSG_NOSIGNAL) < 0) {
        if (errno == EINTR)
            continue;
        if (errno == EPIPE || errno == ECONNRESET) {
            out_flush(); /* the proxy is gone: what is recorded stays recorded */
            _exit(0);
        }
        die("control socket: %s", strerror(errno));
    }
}

static void send_log(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n >= 0)
        send_event(LOG, 0, 0, 0, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* One command from the socket; 0 when none is waiting (nonblocking), exits on EOF. */
static int recv_cmd(struct cmd *c, int block)
{
    struct iovec iv = {rxbuf, sizeof rxbuf};
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr h = {.msg_iov = &iv, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    ssize_t n;
    do
        n = recvmsg(ctl_fd, &h, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (n < 0)
        die("control socket: %s", strerror(errno));
    if (n == 0) { /* the proxy closed it (or died): leave, with every record written */
        out_flush();
        _exit(0);
    }
    if (h.msg_flags & (MSG_TRUNC | MSG_CTRUNC) || (size_t)n < sizeof c->m)
        die("control message of %zd bytes (flags %#x)", n, h.msg_flags);
    memcpy(&c->m, rxbuf, sizeof c->m);
    c->len = (size_t)n - sizeof c->m;
    c->payload = rxbuf + sizeof c->m;
    c->nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&h); cm; cm = CMSG_NXTHDR(&h, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < k; i++) {
            if (c->nfds < MAX_FDS)
                c->fds[c->nfds++] = fds[i];
            else
                close(fds[i]);
        }
    }
    return 1;
}

static void close_fds(struct cmd *c)
{
    for (int i = 0; i < c->nfds; i++)
        close(c->fds[i]);
    c->nfds = 0;
}

/* --- queues and notifications ------------------------------------------------------------ */
struct chain {
    int pending;
    int has_unique;
    uint64_t unique;
    uint64_t room;
    segvec_t w;
    unsigned char key[KEY_DATA + 4];
    unsigned keylen;
};

struct queue {
    unsigned index;
    uint64_t size, desc, avail, used;
    uint16_t last_avail, last_used;
    int started;
    struct chain *chains; /* by head, max_queue_size of them (calloc: touched when used) */
    size_t npending;
    map_t by_unique; /* pending unique -> head */
    fifo_t stale;    /* unique -> key of requests recorded from an entry read late */
    uint64_t requests, replies;
    /* resolved ring parts (for mem_generation) */
    uint64_t where_gen;
    const unsigned char *d, *av, *us;
    int resolved;
    int has_used_event;
    int broken;
    int kick_slot; /* the daemon's current kick eventfd pair, -1 if none */
    /* A kick handed back (DEFERRED) and not yet answered (KICK); another kick held back
     * meanwhile is not reported again (the events stay bounded: the two processes never
     * both wait on a full socket) but looked at once more when the answer comes. */
    int deferred, deferred_again;
    /* a stall: chains pending, no used entry */
    int stalled;
    uint16_t stall_used;
    uint64_t stall_since, stall_delay, stall_started;
    uint64_t stall_rekicks;
};

static struct queue *queues[MAX_QUEUES];

struct notify {
    int used;
    uint32_t gen;
    uint64_t id; /* Python's */
    int kind;    /* 0 kick (VMM -> daemon), 1 call (daemon -> VMM) */
    unsigned queue;
    int src, sink;
    int watched;
};
static struct notify *notifies;
static size_t nnotifies;
static int epfd;
static int vmm_fd = -1;
static int fe_busy;
static int event_idx; /* VIRTIO_F_RING_EVENT_IDX negotiated (the VMM's SET_FEATURES) */
static int rechecks; /* a queue has a kick held back to look at again (recheck()) */
static uint64_t answer_token;

static struct queue *queue_get(unsigned index)
{
    if (index >= MAX_QUEUES)
        return NULL;
    struct queue *q = queues[index];
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q)
            die("out of memory");
        q->index = index;
        q->kick_slot = -1;
        q->chains = calloc(C(max_queue_size), sizeof *q->chains);
        if (!q->chains)
            die("out of memory");
        queues[index] = q;
    }
    return q;
}

static void queue_invalidate(struct queue *q)
{
    q->resolved = 0;
    q->broken = 0;
}

static void queue_reset(struct queue *q, uint16_t base)
{
    q->last_avail = q->last_used = base;
    for (uint64_t h = 0; h < C(max_queue_size) && q->npending; h++)
        if (q->chains[h].pending) {
            q->chains[h].pending = 0;
            q->npending--;
        }
    q->npending = 0;
    map_clear(&q->by_unique);
    fifo_clear(&q->stale);
    queue_invalidate(q);
}

static int resolve(struct queue *q)
{
    if (q->resolved && q->where_gen == mem_generation)
        return 0;
    uint64_t n = q->size;
    if (!n || (n & (n - 1)) || n > C(max_queue_size))
        return RING_FAIL("queue size %" PRIu64 " is not a power of two <= %" PRIu64, n,
                         C(max_queue_size));
    if (!(q->d = uaddr_ptr(q->desc, C(desc_size) * n)) ||
        !(q->av = uaddr_ptr(q->avail, C(avail_ring_off) + 2 * n)) ||
        !(q->us = uaddr_ptr(q->used, C(used_ring_off) + C(used_elem_size) * n)))
        return -1;
    /* used_event, after the avail ring (only with EVENT_IDX; a ring may end without it) */
    q->has_used_event = uaddr_ptr(q->avail, C(avail_ring_off) + 2 * n + 2) != NULL;
    q->where_gen = mem_generation;
    q->resolved = 1;
    return 0;
}

/* Whether the driver takes used entries without waiting for a call now: it has turned its
 * interrupts off (VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, Linux writes used_event 0
 * while it drains the ring, and the entry it wants a call for when it waits). The daemon
 * then calls for nothing it publishes, and the driver may take a reply and reuse its
 * buffer before the next event wakes the relay: the rings are read every hot_interval. */
static int driver_drains(struct queue *q)
{
    if (!q->started || q->broken || !q->resolved || q->where_gen != mem_generation)
        return 0;
    if (sigsetjmp(bus_jump, 0))
        return 0;
    in_guest = 1;
    volatile int drains; /* (set after sigsetjmp) */
    if (event_idx)
        drains = q->has_used_event &&
                 ld(q->av + C(avail_ring_off) + 2 * q->size, 2) != q->last_used;
    else
        drains = (ld(q->av + C(avail_flags_off), 2) & C(f_no_interrupt)) != 0;
    in_guest = 0;
    return drains;
}

/* The chain at `head`: its readable and writable buffers and their byte counts
 * (virtio 1.x 2.7.5, indirect tables 2.7.5.3). */
static segvec_t walk_readable, walk_writable;

static int walk(struct queue *q, uint64_t head, uint64_t *total, uint64_t *room)
{
    const unsigned char *table = q->d;
    uint64_t tsize = q->size, i = head, steps = 0, limit = q->size;
    int indirect = 0;
    walk_readable.n = walk_writable.n = 0;
    *total = *room = 0;
    for (;;) {
        if (i >= tsize)
            return RING_FAIL("descriptor index %" PRIu64 " out of range (%" PRIu64 ")", i,
                             tsize);
        const unsigned char *dp = table + C(desc_size) * i;
        uint64_t addr = ld(dp + C(desc_addr_off), C(desc_addr_size));
        uint64_t ln = ld(dp + C(desc_len_off), C(desc_len_size));
        uint64_t flags = ld(dp + C(desc_flags_off), C(desc_flags_size));
        uint64_t nxt = ld(dp + C(desc_next_off), C(desc_next_size));
        if (flags & C(f_indirect)) {
            if (indirect)
                return RING_FAIL("an indirect descriptor inside an indirect table");
            if (!ln || ln % C(desc_size))
                return RING_FAIL("indirect table of %" PRIu64 " bytes (not a multiple of %"
                                 PRIu64 ")", ln, C(desc_size));
            if (!(table = gpa_ptr(addr, ln)))
                return -1;
            tsize = ln / C(desc_size);
            limit = steps + tsize;
            if (limit > MAX_CHAIN) /* (a table of millions of entries looping) */
                limit = MAX_CHAIN;
            indirect = 1;
            i = 0;
            continue;
        }
        if (flags & C(f_write)) {
            seg_push(&walk_writable, addr, ln);
            *room += ln;
        } else if (walk_writable.n) {
            return RING_FAIL("a device-readable descriptor after a writable one");
        } else {
            seg_push(&walk_readable, addr, ln);
            *total += ln;
        }
        steps++;
        if (!(flags & C(f_next)))
            return 0;
        if (steps >= limit)
            return RING_FAIL("chain longer than %" PRIu64 " descriptors (a loop?)", limit);
        i = nxt;
    }
}

static struct chain *take(struct queue *q, uint64_t head)
{
    if (head >= C(max_queue_size))
        return NULL;
    struct chain *c = &q->chains[head];
    if (!c->pending)
        return NULL;
    c->pending = 0;
    q->npending--;
    uint64_t h;
    if (c->has_unique && map_get(&q->by_unique, c->unique, &h) && h == head)
        map_del(&q->by_unique, c->unique);
    return c;
}

/* Make `head` pending with the chain just walked (walk_writable, key). */
static void put_pending(struct queue *q, uint64_t head, int has_unique, uint64_t unique,
                        uint64_t room, const unsigned char *key, unsigned keylen)
{
    struct chain *c = &q->chains[head];
    if (!c->pending)
        q->npending++;
    c->pending = 1;
    c->has_unique = has_unique;
    c->unique = unique;
    c->room = room;
    c->w.n = 0;
    for (size_t i = 0; i < walk_writable.n; i++)
        seg_push(&c->w, walk_writable.v[i].addr, walk_writable.v[i].len);
    memcpy(c->key, key, keylen);
    c->keylen = keylen;
    if (has_unique)
        map_put(&q->by_unique, unique, head);
}

static const char *unique_text(const struct chain *c)
{
    static char buf[32];
    if (!c->has_unique)
        return "None";
    snprintf(buf, sizeof buf, "%" PRIu64, c->unique);
    return buf;
}

static void read_late(struct queue *q, struct chain *c)
{
    if (c->has_unique)
        fifo_put(&q->stale, c->unique, c->key, c->keylen, 1, 2 * (q->size ? q->size : 1));
}

/* --- INIT: handed to Python, which answers (MINOR, ANNOTATE) and says RESUME ------------- */
static uint64_t inits[64]; /* uniques of INIT requests whose reply Python wants */
static size_t ninits;

static void apply(struct cmd *c);

static int await_answer(int direction, unsigned queue, const piecevec_t *p, uint64_t n)
{
    static unsigned char data[1 << 16];
    if (n > sizeof data)
        n = sizeof data;
    if (n > C(init_data_max))
        n = C(init_data_max);
    size_t got = copy_head(p, data, n);
    out_flush();
    uint64_t token = ++answer_token;
    send_event(INIT, queue, (uint64_t)direction, token, data, got);
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + C(answer_timeout_ns);
    for (;;) {
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= deadline)
            break;
        struct pollfd pfd = {ctl_fd, POLLIN, 0};
        int r = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
        if (r <= 0)
            continue;
        struct cmd c;
        if (!recv_cmd(&c, 0))
            continue;
        if (c.m.type == RESUME) {
            if (c.m.a == token)
                return (int)c.m.b;
            continue;
        }
        if (c.m.type == MINOR || c.m.type == ANNOTATE) {
            apply(&c);
            continue;
        }
        /* Anything else waits until this scan is over (the scan holds pointers into the
         * rings as they are mapped now). */
        struct cmd *k = malloc(sizeof *k);
        if (!k)
            die("out of memory");
        *k = c;
        k->payload = malloc(c.len ? c.len : 1);
        if (!k->payload)
            die("out of memory");
        memcpy(k->payload, c.payload, c.len);
        k->next = NULL;
        if (queued_tail)
            queued_tail->next = k;
        else
            queued_head = k;
        queued_tail = k;
    }
    send_log("queue %u: no answer about an INIT %s in %.1f s; going on without it", queue,
             direction ? "reply" : "request", (double)C(answer_timeout_ns) / 1e9);
    return 0;
}

static void saw_request(struct queue *q, uint64_t total)
{
    int64_t opcode = -1;
    if (total >= C(in_size)) {
        unsigned char h[256];
        copy_head(&pieces, h, C(in_size));
        opcode = (int64_t)ld(h + C(in_opcode_off), C(in_opcode_size));
        uint64_t unique = ld(h + C(in_unique_off), C(in_unique_size));
        fifo_put(&opcodes, unique, &opcode, sizeof opcode, 0, C(max_opcodes));
        record((int)C(dir_request), q->index, opcode, pieces.v, pieces.n, total);
        if ((uint64_t)opcode == C(op_init) || (uint64_t)opcode == C(op_cuse_init)) {
            uint64_t n = total < C(limit) ? total : C(limit);
            if (n < C(min_read))
                n = total < C(min_read) ? total : C(min_read);
            if (await_answer(0, q->index, &pieces, n)) {
                if (ninits == C(max_inits) || ninits == 64) {
                    memmove(inits, inits + 1, (ninits - 1) * sizeof *inits);
                    ninits--;
                }
                inits[ninits++] = unique;
            }
        }
        return;
    }
    record((int)C(dir_request), q->index, -1, pieces.v, pieces.n, total);
}

static void saw_reply(struct queue *q, uint64_t length, uint64_t got)
{
    int64_t opcode = -1;
    uint64_t unique = 0;
    int init = 0;
    if (got >= C(out_size)) {
        unsigned char h[256];
        copy_head(&pieces, h, C(out_size));
        unique = ld(h + C(out_unique_off), C(out_unique_size));
        struct fent *e = unique ? fifo_get(&opcodes, unique) : NULL;
        if (e) {
            memcpy(&opcode, e->data, sizeof opcode);
            fifo_del(&opcodes, unique);
        }
        for (size_t i = 0; i < ninits; i++)
            if (inits[i] == unique) {
                memmove(inits + i, inits + i + 1, (ninits - i - 1) * sizeof *inits);
                ninits--;
                init = 1;
                break;
            }
    }
    record((int)C(dir_reply), q->index, opcode, pieces.v, pieces.n, length);
    if (init)
        await_answer(1, q->index, &pieces, got);
}

/* --- reading the rings (one step behind the device) ------------------------------------------ */
static int scan_used(struct queue *q, int reused, int stop_at_unknown);

static uint64_t read_limit(uint64_t n)
{
    uint64_t lim = C(limit) > C(min_read) ? C(limit) : C(min_read);
    return n < lim ? n : lim;
}

static void scan_avail(struct queue *q)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t idx = (uint16_t)ld(q->av + C(avail_idx_off), 2);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t last = q->last_avail;
    if (idx == last)
        return;
    uint16_t nnew = (uint16_t)(idx - last);
    uint64_t size = q->size;
    if (nnew > size) {
        note(q->index, "queue %u: avail.idx moved from %u to %u, more than the queue size %"
             PRIu64 "; those entries are not recorded", q->index, last, idx, size);
        q->last_avail = idx;
        return;
    }
    const unsigned char *ring = q->av + C(avail_ring_off);
    for (uint16_t k = 0; k < nnew; k++) {
        uint64_t head = ld(ring + 2 * (last % size), 2);
        last = (uint16_t)(last + 1);
        uint64_t total, room;
        int64_t got = -1;
        if (walk(q, head, &total, &room) == 0) {
            if (total > C(max_record))
                RING_FAIL("%" PRIu64 " device-readable bytes, more than the proxy records (%"
                          PRIu64 ")", total, C(max_record));
            else
                got = gather(walk_readable.v, walk_readable.n, read_limit(total), &pieces);
        }
        if (got < 0) {
            note(q->index, "queue %u avail head %" PRIu64 ": request not recorded: %s",
                 q->index, head, ring_error);
            take(q, head);
            continue;
        }
        if (head < C(max_queue_size) && q->chains[head].pending) {
            /* The driver reuses a head only after taking its used entry: read the used ring
             * now, so the old chain's reply is paired with the old request. */
            segvec_t keep_w = walk_writable;
            walk_writable = (segvec_t){0};
            piecevec_t keep_p = pieces;
            pieces = (piecevec_t){0};
            scan_used(q, 1, 1);
            free(walk_writable.v);
            walk_writable = keep_w;
            free(pieces.v);
            pieces = keep_p;
            if (q->chains[head].pending)
                note(q->index, "queue %u: head %" PRIu64 " made available again before its "
                     "used entry was seen", q->index, head);
        }
        unsigned char key[KEY_DATA + 4];
        size_t kl = copy_head(&pieces, key, KEY_DATA);
        st(key + kl, 4, total);
        unsigned keylen = (unsigned)kl + 4;
        int has_unique = (uint64_t)got >= C(in_unique_off) + C(in_unique_size);
        uint64_t unique = 0;
        if (has_unique) {
            unsigned char h[64];
            copy_head(&pieces, h, C(in_unique_off) + C(in_unique_size));
            unique = ld(h + C(in_unique_off), C(in_unique_size));
        }
        if (has_unique) {
            /* A request already recorded at another head: that head's entry was read late,
             * after the driver had reused its descriptors for this request. */
            uint64_t other;
            if (map_get(&q->by_unique, unique, &other) && other != head &&
                q->chains[other].pending && q->chains[other].keylen == keylen &&
                !memcmp(q->chains[other].key, key, keylen)) {
                take(q, other);
                take(q, head);
                put_pending(q, head, 1, unique, room, key, keylen);
                note(q->index, "queue %u: avail head %" PRIu64 " was read after the driver had "
                     "reused its descriptors for unique %" PRIu64 " (now at head %" PRIu64
                     "): recorded once, that head's own request is not in the capture",
                     q->index, other, unique, head);
                continue;
            }
            struct fent *s = fifo_get(&q->stale, unique);
            if (s && s->len == keylen && !memcmp(s->data, key, keylen)) {
                fifo_del(&q->stale, unique);
                take(q, head);
                put_pending(q, head, 1, unique, room, key, keylen);
                note(q->index, "queue %u: unique %" PRIu64 " made available at head %" PRIu64
                     ": recorded once already, from another head's entry read late; its reply "
                     "is awaited here", q->index, unique, head);
                continue;
            }
        }
        take(q, head);
        put_pending(q, head, has_unique, unique, room, key, keylen);
        q->requests++;
        stats.requests++;
        saw_request(q, total);
    }
    q->last_avail = last;
}

/* Whether the driver has made `head` available again since the avail ring was read (its
 * buffers are then another request's). */
static int available_again(struct queue *q, uint64_t head)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t idx = (uint16_t)ld(q->av + C(avail_idx_off), 2);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t nnew = (uint16_t)(idx - q->last_avail);
    if (nnew > q->size)
        return 0;
    const unsigned char *ring = q->av + C(avail_ring_off);
    for (uint16_t i = 0, at = q->last_avail; i < nnew; i++, at++)
        if (ld(ring + 2 * (at % q->size), 2) == head)
            return 1;
    return 0;
}

/* Record the replies of the new used entries. reused: the driver has already made one of
 * these heads available again, so a reply whose unique is not its request's was
 * overwritten. stop_at_unknown: stop before an entry whose chain is not known yet
 * (returns 1 then). */
static int scan_used(struct queue *q, int reused, int stop_at_unknown)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t idx = (uint16_t)ld(q->us + C(used_idx_off), 2);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint16_t last = q->last_used;
    if (idx == last)
        return 0;
    uint16_t nnew = (uint16_t)(idx - last);
    uint64_t size = q->size;
    if (nnew > size) {
        note(q->index, "queue %u: used.idx moved from %u to %u, more than the queue size %"
             PRIu64 "; those replies are not recorded", q->index, last, idx, size);
        q->last_used = idx;
        return 0;
    }
    const unsigned char *ring = q->us + C(used_ring_off);
    int stopped = 0;
    for (uint16_t k = 0; k < nnew; k++) {
        const unsigned char *e = ring + C(used_elem_size) * (last % size);
        uint64_t head = ld(e + C(used_id_off), C(used_id_size));
        uint64_t length = ld(e + C(used_len_off), C(used_len_size));
        if (stop_at_unknown && !(head < C(max_queue_size) && q->chains[head].pending)) {
            /* A chain of an avail entry not read yet (the daemon was quick): its request
             * is recorded first, its reply after. */
            stopped = 1;
            break;
        }
        last = (uint16_t)(last + 1);
        q->last_used = last; /* (an INIT reply may make us wait: say where we are) */
        struct chain *c = take(q, head);
        if (!c) {
            /* No request was read for this chain (a missed or late scan): its reply would
             * pair with nothing, and its buffers may be another's by now. */
            uint64_t total, room;
            if (walk(q, head, &total, &room) < 0) {
                note(q->index, "queue %u used head %" PRIu64 ": reply not recorded: %s",
                     q->index, head, ring_error);
                continue;
            }
            char u[32] = "?";
            if (room >= 16) {
                if (gather(walk_writable.v, walk_writable.n, 16, &pieces) < 0) {
                    note(q->index, "queue %u used head %" PRIu64 ": reply not recorded: %s",
                         q->index, head, ring_error);
                    continue;
                }
                unsigned char top[16];
                copy_head(&pieces, top, 16);
                snprintf(u, sizeof u, "%" PRIu64,
                         ld(top + C(out_unique_off), C(out_unique_size)));
            }
            note(q->index, "queue %u used head %" PRIu64 ": its chain was not read when it "
                 "was made available; the reply to unique %s is not recorded", q->index, head,
                 u);
            continue;
        }
        uint64_t room = c->room;
        if (!length) {
            if (room)
                note(q->index, "queue %u used head %" PRIu64 ": used.len 0 for a chain with %"
                     PRIu64 " writable bytes", q->index, head, room);
            continue;
        }
        if (length > room) {
            /* Not the chain the proxy read at this head: the driver had reused its
             * descriptors (or indirect table) before the proxy got to them. */
            note(q->index, "queue %u used head %" PRIu64 ": the reply to unique %s is not "
                 "recorded: used.len %" PRIu64 " exceeds the %" PRIu64 " writable bytes of the "
                 "chain read at this head (reused before the proxy read it?)", q->index, head,
                 unique_text(c), length, room);
            read_late(q, c);
            continue;
        }
        int64_t got = gather(c->w.v, c->w.n, read_limit(length), &pieces);
        if (got < 0) {
            note(q->index, "queue %u used head %" PRIu64 ": reply not recorded: %s", q->index,
                 head, ring_error);
            continue;
        }
        if (c->has_unique && (uint64_t)got >= 16) {
            unsigned char h[64];
            copy_head(&pieces, h, C(out_size) > 16 ? C(out_size) : 16);
            uint64_t unique = ld(h + C(out_unique_off), C(out_unique_size));
            /* What the daemon wrote says its own length (fuse_out_header.len == used.len):
             * a buffer that does not, under another unique, was reused. */
            int genuine = ld(h + C(out_len_off), C(out_len_size)) == length;
            /* (a whole reply under another unique, in a head made available again since
             * the avail ring was read: a later request's, the daemon was that quick) */
            int again = unique != c->unique && !reused && genuine &&
                        available_again(q, head);
            if (again) {
                note(q->index, "queue %u used head %" PRIu64 ": the reply to unique %" PRIu64
                     " is not recorded: the driver took it and made the head available again "
                     "(unique %" PRIu64 "), whose reply was in the buffer already when the "
                     "proxy read it", q->index, head, c->unique, unique);
                read_late(q, c);
                continue;
            }
            if (unique != c->unique && (reused || !genuine)) {
                if (genuine)
                    /* A whole reply, to another request: the avail entry was read late, its
                     * descriptors already holding a later request (recorded in its place). */
                    note(q->index, "queue %u avail head %" PRIu64 " was read late: the request "
                         "recorded for it (unique %" PRIu64 ") is a later chain's; this "
                         "chain's own request and reply (unique %" PRIu64 ") are not in the "
                         "capture", q->index, head, c->unique, unique);
                else
                    note(q->index, "queue %u used head %" PRIu64 ": the reply to unique %"
                         PRIu64 " is not recorded: the driver took it and reused its buffer "
                         "before the proxy read it", q->index, head, c->unique);
                read_late(q, c);
                continue;
            }
            if (unique != c->unique)
                note(q->index, "queue %u used head %" PRIu64 ": the reply names unique %" PRIu64
                     ", the chain's request was unique %" PRIu64, q->index, head, unique,
                     c->unique);
        }
        q->replies++;
        stats.replies++;
        saw_reply(q, length, (uint64_t)got);
    }
    q->last_used = last;
    return stopped;
}

/* Record what is new on `q`'s rings: the avail ring, then the used ring. */
static void scan(struct queue *q)
{
    if (!q || !q->started || q->broken)
        return;
    if (sigsetjmp(bus_jump, 0)) {
        q->started = 0;
        note(q->index, "queue %u: proxy error while reading the rings, no longer observed: "
             "SIGBUS (guest memory gone from under its mapping)", q->index);
        out_flush();
        return;
    }
    in_guest = 1;
    if (resolve(q) < 0) {
        in_guest = 0;
        q->broken = 1;
        note(q->index, "queue %u not observed: %s", q->index, ring_error);
        out_flush();
        return;
    }
    for (int round = 0; round < RESCANS; round++) {
        scan_avail(q);
        if (scan_used(q, 0, 1)) {
            /* A used entry for a chain made available after the avail ring was read (the
             * daemon was that quick): read the avail ring again, so its request comes
             * first. */
            scan_avail(q);
            scan_used(q, 0, 0);
        }
        out_flush();
        /* Writing large records takes a while, and the daemon goes on meanwhile: what it
         * completed by now, the driver will take as soon as the kick or call is passed on
         * (and may reuse its buffers at once). Read it first. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if ((uint16_t)ld(q->us + C(used_idx_off), 2) == q->last_used &&
            (uint16_t)ld(q->av + C(avail_idx_off), 2) == q->last_avail)
            break;
    }
    in_guest = 0;
    if (faulted) {
        faulted = 0;
        note(q->index, "queue %u: guest memory faulted while a record was written (written "
             "as zeros)", q->index);
        out_flush();
    }
}

static void scan_all(void)
{
    for (unsigned i = 0; i < MAX_QUEUES; i++)
        if (queues[i])
            scan(queues[i]);
}

/* --- kicks and calls ---------------------------------------------------------------------------- */
static struct notify *notify_at(uint64_t tag)
{
    uint64_t slot = tag & 0xFFFFFFFFu;
    if (!slot || slot > nnotifies)
        return NULL;
    struct notify *n = &notifies[slot - 1];
    if (!n->used || n->gen != (uint32_t)(tag >> 32))
        return NULL;
    return n;
}

static uint64_t notify_tag(struct notify *n)
{
    return (uint64_t)(n - notifies + 1) | ((uint64_t)n->gen << 32);
}

static void forward(struct notify *n)
{
    uint64_t one = 1;
    ssize_t w;
    do
        w = write(n->sink, &one, sizeof one);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno != EAGAIN) /* EAGAIN: the counter is full, a notification pends */
        note(n->queue, "queue %u: cannot forward a %s: %s", n->queue, n->kind ? "call" : "kick",
             oserr(errno));
}

static void unwatch(struct notify *n)
{
    if (n->watched) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, n->src, NULL);
        n->watched = 0;
    }
}

static void drain_commands(void);

static struct notify *kick_target(struct queue *q, struct notify *fired)
{
    if (q && q->kick_slot >= 0 && notifies[q->kick_slot].used)
        return &notifies[q->kick_slot];
    return fired;
}

static void kicked(struct queue *q, struct notify *n)
{
    if (q && q->stalled) { /* a fresh kick: the stall's clock starts again */
        q->stall_since = now_ns(CLOCK_MONOTONIC);
        q->stall_delay = C(rekick_first_ns);
    }
    scan(q);
    if (n)
        forward(n);
}

static int vmm_waiting(void)
{
    if (vmm_fd < 0)
        return 0;
    struct pollfd p = {vmm_fd, POLLIN, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/* Whether a kick must wait for front-end messages: one waits on the VMM's socket, or
 * Python is forwarding one. The socket first, then Python's word: a message Python took
 * from the socket after our look is bracketed by FE_BEGIN, which is read here. */
static int held_back(int may_drain)
{
    if (vmm_waiting())
        return 1;
    if (may_drain)
        drain_commands();
    return fe_busy;
}

/* One notification: read the rings, then pass it on. A kick: the new chains are read
 * before the daemon may take them (once it has, a guest draining its used ring can reuse
 * their descriptors at once). A call: the replies are read and written before the driver
 * is told. */
static void notified(struct notify *n, int may_drain)
{
    uint64_t tag = notify_tag(n);
    uint64_t v;
    ssize_t r;
    do
        r = read(n->src, &v, sizeof v);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return;
    if (r < 0) {
        int e = errno;
        unwatch(n);
        note(n->queue, "queue %u %s eventfd: %s; no longer forwarded", n->queue,
             n->kind ? "call" : "kick", oserr(e));
        out_flush();
        return;
    }
    struct queue *q = n->queue < MAX_QUEUES ? queues[n->queue] : NULL;
    if (n->kind == 0) {
        stats.kicks++;
        /* What the VMM said before this kick reaches the daemon before it: check the
         * VMM's socket first, then what Python is doing (the order matters: a message
         * Python took from the socket after our look is bracketed by FE_BEGIN). */
        if (q && q->deferred) { /* behind a kick handed back already */
            q->deferred_again = 1;
            return;
        }
        unsigned index = n->queue;
        uint64_t id = n->id;
        if (held_back(may_drain)) {
            if (q)
                q->deferred = 1;
            send_event(DEFERRED, index, id, 0, NULL, 0);
            return;
        }
        n = notify_at(tag); /* (draining commands may have dropped or moved it) */
        kicked(q, kick_target(q, n));
    } else {
        stats.calls++;
        scan(q);
        forward(n);
    }
}

/* Kick again a queue whose chains are pending with no used entry for a while: the VM must
 * not hang on a kick the daemon dropped (may_kick 0: only say which stalls are over). */
static void check_stalls(int may_kick)
{
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    for (unsigned i = 0; i < MAX_QUEUES; i++) {
        struct queue *q = queues[i];
        if (!q)
            continue;
        int busy = q->started && q->npending;
        if (q->stalled && (!busy || q->stall_used != q->last_used)) {
            q->stalled = 0;
            if (q->stall_rekicks && q->last_used != q->stall_used)
                send_log("queue %u: the daemon answered after %" PRIu64 " repeated kick(s), "
                         "%.3f s without a used entry (a kick lost, or a slow request)",
                         q->index, q->stall_rekicks, (double)(now - q->stall_started) / 1e9);
        }
        if (!busy || !may_kick)
            continue;
        if (!q->stalled) {
            q->stalled = 1;
            q->stall_used = q->last_used;
            q->stall_since = q->stall_started = now;
            q->stall_delay = C(rekick_first_ns);
            q->stall_rekicks = 0;
            continue;
        }
        if (q->kick_slot < 0 || now - q->stall_since < q->stall_delay)
            continue;
        if (q->deferred || held_back(1))
            continue; /* not ahead of a front-end message either: next round */
        scan(q);
        if (q->last_used != q->stall_used || !q->npending)
            continue; /* it moved: the next round says so */
        stats.rekicks++;
        q->stall_rekicks++;
        q->stall_since = now;
        q->stall_delay = q->stall_delay * 2 < C(rekick_max_ns) ? q->stall_delay * 2
                                                                : C(rekick_max_ns);
        forward(&notifies[q->kick_slot]);
    }
}

static void notify_set(struct cmd *c)
{
    if (c->nfds != 2) {
        close_fds(c);
        return;
    }
    size_t slot;
    for (slot = 0; slot < nnotifies && notifies[slot].used; slot++)
        ;
    if (slot == nnotifies) {
        notifies = xrealloc(notifies, (nnotifies + 1) * sizeof *notifies);
        memset(&notifies[nnotifies], 0, sizeof *notifies);
        nnotifies++;
    }
    struct notify *n = &notifies[slot];
    n->used = 1;
    n->gen++;
    n->id = c->m.a;
    n->kind = (int)c->m.b;
    n->queue = c->m.queue;
    n->src = c->fds[0];
    n->sink = c->fds[1];
    c->nfds = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = notify_tag(n)};
    n->watched = epoll_ctl(epfd, EPOLL_CTL_ADD, n->src, &ev) == 0;
    if (!n->watched)
        note(n->queue, "queue %u %s eventfd: %s; not forwarded", n->queue,
             n->kind ? "call" : "kick", oserr(errno));
    struct queue *q = queue_get(n->queue);
    if (q && n->kind == 0)
        q->kick_slot = (int)slot;
}

static struct notify *notify_by_id(uint64_t id)
{
    for (size_t i = 0; i < nnotifies; i++)
        if (notifies[i].used && notifies[i].id == id)
            return &notifies[i];
    return NULL;
}

static void notify_drop(uint64_t id, int final)
{
    struct notify *n = notify_by_id(id);
    if (!n)
        return;
    if (final && n->watched)
        notified(n, 0); /* what it may still say is passed on */
    unwatch(n);
    close(n->src);
    close(n->sink);
    n->used = 0;
    for (unsigned i = 0; i < MAX_QUEUES; i++)
        if (queues[i] && queues[i]->kick_slot == (int)(n - notifies))
            queues[i]->kick_slot = -1;
}

/* --- commands -------------------------------------------------------------------------- */
static void send_stats(void)
{
    uint64_t v[] = {
#define STAT_VALUE(name) stats.name,
        STATS_FIELDS(STAT_VALUE)};
    send_event(STATS, 0, 0, 0, v, sizeof v);
}

static void apply(struct cmd *c)
{
    struct msg *m = &c->m;
    struct queue *q = (m->type >= VRING_NUM && m->type <= SCAN) ? queue_get(m->queue) : NULL;
    if (m->type == MEM_CLEAR || m->type == MEM_ADD || m->type == MEM_REMOVE)
        for (unsigned i = 0; i < MAX_QUEUES; i++)
            if (queues[i]) /* the rings are looked up again (and tried again if broken) */
                queue_invalidate(queues[i]);
    switch (m->type) {
    case MEM_CLEAR:
        mem_clear();
        break;
    case MEM_ADD:
        if (c->nfds != 1 || mem_add(m->a, m->b, m->c, m->d, c->fds[0]) < 0) {
            int e = c->nfds != 1 ? EBADF : errno;
            note(BACKEND_QUEUE, "vhost-user %.*s from the front-end: region at guest address "
                 "0x%" PRIx64 " (0x%" PRIx64 " bytes) cannot be mapped: %s (forwarded "
                 "unchanged, not observed)", (int)c->len, (const char *)c->payload, m->a, m->b,
                 oserr(e));
            out_flush();
        }
        break;
    case MEM_REMOVE:
        mem_remove(m->a, m->b, m->c);
        break;
    case VRING_NUM:
        if (q) {
            q->size = m->a;
            queue_invalidate(q);
        }
        break;
    case VRING_ADDR:
        if (q) {
            q->desc = m->a;
            q->avail = m->b;
            q->used = m->c;
            queue_invalidate(q);
        }
        break;
    case VRING_BASE:
        if (q)
            queue_reset(q, (uint16_t)m->a);
        break;
    case VRING_START:
        if (q)
            q->started = 1;
        break;
    case VRING_STOP: /* the daemon has stopped the ring: what it completed is all there is */
        if (q) {
            scan(q);
            q->started = 0;
        }
        break;
    case SCAN:
        scan(q);
        break;
    case SCAN_ALL:
        scan_all();
        break;
    case NOTIFY_SET:
        notify_set(c);
        break;
    case NOTIFY_DROP:
        notify_drop(m->a, (int)m->b);
        break;
    case FE_BEGIN:
        fe_busy = 1;
        break;
    case FE_END:
        fe_busy = 0;
        break;
    case KICK: { /* Python has forwarded the messages ahead of a kick handed back */
        struct queue *kq = m->queue < MAX_QUEUES ? queues[m->queue] : NULL;
        kicked(kq, kick_target(kq, notify_by_id(m->a)));
        if (kq) {
            kq->deferred = 0;
            if (kq->deferred_again) /* a later kick, held back meanwhile: see recheck() */
                rechecks = 1;
        }
        break;
    }
    case ANNOTATE:
        annotate_at(m->queue, (const char *)c->payload, c->len, m->a);
        out_flush();
        break;
    case MINOR:
        minor = (int)(int64_t)m->a;
        break;
    case RESUME: /* an answer that came too late */
        break;
    case SYNC:
        out_flush();
        send_event(SYNCED, 0, m->a, 0, NULL, 0);
        break;
    case FEATURES:
        event_idx = (m->a >> C(f_event_idx)) & 1;
        break;
    case FINISH:
        scan_all();
        check_stalls(0); /* (its lines before the counters: the proxy stops reading then) */
        out_flush();
        send_stats();
        break;
    default:
        die("unknown command %u", m->type);
    }
    close_fds(c);
}

/* Kicks held back behind one handed back, once Python has answered it: looked at again
 * as if they came now (from the main loop: this may read commands). */
static void recheck(void)
{
    while (rechecks) {
        rechecks = 0;
        for (unsigned i = 0; i < MAX_QUEUES; i++) {
            struct queue *q = queues[i];
            if (!q || q->deferred || !q->deferred_again)
                continue;
            q->deferred_again = 0;
            if (held_back(1)) {
                q->deferred = 1;
                send_event(DEFERRED, q->index, 0, 0, NULL, 0);
            } else {
                kicked(q, kick_target(q, NULL));
            }
        }
    }
}

/* Apply the commands waiting (those read while an answer was awaited first). */
static void drain_commands(void)
{
    for (;;) {
        while (queued_head) {
            struct cmd *k = queued_head;
            queued_head = k->next;
            if (!queued_head)
                queued_tail = NULL;
            apply(k);
            free(k->payload);
            free(k);
        }
        struct cmd c;
        if (!recv_cmd(&c, 0))
            return;
        apply(&c);
    }
}

static void configure(void)
{
    struct cmd c;
    recv_cmd(&c, 1);
    if (c.m.type != CONFIG || c.len < sizeof(uint64_t) * CFG_COUNT)
        die("the first command must be CONFIG with %d fields", CFG_COUNT);
    memcpy(cfg, c.payload, sizeof(uint64_t) * CFG_COUNT);
    if (C(msg_size) != sizeof(struct msg) || C(template_len) > PREFIX_MAX ||
        c.len != sizeof(uint64_t) * CFG_COUNT + C(template_len) || c.nfds < 1 ||
        C(in_size) > 256 || C(out_size) > 64 || !C(max_queue_size) || !C(ts_frac_div))
        die("bad CONFIG");
    memcpy(tmpl, c.payload + sizeof(uint64_t) * CFG_COUNT, C(template_len));
    out_fd = c.fds[0];
    if (C(has_vmm) && c.nfds >= 2)
        vmm_fd = c.fds[1];
    minor = (int)(int64_t)C(minor);
}

int main(int argc, char **argv)
{
    char *end;
    if (argc != 2 || (ctl_fd = (int)strtol(argv[1], &end, 10)) < 0 || *end)
        die("usage: relay CONTROL-FD (started by fuseproto/capture/relay.py)");
    signal(SIGPIPE, SIG_IGN);
    /* A Ctrl-C (or a SIGTERM to the process group) is the proxy's to handle: it closes the
     * capture, and this process ends when its control socket closes, never mid-record. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_sigbus, .sa_flags = SA_NODEFER};
    sigaction(SIGBUS, &sa, NULL);
    configure();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, ctl_fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    struct epoll_event evs[64];
    int fine_timeouts = 1; /* epoll_pwait2 (Linux 5.11): sub-millisecond scan intervals */
    uint64_t last_scan = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        /* Every ring is read every scan_interval while chains are in flight, whatever else
         * happens meanwhile (a driver may drain its used ring between calls) -- every
         * hot_interval while a driver with chains in flight has its interrupts off (see
         * driver_drains(): a Linux guest's losses fell from up to ~20 of ~190 READ replies
         * per run to none); every idle_interval when no chain is in flight (polling
         * drivers). */
        int any_pending = 0, any_started = 0, any_drains = 0;
        for (unsigned i = 0; i < MAX_QUEUES; i++) {
            struct queue *q = queues[i];
            if (q && q->started) {
                any_started = 1;
                if (q->npending) {
                    any_pending = 1;
                    any_drains = any_drains || driver_drains(q);
                }
            }
        }
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        uint64_t interval = any_pending ? C(scan_interval_ns)
                            : any_started ? C(idle_interval_ns) : 1000000000u;
        if (any_drains && C(hot_interval_ns) < interval)
            interval = C(hot_interval_ns);
        uint64_t wait = last_scan + interval > now ? last_scan + interval - now : 0;
        int n;
        if (fine_timeouts) {
            struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
            n = epoll_pwait2(epfd, evs, 64, &ts, NULL);
            if (n < 0 && errno == ENOSYS) {
                fine_timeouts = 0;
                continue;
            }
        } else {
            n = epoll_wait(epfd, evs, 64, (int)((wait + 999999u) / 1000000u));
        }
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        now = now_ns(CLOCK_MONOTONIC);
        if (now >= last_scan + interval) {
            scan_all();
            last_scan = now;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 0) {
                drain_commands();
                continue;
            }
            struct notify *nt = notify_at(evs[i].data.u64);
            if (nt && nt->watched)
                notified(nt, 1);
        }
        drain_commands(); /* those read while an answer was awaited */
        recheck();
        check_stalls(1);
        out_flush();
    }
}

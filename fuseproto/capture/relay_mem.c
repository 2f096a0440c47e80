/* relay_mem.c -- the relay's mapping of guest memory, and guest buffers as pieces of it. */
#include "relay.h"

/* --- guest memory ----------------------------------------------------------------------- */
static struct region *regions;
static size_t nregions;
uint64_t mem_generation;

/* Something the relay cannot follow in guest memory (becomes a note). */
char ring_error[512];
int ring_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ring_error, sizeof ring_error, fmt, ap);
    va_end(ap);
    return -1;
}

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

const unsigned char *gpa_ptr(uint64_t addr, uint64_t len)
{
    return region_ptr(addr, len, 0);
}

const unsigned char *uaddr_ptr(uint64_t addr, uint64_t len)
{
    return region_ptr(addr, len, 1);
}

/* The same by the front-end's address, for writing: NULL (and ring_error) if it is not in
 * a region mapped read-write. */
unsigned char *uaddr_rw(uint64_t addr, uint64_t len)
{
    const unsigned char *p = uaddr_ptr(addr, len);
    for (size_t i = 0; p && i < nregions; i++)
        if (p >= regions[i].base && p < regions[i].base + regions[i].size) {
            if (regions[i].writable)
                return (unsigned char *)p;
            break;
        }
    if (p)
        RING_FAIL("frontend address 0x%" PRIx64 " is in a region the relay may not write",
                  addr);
    return NULL;
}

void mem_clear(void)
{
    if (nregions)
        publish_all(1); /* (no reply is still to be written from what goes) */
    for (size_t i = 0; i < nregions; i++)
        munmap(regions[i].map, regions[i].maplen);
    nregions = 0;
    mem_generation++;
}

int mem_add(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t offset, int fd)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = offset - offset % (uint64_t)page;
    uint64_t rem = offset - start;
    if (size == 0 || size > (1ull << 46)) {
        errno = EINVAL;
        return -1;
    }
    /* Read-write: the relay publishes the used rings of queues whose daemon side is in the
     * shadow (relay_shadow.c); a region it may only read is observed as before. */
    int writable = 1;
    void *p = mmap(NULL, rem + size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)start);
    if (p == MAP_FAILED && errno == EACCES) {
        writable = 0;
        p = mmap(NULL, rem + size, PROT_READ, MAP_SHARED, fd, (off_t)start);
    }
    if (p == MAP_FAILED)
        return -1;
    regions = xrealloc(regions, (nregions + 1) * sizeof *regions);
    regions[nregions++] = (struct region){gpa, size, uaddr, (unsigned char *)p + rem, p,
                                          rem + size, writable};
    mem_generation++;
    return 0;
}

int mem_remove(uint64_t gpa, uint64_t size, uint64_t uaddr)
{
    for (size_t i = 0; i < nregions; i++) {
        struct region *r = &regions[i];
        if (r->gpa == gpa && r->size == size && r->uaddr == uaddr) {
            publish_all(1); /* (no reply is still to be written from it) */
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

void seg_push(segvec_t *s, uint64_t addr, uint64_t len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = (seg_t){addr, len};
}


piecevec_t pieces; /* the message being recorded */

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
int64_t gather(const seg_t *segs, size_t nsegs, uint64_t limit, piecevec_t *out)
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
size_t copy_head(const piecevec_t *p, unsigned char *dst, size_t n)
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
sigjmp_buf bus_jump;
volatile sig_atomic_t in_guest;

void on_sigbus(int sig)
{
    if (in_guest) {
        in_guest = 0;
        siglongjmp(bus_jump, 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}


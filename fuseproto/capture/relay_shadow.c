/* relay_shadow.c -- the shadow used rings: the daemon's used ring where the guest cannot see it.
 *
 * Reading a reply after the daemon has published its used entry loses a reply now and then:
 * a Linux guest draining its used ring with interrupts off takes the entry and reuses the
 * buffer before the relay gets to it. So the daemon is given a used ring of the proxy's
 * own: the proxy adds a memory region (a memfd, at guest-physical and front-end addresses
 * no guest region has) to the table it forwards, and rewrites each queue's SET_VRING_ADDR
 * so that the used ring is there (proxy.py). The guest's own used ring is written by the
 * relay alone: whenever it reads the rings (a call from the daemon, a kick, the periodic
 * scan, GET_VRING_BASE) it records the replies of the new shadow entries first, then copies
 * those entries into the guest's ring in order once their records are written (a reply's
 * body is written from the guest's buffer itself, by the writer thread: relay_out.c;
 * the writer's eventfd wakes the loop to publish what it has written: publish()),
 * publishes the guest's used index (a release barrier before the index store), and calls the guest itself as the guest asked
 * (VIRTQ_AVAIL_F_NO_INTERRUPT; with EVENT_IDX, when the new index passes used_event:
 * virtio 1.x 2.7.10, vring_need_event). The guest cannot take a reply the relay has not
 * recorded, whatever it does with its interrupts.
 *
 * avail_event (EVENT_IDX, after the guest's used ring): the daemon's own, in the shadow,
 * is not copied. A copy would lag the daemon's (it moves without a word to the relay), and
 * a guest reading a stale one skips a kick the daemon waits for. The relay writes there the
 * avail index it has read up to: the guest kicks for anything it adds after that, and the
 * relay passes each kick on (a kick too many is harmless to a daemon). What the relay reads
 * of the avail ring outside a kick (the daemon was not kicked for it) gets a kick of the
 * relay's own (kick_owed). Store, full barrier, load on both sides (the guest: avail index,
 * then avail_event; the relay: avail_event, then the avail index, in scan()'s rereading).
 *
 * The guest's used ring flags (VIRTQ_USED_F_NO_NOTIFY) are set to 0 when the shadow is set
 * up (kick always), for the same reason.
 */
#include "relay.h"

static unsigned char *shadow; /* the proxy's memfd, mapped read-write */
static uint64_t shadow_uaddr, shadow_size;

static inline uint16_t load16(const unsigned char *p)
{
    return le16toh(__atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_ACQUIRE));
}

static inline void store16(unsigned char *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)(void *)p, htole16(v), __ATOMIC_RELEASE);
}

static uint64_t used_len(const struct queue *q)
{
    return C(used_ring_off) + C(used_elem_size) * q->size;
}

/* SHADOW: the proxy's region (its front-end address and size). */
int shadow_map(int fd, uint64_t uaddr, uint64_t size)
{
    if (shadow || !size || size > (1ull << 40)) {
        errno = EINVAL;
        return -1;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    shadow = p;
    shadow_uaddr = uaddr;
    shadow_size = size;
    return 0;
}

/* SET_VRING_ADDR offering the shadow at `uaddr` for q's used ring: set it up from the
 * guest's used ring (its index, entries, flags and avail_event, so the daemon starts where
 * it would have). Returns 1 if the daemon is to get it, 0 if not (ring_error says why: the
 * guest's used ring cannot be written, the offer lies outside the shadow). */
int shadow_setup(struct queue *q, uint64_t uaddr)
{
    q->shadowed = 0;
    q->resolved = 0;
    uint64_t n = q->size, off = uaddr - shadow_uaddr;
    if (!shadow || uaddr < shadow_uaddr || off > shadow_size) {
        RING_FAIL("no shadow at 0x%" PRIx64, uaddr);
        return 0;
    }
    if (!n || (n & (n - 1)) || n > C(max_queue_size)) {
        RING_FAIL("queue size %" PRIu64 " is not a power of two <= %" PRIu64, n,
                  C(max_queue_size));
        return 0;
    }
    if (used_len(q) + 2 > shadow_size - off || off % 4) {
        RING_FAIL("the shadow at 0x%" PRIx64 " has no room for %" PRIu64 " entries", uaddr, n);
        return 0;
    }
    if (sigsetjmp(bus_jump, 0)) {
        RING_FAIL("SIGBUS reading the guest's used ring");
        return 0;
    }
    in_guest = 1;
    unsigned char *ru = uaddr_rw(q->used, used_len(q));
    if (ru) {
        uint64_t len = used_len(q) + (uaddr_rw(q->used, used_len(q) + 2) ? 2 : 0);
        memcpy(shadow + off, ru, len);
        store16(ru, 0); /* flags: kick always (see above) */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    in_guest = 0;
    if (!ru)
        return 0;
    q->shadowed = 1;
    q->shadow_off = off;
    q->mirrored = q->last_used;
    q->kick_owed = 0;
    return 1;
}

/* The rings of a shadowed queue (resolve()): `us` is the shadow, `ru` the guest's. */
int shadow_resolve(struct queue *q)
{
    if (!(q->ru = uaddr_rw(q->used, used_len(q))))
        return -1;
    q->has_avail_event = uaddr_rw(q->used, used_len(q) + 2) != NULL;
    q->us = shadow + q->shadow_off;
    return 0;
}

/* Publish to the guest the entries recorded since the last time (up to last_used) whose
 * replies are in the file (a reply written in place, from the guest's buffer: relay_out.c;
 * the entries after the first not written yet wait for it, in order), and say in
 * avail_event how far the relay has read the avail ring. Returns whether the guest asked
 * for a call for them. (In guest memory: the caller holds the SIGBUS jump.) */
int mirror(struct queue *q)
{
    uint16_t from = q->mirrored, to = q->last_used, w;
    if (!out_written(q->index, &w))
        to = (uint16_t)(w - from) <= (uint16_t)(to - from) ? w : from;
    uint16_t n = (uint16_t)(to - from);
    uint64_t size = q->size, esz = C(used_elem_size);
    if (n) {
        /* (an index jump larger than the ring, noted by scan_used: the last `size`) */
        uint16_t first = n > size ? (uint16_t)(n - size) : 0;
        for (uint16_t i = first; i < n; i++) {
            uint64_t at = C(used_ring_off) + esz * ((uint16_t)(from + i) % size);
            memcpy(q->ru + at, q->us + at, esz);
        }
        __atomic_thread_fence(__ATOMIC_RELEASE); /* the entries before the index */
        store16(q->ru + C(used_idx_off), to);
        q->mirrored = to;
        stats.mirrored += n;
    }
    if (event_idx && q->has_avail_event)
        store16(q->ru + C(used_ring_off) + esz * size, q->last_avail);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the stores before the guest's words are read */
    if (!n)
        return 0;
    if (event_idx && q->has_used_event) {
        uint16_t used_event = load16(q->av + C(avail_ring_off) + 2 * size);
        return (uint16_t)(to - used_event - 1) < n;
    }
    return !(load16(q->av + C(avail_flags_off)) & C(f_no_interrupt));
}

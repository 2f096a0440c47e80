/* relay_ring.c -- the queues: reading the split rings and recording what is new. */
#include "relay.h"

/* --- queues ------------------------------------------------------------------------------- */
struct queue *queues[MAX_QUEUES];

int event_idx; /* VIRTIO_F_RING_EVENT_IDX negotiated (the VMM's SET_FEATURES) */

struct queue *queue_get(unsigned index)
{
    if (index >= MAX_QUEUES)
        return NULL;
    struct queue *q = queues[index];
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q)
            die("out of memory");
        q->index = index;
        q->kick_slot = q->call_slot = -1;
        q->chains = calloc(C(max_queue_size), sizeof *q->chains);
        if (!q->chains)
            die("out of memory");
        queues[index] = q;
    }
    return q;
}

void queue_invalidate(struct queue *q)
{
    q->resolved = 0;
    q->broken = 0;
}

void queue_reset(struct queue *q, uint16_t base)
{
    out_drain(); /* (no reply of the old ring still to be written, to be published) */
    q->last_avail = q->last_used = q->mirrored = base;
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
        !(q->av = uaddr_ptr(q->avail, C(avail_ring_off) + 2 * n)))
        return -1;
    if (q->shadowed ? shadow_resolve(q) < 0
                    : !(q->us = uaddr_ptr(q->used, C(used_ring_off) + C(used_elem_size) * n)))
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
int driver_drains(struct queue *q)
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


static uint64_t inits[64]; /* uniques of INIT requests whose reply Python wants */
static size_t ninits;

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
    /* What the record keeps decides (a snaplen-cut READ reply is a short copy) */
    uint64_t kept = length < C(limit) ? length : C(limit);
    if (q->shadowed && kept >= IN_PLACE_MIN) /* (its entry published once written) */
        out_reply_in_place(q->index, opcode, pieces.v, pieces.n, length, q->last_used);
    else
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

/* The start of a function that reads or writes q's rings: a SIGBUS from here on (guest
 * memory gone from under its mapping) lands back in the caller's frame, which notes it,
 * stops observing the queue and returns; so do rings that no longer resolve. A macro
 * because sigsetjmp's frame must be the caller's own. Leaves in_guest set. */
#define ENTER_RINGS_OR_RETURN(q, doing)                                                     \
    do {                                                                                    \
        if (sigsetjmp(bus_jump, 0)) {                                                       \
            (q)->started = 0;                                                               \
            note((q)->index, "queue %u: proxy error while %s, no longer observed: SIGBUS "  \
                 "(guest memory gone from under its mapping)", (q)->index, (doing));        \
            out_flush();                                                                    \
            return;                                                                         \
        }                                                                                   \
        in_guest = 1;                                                                       \
        if (resolve(q) < 0) {                                                               \
            in_guest = 0;                                                                   \
            (q)->broken = 1;                                                                \
            note((q)->index, "queue %u not observed: %s", (q)->index, ring_error);          \
            out_flush();                                                                    \
            return;                                                                         \
        }                                                                                   \
    } while (0)

/* Record what is new on `q`'s rings: the avail ring, then the used ring. */
void scan(struct queue *q)
{
    if (!q || !q->started || q->broken)
        return;
    ENTER_RINGS_OR_RETURN(q, "reading the rings");
    uint16_t avail_before = q->last_avail;
    int call = 0;
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
        if (q->shadowed) /* recorded: now the guest may have them (relay_shadow.c) */
            call |= mirror(q);
        /* Writing large records takes a while, and the daemon goes on meanwhile: what it
         * completed by now, the driver will take as soon as the kick or call is passed on
         * (and may reuse its buffers at once). Read it first. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if ((uint16_t)ld(q->us + C(used_idx_off), 2) == q->last_used &&
            (uint16_t)ld(q->av + C(avail_idx_off), 2) == q->last_avail)
            break;
    }
    in_guest = 0;
    if (q->shadowed && q->last_avail != avail_before)
        q->kick_owed = 1; /* (cleared when a kick is passed on after this reading) */
    if (call)
        call_guest(q);
    if (faulted) {
        faulted = 0;
        note(q->index, "queue %u: guest memory faulted while a record was written (written "
             "as zeros)", q->index);
        out_flush();
    }
}

/* Publish to the guest what the writer has written of q's replies (woken by its eventfd;
 * wait: first until every record is in the file -- GET_VRING_BASE, SYNC, FINISH, exit),
 * and call the guest if it asked. */
void publish(struct queue *q)
{
    if (!q || !q->shadowed || !q->started || q->broken || q->mirrored == q->last_used)
        return;
    ENTER_RINGS_OR_RETURN(q, "publishing its used entries");
    int call = mirror(q);
    in_guest = 0;
    if (call)
        call_guest(q);
}

void publish_all(int wait)
{
    if (wait)
        out_drain();
    for (unsigned i = 0; i < MAX_QUEUES; i++)
        publish(queues[i]);
}

void scan_all(void)
{
    for (unsigned i = 0; i < MAX_QUEUES; i++)
        if (queues[i])
            scan(queues[i]);
}


/* The session or the ring ends (FINISH, VRING_STOP; before the last reading): say where a
 * queue's rings and the relay disagree -- requests the relay has not read, used entries
 * not recorded or not yet given to the guest, chains still waiting for their reply -- so
 * that a VM that hung shows which side waits. Quiet when all is settled. */
void report_rings(struct queue *q)
{
    if (!q || !q->started || q->broken)
        return;
    ENTER_RINGS_OR_RETURN(q, "reading the rings at the end");
    uint16_t avail = (uint16_t)ld(q->av + C(avail_idx_off), 2);
    uint16_t flags = (uint16_t)ld(q->av + C(avail_flags_off), 2);
    int ue = event_idx && q->has_used_event;
    uint16_t used_event = ue ? (uint16_t)ld(q->av + C(avail_ring_off) + 2 * q->size, 2) : 0;
    uint16_t daemon_used = (uint16_t)ld(q->us + C(used_idx_off), 2);
    uint16_t guest_used = q->shadowed ? (uint16_t)ld(q->ru + C(used_idx_off), 2) : daemon_used;
    in_guest = 0;
    /* (with EVENT_IDX a driver waiting for a call has used_event at the entries it has
     * taken: short of the used index, it has not taken what it was given) */
    if (avail == q->last_avail && daemon_used == q->last_used && !q->npending &&
        (!q->shadowed || (q->mirrored == q->last_used && guest_used == q->mirrored)) &&
        (!ue || used_event == guest_used))
        return;
    char ev[32] = "";
    if (ue)
        snprintf(ev, sizeof ev, ", used_event %u", used_event);
    send_log("queue %u at the end: avail idx %u (the relay read to %u), the daemon's used idx "
             "%u (recorded to %u), the guest's used idx %u (published to %u)%s, avail flags "
             "0x%x, %zu chain(s) waiting for a reply%s%s%s", q->index, avail, q->last_avail,
             daemon_used, q->last_used, guest_used, q->shadowed ? q->mirrored : q->last_used,
             ev, flags, q->npending, q->deferred ? "; a kick handed back, unanswered" : "",
             q->kick_owed ? "; a kick owed to the daemon" : "",
             q->stalled ? "; stalled" : "");
}

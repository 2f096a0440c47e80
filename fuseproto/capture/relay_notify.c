/* relay_notify.c -- kicks and calls: the eventfds the relay sits between, and when it
 * passes a notification on. */
#include "relay.h"

static struct notify *notifies;
static size_t nnotifies;
int epfd;
int vmm_fd = -1;
int fe_busy;

/* --- kicks and calls ---------------------------------------------------------------------------- */
struct notify *notify_at(uint64_t tag)
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


struct notify *kick_target(struct queue *q, struct notify *fired)
{
    if (q && q->kick_slot >= 0 && notifies[q->kick_slot].used)
        return &notifies[q->kick_slot];
    return fired;
}

void kicked(struct queue *q, struct notify *n)
{
    if (q && q->stalled) { /* a fresh kick: the stall's clock starts again */
        q->stall_since = now_ns(CLOCK_MONOTONIC);
        q->stall_delay = C(rekick_first_ns);
    }
    scan(q);
    if (n) {
        forward(n);
        if (q)
            q->kick_owed = 0;
    }
}

/* Call the guest for q's newly published used entries (shadowed queues: the relay, not
 * the daemon, decides; see relay_shadow.c). */
void call_guest(struct queue *q)
{
    if (q->call_slot < 0 || !notifies[q->call_slot].used)
        return;
    stats.signals++;
    forward(&notifies[q->call_slot]);
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
int held_back(int may_drain)
{
    if (vmm_waiting())
        return 1;
    if (may_drain)
        drain_commands();
    return fe_busy;
}

/* A kick held back: Python is told (DEFERRED) and answers KICK once the front-end
 * messages ahead of it are forwarded (or check_stalls passes it on after a while). */
void hand_back(struct queue *q, unsigned index, uint64_t id)
{
    if (q) {
        q->deferred = 1;
        q->deferred_since = now_ns(CLOCK_MONOTONIC);
    }
    send_event(DEFERRED, index, id, 0, NULL, 0);
}

/* One notification: read the rings, then pass it on. A kick: the new chains are read
 * before the daemon may take them (once it has, a guest draining its used ring can reuse
 * their descriptors at once). A call: the replies are read and written before the driver
 * is told. */
void notified(struct notify *n, int may_drain)
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
            hand_back(q, index, id);
            return;
        }
        n = notify_at(tag); /* (draining commands may have dropped or moved it) */
        kicked(q, kick_target(q, n));
    } else {
        stats.calls++;
        scan(q);
        if (!q || !q->shadowed)
            forward(n); /* (a shadowed queue's guest was called by scan() if it asked) */
    }
}

/* Kick the daemon for avail entries the relay read outside a kick (a shadowed queue's
 * guest may not have kicked for them: relay_shadow.c), unless a front-end message is in
 * the way (then next round). */
void pay_kicks(void)
{
    for (unsigned i = 0; i < MAX_QUEUES; i++) {
        struct queue *q = queues[i];
        if (!q || !q->kick_owed || q->kick_slot < 0 || q->deferred || held_back(1))
            continue;
        q->kick_owed = 0;
        forward(&notifies[q->kick_slot]);
    }
}

/* Kick again a queue whose chains are pending with no used entry for a while: the VM must
 * not hang on a kick the daemon dropped (may_kick 0: only say which stalls are over). */
void check_stalls(int may_kick)
{
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    for (unsigned i = 0; i < MAX_QUEUES; i++) {
        struct queue *q = queues[i];
        if (!q)
            continue;
        if (may_kick && q->deferred && now - q->deferred_since > C(answer_timeout_ns)) {
            /* Handed back and never answered: order behind front-end messages matters
             * less than a VM waiting forever. */
            q->deferred = 0;
            send_log("queue %u: a kick handed back %.1f s ago was not answered; passed on",
                     q->index, (double)(now - q->deferred_since) / 1e9);
            q->deferred_again = 0;
            kicked(q, kick_target(q, NULL)); /* (one kick covers those held back too) */
        }
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

void notify_set(struct cmd *c)
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
    if (q && n->kind == 1)
        q->call_slot = (int)slot;
}

struct notify *notify_by_id(uint64_t id)
{
    for (size_t i = 0; i < nnotifies; i++)
        if (notifies[i].used && notifies[i].id == id)
            return &notifies[i];
    return NULL;
}

void notify_drop(uint64_t id, int final)
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
        else if (queues[i] && queues[i]->call_slot == (int)(n - notifies))
            queues[i]->call_slot = -1;
}

/* relay.c -- the data plane of `fuseproto capture proxy`.
 *
 * A process of its own, started by fuseproto/capture/relay.py (which builds it with the
 * system's gcc, cached by the hash of its files) for each proxied session, and driven by the
 * control plane (fuseproto/capture/proxy.py) over a SOCK_SEQPACKET socket (fd argv[1]):
 * commands in, events out, file descriptors with SCM_RIGHTS.
 *
 * It owns what happens per request (one file per part):
 *   - relay_notify.c: it epolls the kick eventfds the VMM writes and the call eventfds the
 *     proxy handed the daemon; on a kick it reads the new avail entries and records each
 *     request, then writes the daemon's kick eventfd; on a call it reads the new used
 *     entries, records each reply from the writable buffers (used.len bytes), then calls
 *     the guest (relay_ring.c reads the rings, chains and indirect tables included);
 *   - relay_shadow.c: the daemon's used ring is a shadow the guest cannot see; the relay
 *     publishes each entry to the guest's used ring once its reply is recorded;
 *   - relay_out.c: a writer thread writes the records to the pcap file: copied into a
 *     staging ring before the kick or call is passed on, or (a reply on a shadowed queue)
 *     written from the guest's buffer before its used entry is published;
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
 * record in half -- the relay writes out what it holds, sees its control socket close and
 * exits; and if the relay dies, the proxy goes on forwarding kicks and calls itself (and
 * publishing the shadow's used entries).
 */
#include "relay.h"

int ctl_fd = -1;
uint64_t cfg[CFG_COUNT];
unsigned char tmpl[PREFIX_MAX];
struct stats stats;
int minor = -1;

static int rechecks; /* a queue has a kick held back to look at again (recheck()) */
static uint64_t answer_token;

/* --- the control socket ---------------------------------------------------------------------- */
static struct cmd *queued_head, *queued_tail; /* read while waiting for an answer */
static unsigned char rxbuf[MAX_PAYLOAD + sizeof(struct msg)];

void send_event(uint32_t type, uint32_t queue, uint64_t a, uint64_t b, const void *data,
                       size_t len)
{
    struct msg m = {type, queue, a, b, 0, 0};
    struct iovec iv[2] = {{&m, sizeof m}, {(void *)data, len}};
    struct msghdr h = {.msg_iov = iv, .msg_iovlen = len ? 2 : 1};
    while (sendmsg(ctl_fd, &h, MSG_NOSIGNAL) < 0) {
        if (errno == EINTR)
            continue;
        if (errno == EPIPE || errno == ECONNRESET) {
            out_drain(); /* the proxy is gone: what is recorded stays recorded */
            _exit(0);
        }
        die("control socket: %s", strerror(errno));
    }
}

void send_log(const char *fmt, ...)
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
        out_drain();
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

void close_fds(struct cmd *c)
{
    for (int i = 0; i < c->nfds; i++)
        close(c->fds[i]);
    c->nfds = 0;
}


/* --- INIT: handed to Python, which answers (MINOR, ANNOTATE) and says RESUME ------------- */

static void apply(struct cmd *c);

int await_answer(int direction, unsigned queue, const piecevec_t *p, uint64_t n)
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
            q->shadowed = 0;
            if (m->d) { /* the shadow offered for its used ring: say whether it is taken */
                int ok = shadow_setup(q, m->d);
                send_event(SHADOWED, q->index, (uint64_t)ok, 0, ok ? NULL : ring_error,
                           ok ? 0 : strlen(ring_error));
            }
        }
        break;
    case SHADOW:
        if (c->nfds != 1 || shadow_map(c->fds[0], m->a, m->b) < 0)
            send_log("the shadow used rings cannot be mapped: %s; replies are read from the "
                     "guest's used rings", oserr(c->nfds != 1 ? EBADF : errno));
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
            report_rings(q);
            scan(q);
            out_drain();
            publish(q); /* (the guest has all of it before the VMM hears the ring stopped) */
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
        publish_all(1); /* (written, then published) */
        send_event(SYNCED, 0, m->a, 0, NULL, 0);
        break;
    case FEATURES:
        event_idx = (m->a >> C(f_event_idx)) & 1;
        break;
    case FINISH:
        for (unsigned i = 0; i < MAX_QUEUES; i++)
            report_rings(queues[i]);
        scan_all();
        check_stalls(0); /* (its lines before the counters: the proxy stops reading then) */
        publish_all(1);
        out_drain();
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
                hand_back(q, q->index, 0);
            } else {
                kicked(q, kick_target(q, NULL));
            }
        }
    }
}

/* Apply the commands waiting (those read while an answer was awaited first). */
void drain_commands(void)
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
    if (C(staging_size) < 4096 || C(staging_size) > (1ull << 34))
        die("bad CONFIG: staging_size %" PRIu64, C(staging_size));
    out_start(C(staging_size));
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
    ev.data.u64 = WRITER_TAG; /* replies written in place: their entries may be published */
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, out_event_fd(), &ev) < 0)
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
            if (evs[i].data.u64 == WRITER_TAG) {
                int fault = out_event();
                if (fault)
                    note((unsigned)fault - 1, "queue %u: guest memory faulted while a reply "
                         "was written (written as zeros)", (unsigned)fault - 1);
                publish_all(0);
                continue;
            }
            struct notify *nt = notify_at(evs[i].data.u64);
            if (nt && nt->watched)
                notified(nt, 1);
        }
        drain_commands(); /* those read while an answer was awaited */
        recheck();
        pay_kicks();
        check_stalls(1);
        out_flush();
    }
}

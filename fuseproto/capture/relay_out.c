/* relay_out.c -- the capture file: records staged in memory, written by a thread of their own.
 *
 * Writing a 128 KiB READ reply into the capture's page cache takes ~100 us here (1.2 GB/s
 * to ext4), and it used to be done before the call was passed on. Now the writer thread
 * writes the records to the file, whole and in order, while the traffic goes on. A record
 * reaches it one of two ways:
 *   - staged: copied whole into a staging ring (pre-faulted memory) before its kick or
 *     call is passed on -- requests, the replies of queues without a shadow, annotations.
 *     The guest may reuse a buffer once it has its used entry: the copy is what is kept;
 *   - in place (out_reply_in_place): a reply on a shadowed queue, of IN_PLACE_MIN bytes
 *     or more (a shorter one is staged: its copy is cheaper than the writer's hand-off,
 *     READ x16 at load 1.3: 0.34x direct with the threshold, 0.21-0.30x without, 0.23-0.26x
 *     staging all). Only its header is staged; the writer writes the body straight from guest memory (writev), and the used
 *     entry reaches the guest's ring only once that is done (the relay publishes up to
 *     out_written(): relay_shadow.c, woken by out_event_fd). The guest cannot see the
 *     entry, so it cannot reuse the buffer under the write; no copy (memcpy is slow on
 *     this VM: ~1.7-2.1 GB/s for 128 KiB). The writer publishes nothing itself: the rings,
 *     the call eventfds and guest-memory faults (SIGBUS, the main thread's) stay the
 *     event loop's, and the loop never waits for the writer to publish.
 * The guarantees stay:
 *   - nothing is dropped: a full ring (or splice table) makes the recorder wait for the
 *     writer (counted: stats.stalls); a record larger than the ring is written directly,
 *     in its place;
 *   - the file holds whole records when the relay exits (out_drain() before every exit,
 *     SYNC and FINISH; the relay publishes after); should the relay be killed mid-write,
 *     the proxy cuts the file back to its last whole record (cut_to_whole_records);
 *   - a staged record is committed (`staged` moved) once copied, so guest memory that
 *     vanishes under the copy (SIGBUS: scan() stops observing the queue and says so)
 *     leaves no part of one; guest memory that faults under the writer's writev (EFAULT)
 *     is written as zeros (the pages that fault: write_guest), and noted;
 *   - guest memory is not unmapped while a body waits to be written (relay_mem.c drains).
 */
#include "relay.h"

#include <pthread.h>

int out_fd = -1;
int faulted; /* guest memory faulted while a record was copied: a note is owed */
static int out_broken; /* the file cannot be written: recording stops, traffic goes on */

static unsigned char *stage;  /* the staging ring, stage_size bytes */
static uint64_t stage_size;
static uint64_t staged;       /* (main thread) bytes staged so far, absolute */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;  /* for the writer */
static pthread_cond_t room = PTHREAD_COND_INITIALIZER;  /* for the recorder */
static uint64_t published;    /* (lock) staged bytes the writer may write */
static uint64_t written;      /* (lock) bytes the writer has written (or dropped, broken) */
static int write_error;       /* (lock) errno of the writer's failure, once */
static int error_said;

/* Replies written in place: a splice is a record's body, written after the staged bytes
 * before `at` (its header). Absolute positions; slot = pos % SPLICES (or % SPLICE_IOVS). */
#define SPLICES 4096
#define SPLICE_IOVS 65536
struct splice {
    uint64_t at;           /* staged bytes before it */
    uint64_t iov, niov;    /* its pieces in iovs[] */
    unsigned queue;
    uint16_t idx;          /* the used index once its entry is published */
};
static struct splice splices[SPLICES];
static struct iovec iovs[SPLICE_IOVS];
static uint64_t spl_head, iov_head; /* (main thread) splices and pieces added */
static uint64_t spl_pub;            /* (lock) splices the writer may write */
static uint64_t spl_done, iov_done; /* (lock) written */
static uint64_t sub_n[MAX_QUEUES];  /* (main thread) splices added per queue */
static uint64_t done_n[MAX_QUEUES]; /* (lock) written per queue */
static uint16_t done_idx[MAX_QUEUES]; /* (lock) the used index after the last one written */
static int event_fd = -1;           /* the writer -> the loop: splices written */
static int writer_fault;            /* (lock) queue + 1 of a body that faulted */

static void say_error(void)
{
    pthread_mutex_lock(&lock);
    int e = write_error;
    pthread_mutex_unlock(&lock);
    if (e && !error_said) {
        error_said = 1;
        out_broken = 1;
        send_log("cannot write the capture: %s; recording stops here, the traffic goes on",
                 oserr(e));
    }
}

/* write() all of [p, p+n), going on after a short write; an errno, or 0. */
static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write [p, p+n) of guest memory; after a fault (EFAULT) -- or from the start, paged --
 * one page at a time, a page that faults written as zeros: the kernel refuses a whole
 * chunk of its own around a fault (a pipe: a page of the pipe's), so the bytes before the
 * fault would go with it. An errno, or 0; *fault set if a page faulted. */
static int write_guest(int fd, const unsigned char *p, size_t n, int paged, int *fault)
{
    static const unsigned char zeros[4096];
    while (n) {
        size_t k = n;
        if (paged) { /* (4 KiB: the smallest page; a larger one faults as a whole too) */
            size_t room = sizeof zeros - ((uintptr_t)p & (sizeof zeros - 1));
            k = k < room ? k : room;
        }
        ssize_t w = write(fd, p, k);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EFAULT && !paged) {
            paged = 1;
            continue;
        }
        if (w < 0 && errno == EFAULT) {
            *fault = 1;
            int e = write_all(fd, zeros, k);
            if (e)
                return e;
            w = (ssize_t)k;
        } else if (w <= 0) {
            return w < 0 ? errno : ENOSPC;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write a body from guest memory: writev, going on after a short write; after a fault
 * (EFAULT: somewhere in the pieces of that writev) the piece at hand is written by
 * write_guest(), then writev goes on. An errno, or 0; *fault set. */
static int write_pieces(int fd, const struct iovec *v, uint64_t n, int *fault)
{
    uint64_t i = 0;
    size_t skip = 0; /* of v[i], written already */
    while (i < n) {
        struct iovec w[64];
        int k = 0;
        for (uint64_t j = i; j < n && k < 64; j++, k++)
            w[k] = j == i ? (struct iovec){(unsigned char *)v[j].iov_base + skip,
                                           v[j].iov_len - skip} : v[j];
        ssize_t r = writev(fd, w, k);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EFAULT) { /* the rest of this piece, page by page */
            int e = write_guest(fd, w[0].iov_base, w[0].iov_len, 1, fault);
            if (e)
                return e;
            i++;
            skip = 0;
            continue;
        }
        if (r < 0)
            return errno;
        if (r == 0) {
            uint64_t rest = 0;
            for (int j = 0; j < k; j++)
                rest += w[j].iov_len;
            if (rest)
                return ENOSPC;
        }
        size_t got = (size_t)r;
        while (i < n && got >= v[i].iov_len - skip) {
            got -= v[i].iov_len - skip;
            i++;
            skip = 0;
        }
        skip += got;
    }
    return 0;
}

static void *writer(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (written == published && spl_done == spl_pub)
            pthread_cond_wait(&more, &lock);
        uint64_t from = written, to = published, s = spl_done, s_to = spl_pub;
        int broken = write_error != 0;
        pthread_mutex_unlock(&lock);
        int e = 0;
        while (from < to || s < s_to) {
            const struct splice *sp = s < s_to ? &splices[s % SPLICES] : NULL;
            uint64_t stop = sp ? sp->at : to;
            while (!broken && !e && from < stop) { /* (at most two pieces: the ring wraps) */
                uint64_t off = from % stage_size;
                uint64_t n = stop - from < stage_size - off ? stop - from : stage_size - off;
                e = write_all(out_fd, stage + off, n);
                from += n;
            }
            from = stop;
            if (!sp)
                break;
            int fault = 0;
            uint64_t niov = sp->niov, first = sp->iov;
            if (!broken && !e) {
                /* (its pieces are contiguous in iovs[]: out_reply_in_place never wraps) */
                e = write_pieces(out_fd, &iovs[first % SPLICE_IOVS], niov, &fault);
            }
            s++;
            pthread_mutex_lock(&lock);
            if (e && !write_error)
                write_error = e;
            broken = write_error != 0;
            written = from;
            spl_done = s;
            iov_done = first + niov;
            done_n[sp->queue]++;
            done_idx[sp->queue] = sp->idx;
            if (fault && !writer_fault)
                writer_fault = (int)sp->queue + 1;
            pthread_cond_broadcast(&room);
            pthread_mutex_unlock(&lock);
            uint64_t one = 1;
            while (write(event_fd, &one, sizeof one) < 0 && errno == EINTR)
                ;
        }
        pthread_mutex_lock(&lock);
        if (e && !write_error)
            write_error = e;
        written = to; /* (after a failure: dropped, as recording has stopped) */
        pthread_cond_broadcast(&room);
    }
    return NULL;
}

/* CONFIG: the ring (pre-faulted) and its writer. */
void out_start(uint64_t size)
{
    stage_size = size;
    stage = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
    if (stage == MAP_FAILED)
        die("staging ring of %" PRIu64 " bytes: %s", size, strerror(errno));
    event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (event_fd < 0)
        die("eventfd: %s", strerror(errno));
    pthread_t t;
    sigset_t all, old;
    sigfillset(&all); /* signals (SIGBUS from guest memory) are the main thread's */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&t, NULL, writer, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e)
        die("writer thread: %s", strerror(e));
}

/* Hand what is staged to the writer (it writes while the traffic goes on). */
void out_flush(void)
{
    pthread_mutex_lock(&lock);
    if (published != staged || spl_pub != spl_head) {
        published = staged;
        spl_pub = spl_head;
        pthread_cond_signal(&more);
    }
    pthread_mutex_unlock(&lock);
    say_error();
}

/* Return once every record staged is in the file (or recording has stopped). */
void out_drain(void)
{
    out_flush();
    pthread_mutex_lock(&lock);
    while (written != staged || spl_done != spl_head)
        pthread_cond_wait(&room, &lock);
    pthread_mutex_unlock(&lock);
    say_error();
}

/* Room for n more bytes in the ring: wait for the writer while there is none. */
static void make_room(uint64_t n)
{
    pthread_mutex_lock(&lock);
    if (staged + n - written > stage_size) {
        stats.stalls++;
        published = staged; /* (what is staged must go before room can come) */
        spl_pub = spl_head;
        pthread_cond_signal(&more);
        while (staged + n - written > stage_size)
            pthread_cond_wait(&room, &lock);
    }
    pthread_mutex_unlock(&lock);
}

/* Copy n bytes into the ring at *pos (moved on; committed by the caller). */
static void stage_copy(uint64_t *pos, const void *src, uint64_t n)
{
    while (n) {
        uint64_t off = *pos % stage_size;
        uint64_t k = n < stage_size - off ? n : stage_size - off;
        memcpy(stage + off, src, k);
        src = (const unsigned char *)src + k;
        *pos += k;
        n -= k;
    }
}

/* A record too large for the ring: written directly from guest memory, in its place (the
 * ring drained first). Guest memory that faults under the write is written as zeros. */
static void write_direct(const struct iovec *v, int n)
{
    out_drain();
    for (int i = 0; i < n && !out_broken; i++) {
        int e = write_guest(out_fd, v[i].iov_base, v[i].iov_len, 0, &faulted);
        if (e) {
            pthread_mutex_lock(&lock);
            write_error = e;
            pthread_mutex_unlock(&lock);
            say_error();
        }
    }
}

/* Opcode hints: the recorder's unique -> opcode of the requests recorded (bounded). */
fifo_t opcodes;

/* Room for a splice of n pieces (contiguous in iovs[]): wait for the writer while there
 * is none. Returns the first piece's position. */
static uint64_t splice_room(uint64_t n)
{
    uint64_t first = iov_head;
    if (first % SPLICE_IOVS + n > SPLICE_IOVS)
        first += SPLICE_IOVS - first % SPLICE_IOVS;
    pthread_mutex_lock(&lock);
    if (spl_head - spl_done >= SPLICES || first + n - iov_done > SPLICE_IOVS) {
        stats.stalls++;
        published = staged;
        spl_pub = spl_head;
        pthread_cond_signal(&more);
        while (spl_head - spl_done >= SPLICES || first + n - iov_done > SPLICE_IOVS)
            pthread_cond_wait(&room, &lock);
    }
    pthread_mutex_unlock(&lock);
    return first;
}

/* One record: the template's prefix filled in, then the pieces (at most `limit` bytes of
 * a message of `length`). opcode < 0: no hint; ts 0: now. idx >= 0: a reply of a shadowed
 * queue, its body written in place, its used entry published (up to used index idx) once
 * written. */
static void record_at(int direction, unsigned queue, int64_t opcode, const struct iovec *pv,
                      size_t np, uint64_t length, uint64_t ts, int32_t idx)
{
    if (out_broken)
        return;
    uint64_t cap = length < C(limit) ? length : C(limit);
    uint64_t sum = 0;
    size_t used = 0;
    for (; used < np && sum < cap; used++)
        sum += pv[used].iov_len;
    if (sum < cap) /* (never: the pieces hold at least this much) the header says the truth */
        cap = sum;
    unsigned char h[PREFIX_MAX];
    memcpy(h, tmpl, C(template_len));
    if (!ts)
        ts = now_ns(CLOCK_REALTIME);
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
    if (idx >= 0 && queue < MAX_QUEUES && used <= SPLICE_IOVS / 2 &&
        C(template_len) <= stage_size) {
        uint64_t first = splice_room(used);
        make_room(C(template_len));
        uint64_t pos = staged;
        stage_copy(&pos, h, C(template_len));
        staged = pos;
        uint64_t left = cap, k = 0;
        for (size_t i = 0; i < np && left; i++, k++) {
            size_t n = pv[i].iov_len < left ? pv[i].iov_len : left;
            iovs[(first + k) % SPLICE_IOVS] = (struct iovec){pv[i].iov_base, n};
            left -= n;
        }
        pthread_mutex_lock(&lock);
        if (sub_n[queue] == done_n[queue]) /* (none in flight: all before it is written) */
            done_idx[queue] = (uint16_t)(idx - 1);
        pthread_mutex_unlock(&lock);
        splices[spl_head % SPLICES] = (struct splice){staged, first, k, queue, (uint16_t)idx};
        spl_head++;
        iov_head = first + k;
        sub_n[queue]++;
        return;
    }
    uint64_t total = C(template_len) + cap;
    if (total > stage_size) {
        struct iovec v[OUT_IOV];
        int n = 0;
        v[n++] = (struct iovec){h, C(template_len)};
        uint64_t left = cap;
        for (size_t i = 0; i < np && left; i++) {
            size_t k = pv[i].iov_len < left ? pv[i].iov_len : left;
            if (n == OUT_IOV) {
                write_direct(v, n);
                n = 0;
            }
            v[n++] = (struct iovec){pv[i].iov_base, k};
            left -= k;
        }
        write_direct(v, n);
        return;
    }
    make_room(total);
    uint64_t pos = staged;
    stage_copy(&pos, h, C(template_len));
    uint64_t left = cap;
    for (size_t i = 0; i < np && left; i++) {
        size_t k = pv[i].iov_len < left ? pv[i].iov_len : left;
        stage_copy(&pos, pv[i].iov_base, k);
        left -= k;
    }
    staged = pos; /* whole: committed */
}

void record(int direction, unsigned queue, int64_t opcode, const struct iovec *pv, size_t np,
            uint64_t length)
{
    record_at(direction, queue, opcode, pv, np, length, 0, -1);
}

void out_reply_in_place(unsigned queue, int64_t opcode, const struct iovec *pv, size_t np,
                        uint64_t length, uint16_t idx)
{
    record_at((int)C(dir_reply), queue, opcode, pv, np, length, 0, idx);
}

/* How far q's used entries may be published: 1 if every reply written in place is in the
 * file (all that is recorded may go), else 0 and *idx the used index after the last one
 * written. */
int out_written(unsigned queue, uint16_t *idx)
{
    if (queue >= MAX_QUEUES)
        return 1;
    pthread_mutex_lock(&lock);
    int all = done_n[queue] == sub_n[queue];
    *idx = done_idx[queue];
    pthread_mutex_unlock(&lock);
    return all;
}

/* The eventfd the writer signals when it has written a reply in place (read it: 0 if
 * there was nothing, else the first queue whose body faulted + 1, or -1 for none). */
int out_event_fd(void)
{
    return event_fd;
}

int out_event(void)
{
    uint64_t v;
    while (read(event_fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&lock);
    int f = writer_fault;
    writer_fault = 0;
    pthread_mutex_unlock(&lock);
    return f;
}

void annotate_at(unsigned queue, const char *text, size_t len, uint64_t ts)
{
    if (len > TEXT_ARENA)
        len = TEXT_ARENA;
    struct iovec iv = {(void *)text, len};
    record_at((int)C(dir_annotation), queue, -1, &iv, 1, len, ts, -1); /* ts: Python's */
}

void note(unsigned queue, const char *fmt, ...)
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

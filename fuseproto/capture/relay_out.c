/* relay_out.c -- the capture file: records staged in memory, written by a thread of their own.
 *
 * Writing a 128 KiB READ reply into the capture's page cache takes ~100 us here (1.2 GB/s
 * to ext4), and it used to be done before the call was passed on. Now each record is
 * copied whole into a staging ring (pre-faulted memory: the copy runs at memory speed) and
 * the writer thread writes the ring to the file, whole records in order, while the traffic
 * goes on. The guarantees stay:
 *   - nothing is dropped: a full ring makes the recorder wait for the writer (counted:
 *     stats.stalls); a record larger than the ring is written directly, in its place;
 *   - a record is staged before its kick or call is passed on (the guest may reuse the
 *     buffer once it has its used entry: the copy is what the relay keeps);
 *   - the file holds whole records when the relay exits (out_drain() before every exit,
 *     SYNC and FINISH); should the relay be killed mid-write, the proxy cuts the file back
 *     to its last whole record (cut_to_whole_records);
 *   - a record is staged whole or not at all: it is committed (`staged` moved) once
 *     copied, so guest memory that vanishes under the copy (SIGBUS: scan() stops
 *     observing the queue and says so) leaves no part of one.
 * The copy is not free on this VM (memcpy ~1.7-2.1 GB/s, measured with a 128 KiB copy
 * loop at load ~8 on 2 CPUs; process_vm_readv, which would turn a fault into EFAULT, 1.0
 * GB/s): the gain is the page-cache write (~100 us per 128 KiB reply) done on another
 * CPU, when there is one.
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

static void *writer(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (written == published)
            pthread_cond_wait(&more, &lock);
        uint64_t from = written, to = published;
        int broken = write_error != 0;
        pthread_mutex_unlock(&lock);
        int e = 0;
        while (!broken && !e && from < to) { /* (at most two pieces: the ring wraps) */
            uint64_t off = from % stage_size;
            uint64_t n = to - from < stage_size - off ? to - from : stage_size - off;
            e = write_all(out_fd, stage + off, n);
            from += n;
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
    if (published != staged) {
        published = staged;
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
    while (written != staged)
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
 * ring drained first). Guest memory that faults under writev is written as zeros. */
static void write_direct(const struct iovec *v, int n)
{
    static const unsigned char zeros[4096];
    out_drain();
    for (int i = 0; i < n && !out_broken; i++) {
        const unsigned char *p = v[i].iov_base;
        size_t left = v[i].iov_len;
        int e = 0;
        while (left && !e) {
            ssize_t w = write(out_fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EFAULT) { /* the rest of this piece: zeros */
                faulted = 1;
                while (left && !e) {
                    size_t z = left < sizeof zeros ? left : sizeof zeros;
                    e = write_all(out_fd, zeros, z);
                    left -= z;
                }
                break;
            }
            if (w <= 0)
                e = w < 0 ? errno : ENOSPC;
            else {
                p += w;
                left -= (size_t)w;
            }
        }
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

/* One record: the template's prefix filled in, then the pieces (at most `limit` bytes of
 * a message of `length`). opcode < 0: no hint; ts 0: now. */
static void record_at(int direction, unsigned queue, int64_t opcode, const struct iovec *pv,
                      size_t np, uint64_t length, uint64_t ts)
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
    record_at(direction, queue, opcode, pv, np, length, 0);
}

void annotate_at(unsigned queue, const char *text, size_t len, uint64_t ts)
{
    if (len > TEXT_ARENA)
        len = TEXT_ARENA;
    struct iovec iv = {(void *)text, len};
    record_at((int)C(dir_annotation), queue, -1, &iv, 1, len, ts); /* ts: Python's */
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

/* relay_out.c -- the capture file: records batched by pointer, written with writev. */
#include "relay.h"

/* --- the capture file ----------------------------------------------------------------------- */
int out_fd = -1;
static int out_broken;
static struct {
    struct iovec iov[OUT_IOV];
    int niov;
    unsigned char hdr[OUT_RECS][PREFIX_MAX];
    int nhdr;
    char text[TEXT_ARENA];
    size_t ntext;
} out;
int faulted; /* guest memory faulted under a writev: a note is owed */

/* Write what is batched. A record is never left half-written by us: a short write goes on
 * from where it stopped, and guest memory that faults under writev is written as zeros. */
void out_flush(void)
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
fifo_t opcodes;

/* One record: the template's prefix filled in, then the pieces (at most `limit` bytes of
 * a message of `length`). opcode < 0: no hint. */
void record(int direction, unsigned queue, int64_t opcode, const struct iovec *pv,
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

void annotate_at(unsigned queue, const char *text, size_t len, uint64_t ts)
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


/* relay.h -- what the files of the capture proxy's data plane share (relay.c opens
 * with what the relay does; relay.py reads the interface lists below from this file). */
#ifndef FUSEPROTO_RELAY_H
#define FUSEPROTO_RELAY_H
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
#include <sys/eventfd.h>
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
    X(FINISH) X(FEATURES) X(SHADOW)
#define EVENTS(X) X(INIT) X(DEFERRED) X(LOG) X(SYNCED) X(STATS) X(SHADOWED)
#define STATS_FIELDS(X) \
    X(kicks) X(calls) X(rekicks) X(requests) X(replies) X(notes) X(mirrored) X(signals) X(stalls)
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
    X(answer_timeout_ns) X(minor) X(has_vmm) X(staging_size)

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

#define MAX_PAYLOAD (256 << 10)
#define MAX_FDS 8
#define MAX_QUEUES 256 /* every queue a kick names (its 8-bit index): relay.py SHADOW_QUEUES */
#define KEY_DATA 64     /* a request's first bytes kept to know it again (and its length) */
#define OUT_IOV 1024    /* IOV_MAX */
#define OUT_RECS 256
#define TEXT_ARENA (64 << 10)
#define PREFIX_MAX 64
#define BACKEND_QUEUE 0xFFFF
#define RESCANS 4 /* the rings are read again (before a kick or call is passed on) while they
                   * moved during the previous reading, this many times at most */
#define IN_PLACE_MIN (16 << 10) /* a shadowed reply this long is written from the guest's
                                 * buffer (a shorter one is copied: cheaper than a wait) */
#define MAX_CHAIN 65536 /* descriptors followed in one chain at most (2x the largest ring) */

extern uint64_t cfg[CFG_COUNT];
#define C(name) (cfg[CFG_##name])
extern unsigned char tmpl[PREFIX_MAX];

struct stats {
#define STAT_FIELD(name) uint64_t name;
    STATS_FIELDS(STAT_FIELD)
};
extern struct stats stats;

extern int minor; /* the negotiated minor, once Python says (-1 until then) */
extern int ctl_fd; /* argv[1] */

/* --- shared types ------------------------------------------------------------------------ */
typedef struct {
    uint64_t *k, *v;
    uint8_t *used;
    size_t cap, n;
} map_t;

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

struct region {
    uint64_t gpa, size, uaddr;
    unsigned char *base; /* the region's first byte in our mapping */
    void *map;
    size_t maplen;
    int writable; /* mapped read-write (the used rings the relay publishes to are in it) */
};

typedef struct {
    uint64_t addr, len;
} seg_t;

typedef struct {
    seg_t *v;
    size_t n, cap;
} segvec_t;

typedef struct {
    struct iovec *v;
    size_t n, cap;
} piecevec_t;

struct cmd {
    struct msg m;
    unsigned char *payload;
    size_t len;
    int fds[MAX_FDS];
    int nfds;
    struct cmd *next;
};

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
    int call_slot; /* the daemon's current call eventfd pair, -1 if none */
    /* The daemon's used ring in the shadow (relay_shadow.c): `us` is it, `ru` the guest's
     * own (written by the relay only), published up to `mirrored`. */
    int shadowed;
    uint64_t shadow_off;
    unsigned char *ru;
    int has_avail_event;
    uint16_t mirrored;
    int kick_owed; /* avail entries read outside a kick: the daemon is kicked for them */
    /* A kick handed back (DEFERRED) and not yet answered (KICK); another kick held back
     * meanwhile is not reported again (the events stay bounded: the two processes never
     * both wait on a full socket) but looked at once more when the answer comes. */
    int deferred, deferred_again;
    uint64_t deferred_since; /* (an answer that never comes: see check_stalls) */
    /* a stall: chains pending, no used entry */
    int stalled;
    uint16_t stall_used;
    uint64_t stall_since, stall_delay, stall_started;
    uint64_t stall_rekicks;
};

struct notify {
    int used;
    uint32_t gen;
    uint64_t id; /* Python's */
    int kind;    /* 0 kick (VMM -> daemon), 1 call (daemon -> VMM) */
    unsigned queue;
    int src, sink;
    int watched;
};

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

/* relay_util.c: helpers, maps */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xrealloc(void *p, size_t n);
uint64_t now_ns(clockid_t clock);
const char *oserr(int e);
int map_get(const map_t *m, uint64_t k, uint64_t *v);
void map_put(map_t *m, uint64_t k, uint64_t v);
int map_del(map_t *m, uint64_t k);
void map_clear(map_t *m);
struct fent *fifo_get(fifo_t *f, uint64_t unique);
void fifo_del(fifo_t *f, uint64_t unique);
void fifo_put(fifo_t *f, uint64_t unique, const void *data, size_t len, int keep_place,
              size_t max);
void fifo_clear(fifo_t *f);

/* relay_mem.c: guest memory */
/* Something the relay cannot follow in guest memory (said in ring_error; becomes a note). */
int ring_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define RING_FAIL(...) ring_fail(__VA_ARGS__)
const unsigned char *gpa_ptr(uint64_t addr, uint64_t len);
const unsigned char *uaddr_ptr(uint64_t addr, uint64_t len);
unsigned char *uaddr_rw(uint64_t addr, uint64_t len);
void mem_clear(void);
int mem_add(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t offset, int fd);
int mem_remove(uint64_t gpa, uint64_t size, uint64_t uaddr);
void seg_push(segvec_t *s, uint64_t addr, uint64_t len);
int64_t gather(const seg_t *segs, size_t nsegs, uint64_t limit, piecevec_t *out);
size_t copy_head(const piecevec_t *p, unsigned char *dst, size_t n);
void on_sigbus(int sig);
extern uint64_t mem_generation;
extern char ring_error[512];
extern piecevec_t pieces;
extern sigjmp_buf bus_jump;
extern volatile sig_atomic_t in_guest;

/* relay_out.c: the capture file */
void out_start(uint64_t size);
void out_flush(void);
void out_drain(void);
void record(int direction, unsigned queue, int64_t opcode, const struct iovec *pv, size_t np,
            uint64_t length);
void out_reply_in_place(unsigned queue, int64_t opcode, const struct iovec *pv, size_t np,
                        uint64_t length, uint16_t idx);
int out_written(unsigned queue, uint16_t *idx);
int out_event_fd(void);
int out_event(void);
void annotate_at(unsigned queue, const char *text, size_t len, uint64_t ts);
void note(unsigned queue, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int out_fd;
extern int faulted;
extern fifo_t opcodes;

/* relay_ring.c: the queues */
struct queue *queue_get(unsigned index);
void queue_invalidate(struct queue *q);
void queue_reset(struct queue *q, uint16_t base);
int driver_drains(struct queue *q);
void scan(struct queue *q);
void scan_all(void);
void report_rings(struct queue *q);
void publish(struct queue *q);
void publish_all(int wait);
#define WRITER_TAG UINT64_MAX /* the epoll tag of out_event_fd() */
extern struct queue *queues[MAX_QUEUES];
extern int event_idx; /* VIRTIO_F_RING_EVENT_IDX negotiated (the VMM's SET_FEATURES) */

/* relay_shadow.c: the shadow used rings */
int shadow_map(int fd, uint64_t uaddr, uint64_t size);
int shadow_setup(struct queue *q, uint64_t uaddr);
int shadow_resolve(struct queue *q);
int mirror(struct queue *q);

/* relay_notify.c: kicks and calls */
void call_guest(struct queue *q);
struct notify *notify_at(uint64_t tag);
struct notify *kick_target(struct queue *q, struct notify *fired);
void kicked(struct queue *q, struct notify *n);
int held_back(int may_drain);
void notified(struct notify *n, int may_drain);
void pay_kicks(void);
void check_stalls(int may_kick);
void hand_back(struct queue *q, unsigned index, uint64_t id);
void notify_set(struct cmd *c);
struct notify *notify_by_id(uint64_t id);
void notify_drop(uint64_t id, int final);
extern int epfd;
extern int vmm_fd;
extern int fe_busy;

/* relay.c: the control socket, commands */
void send_event(uint32_t type, uint32_t queue, uint64_t a, uint64_t b, const void *data,
                size_t len);
void close_fds(struct cmd *c);
void drain_commands(void);
void send_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int await_answer(int direction, unsigned queue, const piecevec_t *p, uint64_t n);

#endif

/*
 * fuseproto's SanitizerCoverage runtime for source-built virtiofsd (variant c-asan-cov).
 *
 * The daemon is compiled with -fsanitize-coverage=trace-pc-guard: every edge calls
 * __sanitizer_cov_trace_pc_guard(&guard), and at start-up each module hands its guard
 * array to __sanitizer_cov_trace_pc_guard_init. This file numbers the guards 1..N and
 * counts edge executions in an AFL-style map that the fuzzer reads:
 *
 *   FUSEPROTO_COV_MAP=<path>   a regular file (the harness creates it, usually under
 *                              /dev/shm) of 64 + map_size bytes:
 *     offset 0   8 bytes  magic "FPCOVMAP"
 *     offset 8   u32      version = 1
 *     offset 12  u32      map_size: number of u8 counters after the header
 *     offset 16  u32      guards: written here, the number of edges in the binary
 *     offset 20  u32      pid: written here, the daemon's process id
 *     offset 24  u64      hits: left 0 (a total would cost a second store per edge)
 *     offset 64  u8[map_size] counters; guard g counts at 64 + (g - 1) % map_size
 *
 * All little-endian (the host's order on x86-64). Without the variable, or when the file
 * is missing, too small or has a bad magic/version, the counters go to a private buffer
 * and the daemon runs as usual: coverage never makes it fail.
 *
 * This file must be compiled WITHOUT -fsanitize-coverage (it would instrument itself)
 * and without ASan (the counters are written from every edge of every thread; a data
 * race on a u8 counter only loses a count, as in AFL).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FPCOV_HEADER 64
#define FPCOV_VERSION 1
#define FPCOV_PRIVATE_SIZE (1u << 16)

struct fpcov_header {
    char magic[8];
    uint32_t version;
    uint32_t map_size;
    uint32_t guards;
    uint32_t pid;
    uint64_t hits;
};

static uint8_t fpcov_private[FPCOV_PRIVATE_SIZE];
static uint8_t *fpcov_counters = fpcov_private;
static uint32_t fpcov_size = FPCOV_PRIVATE_SIZE;
static uint32_t fpcov_guards;
static struct fpcov_header *fpcov_shared;
static int fpcov_attached;

/* Map the harness's file once (first module init); on any problem keep the private
 * buffer. Runs from a constructor, before main and before the seccomp filter. */
static void fpcov_attach(void)
{
    const char *path;
    struct stat st;
    void *mem;
    struct fpcov_header *h;
    int fd;

    fpcov_attached = 1;
    path = getenv("FUSEPROTO_COV_MAP");
    if (!path || !*path) {
        return;
    }
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < FPCOV_HEADER + 1) {
        close(fd);
        return;
    }
    mem = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (mem == MAP_FAILED) {
        return;
    }
    h = mem;
    if (memcmp(h->magic, "FPCOVMAP", 8) != 0 || h->version != FPCOV_VERSION ||
        h->map_size == 0 || (uint64_t)h->map_size + FPCOV_HEADER > (uint64_t)st.st_size) {
        munmap(mem, (size_t)st.st_size);
        return;
    }
    fpcov_shared = h;
    fpcov_counters = (uint8_t *)mem + FPCOV_HEADER;
    fpcov_size = h->map_size;
    h->pid = (uint32_t)getpid();
}

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop);
void __sanitizer_cov_trace_pc_guard(uint32_t *guard);

void __sanitizer_cov_trace_pc_guard_init(uint32_t *start, uint32_t *stop)
{
    uint32_t *g;

    if (!fpcov_attached) {
        fpcov_attach();
    }
    /* Called once per instrumented module, possibly more than once for the same one:
     * a guard already numbered means this array was seen. */
    if (start == stop || *start) {
        return;
    }
    for (g = start; g < stop; g++) {
        *g = ++fpcov_guards;
    }
    if (fpcov_shared) {
        fpcov_shared->guards = fpcov_guards;
    }
}

void __sanitizer_cov_trace_pc_guard(uint32_t *guard)
{
    uint32_t i = *guard;

    if (!i) {
        return;
    }
    i -= 1;
    if (i >= fpcov_size) {
        i %= fpcov_size;
    }
    fpcov_counters[i]++;
}

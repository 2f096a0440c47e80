/*
 * A deliberate memory error for tests of the fuzzer's sanitizer findings (variant
 * c-asan-cov-planted only; never in a build meant for use).
 *
 * Linked with -Wl,--wrap=fstatvfs64: QEMU builds with _FILE_OFFSET_BITS=64, so glibc's
 * header turns the daemon's fstatvfs() call (FUSE_STATFS in QEMU 7.2's virtiofsd,
 * lo_statfs) into a call of the symbol fstatvfs64, and every such call comes here first.
 * FUSEPROTO_PLANTED_BUG chooses what happens:
 *
 *   heap-overflow     read one byte past a small heap block: AddressSanitizer reports a
 *                     heap-buffer-overflow whose top frame is __wrap_fstatvfs64;
 *   signed-overflow   add 1 to INT_MAX: UndefinedBehaviorSanitizer reports a signed
 *                     integer overflow in __wrap_fstatvfs64;
 *   (unset, other)    nothing.
 *
 * Then it calls the real fstatvfs64. Compiled with -fsanitize=address,undefined (the
 * checks must be in this object), without coverage.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

int __real_fstatvfs64(int fd, struct statvfs64 *buf);
int __wrap_fstatvfs64(int fd, struct statvfs64 *buf);

/* Where the stray values go, so the compiler cannot drop the faulty operations. */
volatile int planted_sink;

int __wrap_fstatvfs64(int fd, struct statvfs64 *buf)
{
    const char *which = getenv("FUSEPROTO_PLANTED_BUG");

    if (which && strcmp(which, "heap-overflow") == 0) {
        size_t n = 8 + (size_t)(fd & 1); /* not a constant the compiler can see through */
        volatile char *block = malloc(n);

        if (block) {
            /* The read is in this function itself, so it is the report's top frame. */
            planted_sink = block[n]; /* one byte past the end */
            free((void *)block);
        }
    } else if (which && strcmp(which, "signed-overflow") == 0) {
        volatile int big = INT_MAX;

        planted_sink = big + 1; /* signed overflow: undefined behaviour */
    }
    return __real_fstatvfs64(fd, buf);
}

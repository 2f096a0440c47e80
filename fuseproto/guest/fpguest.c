/* fpguest: the few system calls the guest workload needs that Debian's busybox-static
 * has no applet for (extended attributes, flock, fsync). Built statically by
 * fuseproto.guest.assets and put into the guest's initramfs as /bin/fpguest.
 *
 *   fpguest setxattr PATH NAME VALUE    fpguest getxattr PATH NAME
 *   fpguest listxattr PATH              fpguest removexattr PATH NAME
 *   fpguest fsync PATH                  fpguest flock PATH
 *   fpguest preads < LIST               (LIST: lines "PATH OFFSET SIZE")
 *
 * Prints one line of results on stdout; on failure prints "ERR <call> <errno name>" and
 * exits 1, so the host can tell which call failed and why.
 */
#define _GNU_SOURCE /* strerrorname_np */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/xattr.h>
#include <unistd.h>

static int fail(const char *call)
{
    const char *name = strerrorname_np(errno);
    printf("ERR %s %s\n", call, name ? name : "?");
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int do_listxattr(const char *path)
{
    char buf[4096];
    const char *names[256];
    ssize_t len = listxattr(path, buf, sizeof(buf));
    size_t n = 0;

    if (len < 0)
        return fail("listxattr");
    for (ssize_t at = 0; at < len && n < 256; at += (ssize_t)strlen(buf + at) + 1)
        names[n++] = buf + at;
    qsort(names, n, sizeof(names[0]), cmp_names);  /* the order is the file system's */
    for (size_t i = 0; i < n; i++)
        printf("%s%s", i ? " " : "", names[i]);
    printf("\n");
    return 0;
}

/* Two open file descriptions of one file: the second may not take the lock while the
 * first holds it (EWOULDBLOCK), and may once it is released. */
static int do_flock(const char *path)
{
    int a = open(path, O_RDONLY), b = open(path, O_RDONLY);

    if (a < 0 || b < 0)
        return fail("open");
    if (flock(a, LOCK_EX) < 0)
        return fail("flock");
    if (flock(b, LOCK_EX | LOCK_NB) == 0) {
        printf("ERR flock second-holder-got-lock\n");
        return 1;
    }
    if (errno != EWOULDBLOCK)
        return fail("flock-contended");
    if (flock(a, LOCK_UN) < 0)
        return fail("unlock");
    if (flock(b, LOCK_EX | LOCK_NB) < 0)
        return fail("flock-after-unlock");
    printf("held contended=EWOULDBLOCK after-unlock=ok\n");
    return 0;
}

static int do_fsync(const char *path)
{
    int fd = open(path, O_WRONLY);

    if (fd < 0)
        return fail("open");
    if (fsync(fd) < 0)
        return fail("fsync");
    if (fdatasync(fd) < 0)
        return fail("fdatasync");
    printf("ok\n");
    return close(fd) < 0 ? fail("close") : 0;
}

/* One O_DIRECT pread per line of stdin, in order, each file opened once and kept open (as
 * a program reading its files would): every read reaches the file system as made, with no
 * page cache or readahead in between. Prints "<reads done> <reads failed>". */
static int do_preads(void)
{
    static char *paths[64];
    static int fds[64];
    char path[4096];
    long long offset;
    size_t size, nfiles = 0, done = 0, failed = 0;
    void *buf = NULL;
    size_t cap = 0;

    while (scanf("%4095s %lld %zu", path, &offset, &size) == 3) {
        size_t i = 0;

        while (i < nfiles && strcmp(paths[i], path))
            i++;
        if (i == nfiles) {
            if (nfiles == 64 || !(paths[i] = strdup(path)))
                return fail("too-many-files");
            fds[i] = open(path, O_RDONLY | O_DIRECT);
            if (fds[i] < 0)
                return fail("open");
            nfiles++;
        }
        if (size > cap) {
            free(buf);
            cap = (size + 4095) & ~(size_t)4095;
            if (posix_memalign(&buf, 4096, cap))
                return fail("posix_memalign");
        }
        if (pread(fds[i], buf, size, offset) < 0) {
            printf("ERR pread %s %lld %zu %s\n", path, offset, size, strerrorname_np(errno));
            failed++;
        } else {
            done++;
        }
    }
    for (size_t i = 0; i < nfiles; i++)
        close(fds[i]);
    printf("%zu %zu\n", done, failed);
    return failed != 0;
}

int main(int argc, char **argv)
{
    char value[4096];
    ssize_t len;

    if (argc == 5 && !strcmp(argv[1], "setxattr")) {
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) < 0)
            return fail("setxattr");
        printf("ok\n");
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "getxattr")) {
        len = getxattr(argv[2], argv[3], value, sizeof(value) - 1);
        if (len < 0)
            return fail("getxattr");
        value[len] = 0;
        printf("%s\n", value);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "removexattr")) {
        if (removexattr(argv[2], argv[3]) < 0)
            return fail("removexattr");
        printf("ok\n");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "listxattr"))
        return do_listxattr(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "flock"))
        return do_flock(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "fsync"))
        return do_fsync(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "preads"))
        return do_preads();
    fprintf(stderr, "usage: fpguest setxattr|getxattr|removexattr|listxattr|flock|fsync PATH ..., "
            "fpguest preads < LIST\n");
    return 2;
}

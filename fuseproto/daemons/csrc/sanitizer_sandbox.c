/*
 * Lets an AddressSanitizer/UBSan build of QEMU 7.2's virtiofsd run under its own seccomp
 * filter (variant c-asan-cov), without editing QEMU's files.
 *
 * virtiofsd always installs a seccomp filter (tools/virtiofsd/passthrough_seccomp.c:
 * setup_seccomp builds an allowlist with libseccomp, default action KILL_PROCESS, and
 * calls seccomp_load). The link adds -Wl,--wrap=seccomp_load, so that call comes here
 * first: we add ALLOW rules for the few syscalls the sanitizer runtime itself makes after
 * the filter is in place, then load the filter as usual. Found by running the build with
 * a trapping filter that logged every refused syscall, over the client and daemon test
 * suites and planted ASan/UBSan reports:
 *
 *   sched_getaffinity  every new thread (ASan's thread start-up sizes its allocator
 *                      caches by the CPUs it may run on); without it the first queue
 *                      thread is killed;
 *   sigaltstack        every new thread: the runtime sets up an alternate signal stack to
 *                      report stack overflows; without it an internal CHECK fails;
 *   sched_yield        two threads reporting at once (a thread pool): the second waits
 *                      for the first's report lock by yielding; without it the process
 *                      is killed in the middle of the first report.
 *
 * Everything else the runtime needs at start (reading /proc/self/maps, getrlimit, ...)
 * happens before the filter. LeakSanitizer at exit (ptrace, a tracer thread), colour
 * detection and running the symbolizer would need much more, and the chroot sandbox
 * hides /proc and the symbolizer anyway: the defaults below turn them off (ASAN_OPTIONS
 * and UBSAN_OPTIONS in the environment still override them), and reports are symbolized
 * offline against the binary.
 */
#include <seccomp.h>
#include <stdio.h>

int __real_seccomp_load(scmp_filter_ctx ctx);
int __wrap_seccomp_load(scmp_filter_ctx ctx);
const char *__asan_default_options(void);
const char *__ubsan_default_options(void);

static const int sanitizer_syscalls[] = {
    SCMP_SYS(sched_getaffinity),
    SCMP_SYS(sigaltstack),
    SCMP_SYS(sched_yield),
};

int __wrap_seccomp_load(scmp_filter_ctx ctx)
{
    size_t i;

    for (i = 0; i < sizeof(sanitizer_syscalls) / sizeof(sanitizer_syscalls[0]); i++) {
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, sanitizer_syscalls[i], 0);

        if (rc != 0) {
            fprintf(stderr, "fuseproto: cannot allow syscall %d for the sanitizers: %d\n",
                    sanitizer_syscalls[i], rc);
            return rc;
        }
    }
    return __real_seccomp_load(ctx);
}

const char *__asan_default_options(void)
{
    return "detect_leaks=0:color=never:symbolize=0:abort_on_error=1:handle_abort=1";
}

const char *__ubsan_default_options(void)
{
    return "print_stacktrace=1:halt_on_error=1:color=never:symbolize=0";
}

"""Crash forensics on captured-style daemon logs: clang assertion messages, ASan / UBSan
reports told apart from the daemon's own exit(1) / abort, offline symbolization, and the
signatures findings are deduplicated by (no daemon needed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from fuseproto.fuzz import sanitizer_report as sr
from fuseproto.fuzz.forensics import (
    FATAL,
    LOG_READ,
    crash_site,
    death_outcome,
    outcome_signature,
    read_new_log,
)

BIN = "/root/.cache/fuseproto/daemons/builds/c-asan-cov-1_7.2+dfsg-7+deb12u18/virtiofsd"
ABORTED = signal.SIGABRT  # wait status of a process killed by SIGABRT
EXIT_1 = 1 << 8  # wait status of exit(1)

# What the instrumented C daemon writes with symbolize=0 when a worker thread reads past a
# heap block (addresses, pid and thread differ from run to run; offsets do not).
ASAN_LOG = """\
[ID: 00000007] virtio_session_mount: Waiting for vhost-user socket connection...
[ID: 00000007] virtio_session_mount: Received vhost-user socket connection
=================================================================
=={pid}==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x{addr:x} at pc 0x55d4c5a1b2c3 bp 0x7f3e1a2fdd10 sp 0x7f3e1a2fdd08
READ of size 1 at 0x{addr:x} thread T{thread}
    #0 0x55d4c5a1b2c2  ({bin}+0x1b2c2) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #1 0x55d4c5a3c0de  ({bin}+0x3c0de) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #2 0x55d4c5a2f111  ({bin}+0x2f111) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #3 0x55d4c5a40a00  ({bin}+0x40a00) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #4 0x7f3e1c8a7e63  (/lib/x86_64-linux-gnu/libglib-2.0.so.0+0x88e63) (BuildId: 5a2b1f7c3d9e4a6b8c0d1e2f3a4b5c6d7e8f9a0b)
    #5 0x7f3e1c4f5fd3  (/lib/x86_64-linux-gnu/libc.so.6+0x89fd3) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)

0x{addr:x} is located 0 bytes to the right of 16-byte region [0x602000000a10,0x602000000a20)
allocated by thread T{thread} here:
    #0 0x55d4c5a0e1be  ({bin}+0xe1be) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #1 0x55d4c5a1b29a  ({bin}+0x1b29a) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)

SUMMARY: AddressSanitizer: heap-buffer-overflow ({bin}+0x1b2c2) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
Shadow bytes around the buggy address:
  0x0c047fff8140: fa fa 00 00 fa fa 00 00 fa fa 00 00 fa fa 00 00
=>0x0c047fff8150: fa fa[00]00 fa fa fa fa fa fa fa fa fa fa fa fa
==={pid}==ABORTING
"""

# The same kind of report as a symbolizing runtime prints it (sanitizer frames on top).
ASAN_SYMBOLIZED = """\
==81==ERROR: AddressSanitizer: heap-use-after-free on address 0x606000001234 at pc 0x4a1b2c bp 0x7ffc sp 0x7ffb
WRITE of size 8 at 0x606000001234 thread T1
    #0 0x4a1b2c in __asan_memcpy (/usr/libexec/virtiofsd+0x4a1b2c) (BuildId: aa11)
    #1 0x51c0de in lo_write_buf ../../tools/virtiofsd/passthrough_ll.c:2085:9
    #2 0x52f111 in do_write_buf ../../tools/virtiofsd/fuse_lowlevel.c:1123:5
    #3 0x540a00 in fuse_session_process_buf_int ../../tools/virtiofsd/fuse_lowlevel.c:2580:9
    #4 0x541111 in fv_queue_worker ../../tools/virtiofsd/fuse_virtio.c:603:5

freed by thread T1 here:
    #0 0x4a9999 in free (/usr/libexec/virtiofsd+0x4a9999)

SUMMARY: AddressSanitizer: heap-use-after-free ../../tools/virtiofsd/passthrough_ll.c:2085:9 in lo_write_buf
==81==ABORTING
"""

UBSAN_LOG = """\
[ID: 00000003] virtio_loop: Got VU event
../../tools/virtiofsd/fuse_lowlevel.c:{line}:17: runtime error: left shift of {v} by 31 places cannot be represented in type 'int'
    #0 0x55aa0c1d2e3f  ({bin}+0x2e3f) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #1 0x55aa0c1d4001  ({bin}+0x4001) (BuildId: 3c1f0e8a9d2b4c5e6f708192a3b4c5d6e7f80912)
    #2 0x7f00aa11bb22  (/lib/x86_64-linux-gnu/libc.so.6+0x89fd3) (BuildId: 93ac61ec5a8eb1396f9fbd350e3169a558528a40)

SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior ../../tools/virtiofsd/fuse_lowlevel.c:{line}:17 in
"""


def test_clang_and_gcc_assertions_are_read_alike():
    """gcc names the function, clang prints its whole signature: the same site either way
    (file, line, function, the assertion's text as written)."""
    gcc = ("virtiofsd: ../../tools/virtiofsd/fuse_virtio.c:497: fv_queue_worker: "
           "Assertion `0' failed.")
    clang = ("virtiofsd: ../../tools/virtiofsd/fuse_virtio.c:497: void "
             "fv_queue_worker(gpointer, gpointer): Assertion `0' failed.")
    assert crash_site(gcc) == crash_site(clang) == "fuse_virtio.c:497 fv_queue_worker: Assertion '0' failed"
    ptr = ("virtiofsd: ../../tools/virtiofsd/passthrough_ll.c:210: struct lo_inode "
           "*lo_inode(fuse_req_t, fuse_ino_t): Assertion `ino->nlookup > 0' failed.")
    assert crash_site(ptr) == "passthrough_ll.c:210 lo_inode: Assertion 'ino->nlookup > 0' failed"
    static = ("virtiofsd: ../../tools/virtiofsd/fuse_lowlevel.c:1700: static void "
              "do_interrupt(fuse_req_t, fuse_ino_t, struct fuse_mbuf_iter *): Assertion "
              "`req->interrupted == 0' failed.")
    assert crash_site(static).startswith("fuse_lowlevel.c:1700 do_interrupt: Assertion")
    # Both wordings of one site are one crash finding, with one signature.
    outs = [death_outcome("c", "FUSE_READ", ABORTED, log, []) for log in (gcc, clang)]
    assert {o.finding for o in outs} == {"crash"}
    assert outcome_signature("c", outs[0]) == outcome_signature("c", outs[1])


def test_asan_report_is_parsed_without_symbols():
    log = ASAN_LOG.format(pid=4711, addr=0x602000000a20, thread=3, bin=BIN)
    rep = sr.parse_report(log)
    assert rep is not None and sr.has_report(log)
    assert (rep.tool, rep.kind, rep.short_tool) == ("AddressSanitizer", "heap-buffer-overflow",
                                                    "asan")
    assert rep.headline.startswith("==4711==ERROR: AddressSanitizer: heap-buffer-overflow")
    # The first stack only (not the allocation stack), module + offset kept.
    assert [f.index for f in rep.frames] == [0, 1, 2, 3, 4, 5]
    assert (rep.frames[0].module, rep.frames[0].offset) == (BIN, 0x1b2c2)
    assert rep.frames[4].module.endswith("libglib-2.0.so.0")
    assert rep.text.startswith("==4711==ERROR") and "SUMMARY: AddressSanitizer" in rep.text
    assert "virtio_session_mount" not in rep.text
    # Not symbolizable here (no such binary): module+offset names the frame.
    assert sr.symbolize(rep, BIN).top_functions() == ["virtiofsd+0x1b2c2", "virtiofsd+0x3c0de",
                                                      "virtiofsd+0x2f111"]


def test_asan_death_is_an_asan_finding_not_a_crash_and_dedups_across_runs():
    outs = [death_outcome("c", "FUSE_STATFS", ABORTED,
                          ASAN_LOG.format(pid=pid, addr=addr, thread=t, bin=BIN), ["FUSE_INIT"],
                          BIN)
            for pid, addr, t in ((4711, 0x602000000a20, 3), (99, 0x602000001b30, 1))]
    o = outs[0]
    assert o.finding == "asan" and o.finding in FATAL
    assert o.cls == "FUSE_STATFS:asan:heap-buffer-overflow"
    ev = o.evidence
    assert ev["sanitizer"] == "AddressSanitizer" and ev["sanitizer_kind"] == "heap-buffer-overflow"
    assert ev["headline"].startswith("==4711==ERROR: AddressSanitizer")
    assert "SUMMARY: AddressSanitizer: heap-buffer-overflow" in ev["report"]
    assert ev["frames"][0].startswith("#0 virtiofsd+0x1b2c2") and ev["status"]
    sigs = {outcome_signature("c-asan-cov", x) for x in outs}
    assert sigs == {"asan:c-asan-cov:heap-buffer-overflow:virtiofsd+0x1b2c2|virtiofsd+0x3c0de|"
                    "virtiofsd+0x2f111"}  # unsymbolized: the offsets tell sites apart


def test_symbolized_frames_skip_the_sanitizer_runtime():
    rep = sr.parse_report(ASAN_SYMBOLIZED)
    assert rep is not None and rep.kind == "heap-use-after-free"
    assert rep.frames[1].location == "../../tools/virtiofsd/passthrough_ll.c:2085:9"
    assert rep.top_functions() == ["lo_write_buf", "do_write_buf",
                                   "fuse_session_process_buf_int"]
    o = death_outcome("c", "FUSE_WRITE", ABORTED, ASAN_SYMBOLIZED, [])
    assert outcome_signature("c-asan-cov", o) == (
        "asan:c-asan-cov:heap-use-after-free:lo_write_buf@passthrough_ll.c:2085|"
        "do_write_buf@fuse_lowlevel.c:1123|fuse_session_process_buf_int@fuse_lowlevel.c:2580")


def test_ubsan_halt_is_told_from_the_daemons_own_exit_1():
    logs = [UBSAN_LOG.format(line=1234, v=v, bin=BIN) for v in (1, 3)]
    rep = sr.parse_report(logs[0])
    assert rep is not None and rep.tool == "UndefinedBehaviorSanitizer"
    assert rep.kind == "left shift of N by N places cannot be represented in type 'int'"
    assert rep.location == "fuse_lowlevel.c:1234" and len(rep.frames) == 3
    outs = [death_outcome("c", "FUSE_SETATTR", EXIT_1, log, []) for log in logs]
    assert {o.finding for o in outs} == {"ubsan"}
    assert outs[0].cls == "FUSE_SETATTR:ubsan:" + rep.kind
    sigs = {outcome_signature("c-asan-cov", o) for o in outs}
    assert len(sigs) == 1  # the values in the message do not split it
    # (the third frame is in this host's libc, symbolized against it when it exists)
    assert sigs.pop().startswith("ubsan:c-asan-cov:left shift of N by N places cannot be "
                                 "represented in type 'int':fuse_lowlevel.c:1234:"
                                 "virtiofsd+0x2e3f|virtiofsd+0x4001|")
    # The daemon's own exit(1) (no report in its log) stays a daemon-exit.
    own = death_outcome("c", "FUSE_INIT", EXIT_1,
                        "[ID: 00000001] fv_panic: libvhost-user: virtio: invalid descriptor\n", [])
    assert own.finding == "daemon-exit" and own.cls == "FUSE_INIT:exit:1"
    # And a plain abort without a report is a crash.
    assert death_outcome("c", "FUSE_READ", ABORTED, "", []).finding == "crash"


def test_no_report_and_odd_frames():
    assert sr.parse_report("virtiofsd: some line\nno report here\n") is None
    odd = ("==5==ERROR: AddressSanitizer: SEGV on unknown address 0x000000000000 (pc 0x1 bp 0x2 "
           "sp 0x3 T2)\n    #0 0x7f0000001234  (<unknown module>)\n"
           "    #1 0x55d4c5a3c0de in fv_queue_worker ../../tools/virtiofsd/fuse_virtio.c:603:5\n")
    rep = sr.parse_report(odd)
    assert rep is not None and rep.kind == "SEGV" and len(rep.frames) == 2
    assert rep.frames[0].module is None and rep.top_functions() == ["?", "fv_queue_worker"]


def _build(tmp_path, src: str) -> str | None:
    cc = shutil.which("clang") or shutil.which("clang-14")
    if cc is None:
        return None
    c = tmp_path / "planted.c"
    c.write_text(src)
    exe = tmp_path / "planted"
    r = subprocess.run([cc, "-g", "-O1", "-fno-omit-frame-pointer",
                        "-fsanitize=address,undefined", str(c), "-o", str(exe)],
                       capture_output=True, timeout=120)
    return str(exe) if r.returncode == 0 else None


def test_a_real_asan_report_is_symbolized_offline(tmp_path):
    """A real clang/ASan binary run with the harness's options (symbolize=0): the finding
    names the overflowing function after offline symbolization against the binary."""
    exe = _build(tmp_path, """
#include <stdlib.h>
__attribute__((noinline)) int __wrap_fstatvfs_like(int n) {
    char *p = malloc(n); int v = p[n]; free(p); return v; }
__attribute__((noinline)) int shift(int a, int b) { return a << b; }
int main(int argc, char **argv) {
    if (argc > 1) return shift(1, atoi(argv[1])) & 1;
    return __wrap_fstatvfs_like(7) & 1; }
""")
    if exe is None:
        pytest.skip("no clang with AddressSanitizer here")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:color=never:symbolize=0:"
           "abort_on_error=1:handle_abort=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:color=never:symbolize=0"}
    p = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == -signal.SIGABRT
    o = death_outcome("c", "FUSE_STATFS", ABORTED, p.stderr, [], exe)
    assert o.finding == "asan"
    sig = outcome_signature("c-asan-cov-planted", o)
    assert sig.startswith("asan:c-asan-cov-planted:heap-buffer-overflow:"
                          "__wrap_fstatvfs_like@planted.c:4|main@planted.c:8")
    assert o.evidence["frames"][0].startswith("#0 __wrap_fstatvfs_like planted.c:4")
    p = subprocess.run([exe, "40"], capture_output=True, text=True, env=env, timeout=60)
    # UBSan halts with exit(1) alone; next to ASan, abort_on_error makes it SIGABRT: either
    # way the log, not the status, makes it a ubsan finding.
    assert p.returncode in (1, -signal.SIGABRT)
    status = EXIT_1 if p.returncode == 1 else ABORTED
    u = death_outcome("c", "FUSE_SETATTR", status, p.stderr, [], exe)
    assert u.finding == "ubsan" and u.evidence["source"] == "planted.c:5"
    assert ":planted.c:5:shift@planted.c:5|main@planted.c:7" in outcome_signature("x", u)


ABRT_REPORT = """\
==17850==ERROR: AddressSanitizer: ABRT on unknown address 0x0000000045ba (pc 0x7f870e77deec bp 0x7f87097fd6c0 sp 0x7f87097fc190 T3)
    #0 0x7f870e77deec in __pthread_kill_implementation nptl/pthread_kill.c:44:76
    #1 0x7f870e72efb1 in raise signal/../sysdeps/posix/raise.c:26:13
    #2 0x7f870e719471 in abort stdlib/abort.c:79:7
    #3 0x7f870e719394 in __assert_fail_base assert/assert.c:94:3
    #4 0x7f870e727ec1 in __assert_fail assert/assert.c:103:3
    #5 0x561f0f654763 in unref_inode ../../tools/virtiofsd/passthrough_ll.c:1734:5
    #6 0x561f0f659da9 in unref_inode_lolocked ../../tools/virtiofsd/passthrough_ll.c:1759:5
    #7 0x561f0f659c5d in lo_forget_one ../../tools/virtiofsd/passthrough_ll.c:1777:5

AddressSanitizer can not provide additional info.
SUMMARY: AddressSanitizer: ABRT nptl/pthread_kill.c:44:76 in __pthread_kill_implementation
Thread T3 created by T0 here:
==17850==ABORTING
"""


def test_an_assertion_asan_caught_stays_the_crash_it_is_in_a_plain_build():
    """With handle_abort=1 ASan reports a failed assertion as an "ABRT": the finding is
    the same crash (same signature) as from the gcc build, with the stack as evidence."""
    assertion = ("virtiofsd: ../../tools/virtiofsd/passthrough_ll.c:1734: void "
                 "unref_inode(struct lo_data *, struct lo_inode *, uint64_t): Assertion "
                 "`inode->nlookup >= n' failed.\n")
    o = death_outcome("c", "FUSE_FORGET", ABORTED, assertion + ABRT_REPORT, [], BIN)
    plain = death_outcome("c", "FUSE_FORGET", ABORTED,
                          "virtiofsd: ../../tools/virtiofsd/passthrough_ll.c:1734: "
                          "unref_inode: Assertion `inode->nlookup >= n' failed.\n", [])
    assert o.finding == "crash" and outcome_signature("x", o) == outcome_signature("x", plain)
    assert o.evidence["frames"][5].startswith("#5 unref_inode ") and \
        "passthrough_ll.c:1734" in o.evidence["frames"][5]
    # An abort with no site in the log: an asan finding named by the frames below abort().
    a = death_outcome("c", "FUSE_FORGET", ABORTED, ABRT_REPORT, [], BIN)
    assert a.finding == "asan"
    assert outcome_signature("x", a) == ("asan:x:ABRT:unref_inode@passthrough_ll.c:1734|"
                                         "unref_inode_lolocked@passthrough_ll.c:1759|"
                                         "lo_forget_one@passthrough_ll.c:1777")


def test_a_death_after_much_logging_keeps_its_site(tmp_path):
    """A daemon at debug level writes far more than one read's worth between two looks at
    its log; the assertion it dies with is at the end and must be what is read (the
    campaign of session 8 had 'SIGABRT:FUSE_RENAME2' with no site: the first 64 KiB of a
    long stretch of debug lines were read, the assertion after them was not)."""
    log = tmp_path / "daemon.log"
    chatter = "".join(f"[ID: 00000042] unique: {i}, opcode: GETATTR (3), nodeid: 1\n"
                      for i in range(8000))
    assert len(chatter) > 3 * LOG_READ
    death = ("virtiofsd: ../tools/virtiofsd/fuse_virtio.c:292: virtio_send_msg: "
             "Assertion `out->unique' failed.\n")
    log.write_text("start\n")
    text, at = read_new_log(str(log), 0)
    assert (text, at) == ("start\n", 6)
    with open(log, "a") as f:
        f.write(chatter + death)
    text, at2 = read_new_log(str(log), at)
    assert len(text) == LOG_READ and text.endswith(death)
    assert at2 == log.stat().st_size
    assert crash_site(text) == "fuse_virtio.c:292 virtio_send_msg: Assertion 'out->unique' failed"
    assert read_new_log(str(log), at2) == ("", at2)
    assert read_new_log(str(tmp_path / "gone.log"), 7) == ("", 7)

"""Findings: signatures that keep sites apart (real assertion, abort and panic texts), the
pcap and standalone reproducer script of each finding (against the planted bug)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from fuseproto.fuzz import sanitizer_report as sr
from fuseproto.fuzz.forensics import crash_site, death_outcome, outcome_signature, stall_outcome

ABORTED = signal.SIGABRT  # the wait status of a process killed by SIGABRT

# Two assertions in one function (lines 6 and 8), the first of them reached twice.
ASSERTS_C = r"""
#include <assert.h>
#include <stdlib.h>
struct lo_inode { int nlookup; };
static void unref_inode(struct lo_inode *inode, unsigned long n)
{
    assert(inode->nlookup >= 0);
    if (n > 5)
        assert(inode->nlookup >= (int)n);
}
int main(int argc, char **argv)
{
    struct lo_inode i = { argc > 2 ? -1 : 1 };
    unref_inode(&i, strtoul(argv[1], NULL, 10));
    return 0;
}
"""

# Two panics in one function (an Option and a Result unwrap), in a named worker thread
# as virtiofsd's are; the message carries a value that differs between two hits.
PANICS_RS = r"""
fn handle(x: usize) -> u32 {
    let v: Vec<u32> = vec![1, 2, 3];
    if x > 10 { return v.get(x).copied().unwrap(); }
    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad length {x}"));
    let r: Result<u32, std::io::Error> = Err(e);
    r.unwrap()
}
fn main() {
    let x: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let t = std::thread::Builder::new().name("vring_worker".into());
    let _ = t.spawn(move || handle(x)).unwrap().join();
}
"""

# glibc's fortify abort (an open with O_CREAT and no mode), as QEMU's virtiofsd hits it.
FORTIFY_C = r"""
#include <fcntl.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
    return open(argv[1], atoi(argv[2]));
}
"""


def _compile(tmp_path, cc: str, src: str, name: str, *flags: str) -> str:
    tool = shutil.which(cc)
    if tool is None:
        pytest.skip(f"no {cc} here")
    path = tmp_path / name
    path.write_text(src)
    exe = str(tmp_path / path.stem) + f"-{cc}"
    subprocess.run([tool, *flags, str(path), "-o", exe], check=True, capture_output=True,
                   timeout=180)
    return exe


def _stderr(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RUST_BACKTRACE": "0"}).stderr


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_two_assertions_in_one_function_are_two_sites(tmp_path, cc):
    """glibc's assertion text from a gcc build (function name) and a clang build (the
    whole signature): two assertions of one function, two signatures; one site hit twice
    with different values, one signature."""
    exe = _compile(tmp_path, cc, ASSERTS_C, "asserts.c", "-O0")
    first = _stderr(exe, "1", "neg")  # line 7: nlookup >= 0
    second = _stderr(exe, "7")  # line 9: nlookup >= (int)n, with n = 7
    again = _stderr(exe, "9")  # the same site with n = 9
    if cc == "clang":
        assert "void unref_inode(struct lo_inode *, unsigned long)" in first
    assert crash_site(first) == "asserts.c:7 unref_inode: Assertion 'inode->nlookup >= 0' failed"
    assert crash_site(second) == ("asserts.c:9 unref_inode: Assertion 'inode->nlookup >= "
                                  "(int)n' failed")
    sigs = [outcome_signature("c", death_outcome("c", "FUSE_FORGET", ABORTED, log, []))
            for log in (first, second, again)]
    assert sigs[0] != sigs[1] and sigs[1] == sigs[2]
    assert sigs[0] == ("crash:c:SIGABRT:asserts.c:7 unref_inode: Assertion "
                       "'inode->nlookup >= 0' failed")


def test_glibc_fortify_abort_is_a_site(tmp_path):
    exe = _compile(tmp_path, "gcc", FORTIFY_C, "fortify.c", "-O2", "-D_FORTIFY_SOURCE=2")
    log = _stderr(exe, str(tmp_path / "x"), str(os.O_CREAT | os.O_RDWR))
    assert crash_site(log) == "invalid open call: O_CREAT or O_TMPFILE without mode"
    o = death_outcome("c", "FUSE_OPEN", ABORTED, log, [])
    assert outcome_signature("c", o) == ("crash:c:SIGABRT:invalid open call: O_CREAT or "
                                         "O_TMPFILE without mode")


def test_two_rust_panics_in_one_function_are_two_sites(tmp_path):
    """A Rust worker's panics (file:line:col and the message, its numbers as N): two
    unwraps of one function are two signatures; one unwrap with another errno, one."""
    exe = _compile(tmp_path, "rustc", PANICS_RS, "panics.rs", "-C", "debuginfo=0")
    option = _stderr(exe, "20")
    result = _stderr(exe, "3")
    result2 = _stderr(exe, "7")
    assert "panicked at" in option and "vring_worker" in option
    assert crash_site(option) == ("panics.rs:4:42: called 'Option::unwrap()' on a 'None' "
                                  "value")
    assert crash_site(result) == ("panics.rs:7:7: called 'Result::unwrap()' on an 'Err' "
                                  "value: Custom { kind: InvalidData, error: \"bad length N\" }")
    outs = [stall_outcome("rust", "FUSE_GETXATTR", area=4096, timeout=0.5, log=log,
                          previous=[], state="running", reply_expected=True)
            for log in (option, result, result2)]
    assert {o.finding for o in outs} == {"crash"}
    sigs = [outcome_signature("rust", o) for o in outs]
    assert sigs[0] != sigs[1] and sigs[1] == sigs[2]


def test_sanitizer_signature_keeps_each_frames_line(tmp_path):
    """Two heap overflows in one function (a real ASan build, symbolized offline): the
    top frame's line tells them apart; the same line twice is one signature."""
    src = r"""
#include <stdlib.h>
__attribute__((noinline)) int lo_read(int n, int which) {
    char *p = malloc(n); int v;
    if (which) v = p[n + 1];
    else v = p[n];
    free(p); return v; }
int main(int argc, char **argv) { return lo_read(7, argc > 1) & 1; }
"""
    exe = _compile(tmp_path, "clang", src, "overflow.c", "-g", "-O0",
                   "-fno-omit-frame-pointer", "-fsanitize=address")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:symbolize=0:abort_on_error=1"}
    logs = [subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stderr
            for argv in ([exe], [exe, "x"], [exe])]
    sigs = [outcome_signature("c", death_outcome("c", "FUSE_READ", ABORTED, log, [], exe))
            for log in logs]
    assert sigs[0].startswith("asan:c:heap-buffer-overflow:lo_read@overflow.c:6|main@"), sigs
    assert sigs[1].startswith("asan:c:heap-buffer-overflow:lo_read@overflow.c:5|main@"), sigs
    assert sigs[0] == sigs[2]
    rep = sr.parse_report(logs[0])
    assert rep is not None and sr.symbolize(rep, exe).top_functions()[0] == "lo_read"



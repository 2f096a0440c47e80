"""Findings: signatures that keep sites apart (real assertion, abort and panic texts), the
pcap and standalone reproducer script of each finding (against the planted bug)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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




# -- a finding's pcap and reproducer script, against a real bug ---------------------------
def _variant(name: str):
    from fuseproto import daemons

    inst = daemons.find(name)
    if inst is None:
        pytest.skip(f"{name} is not built (fuseproto daemons build {name})")
    return inst


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter with nothing but the package importable (no CLI on PATH).
    env = {k: v for k, v in os.environ.items() if k != "FUSEPROTO_PLANTED_BUG"}
    env["PATH"] = "/usr/bin:/bin"
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd="/")


@pytest.mark.daemon
def test_planted_bug_gets_a_pcap_and_a_script_that_reproduces_it(tmp_path, no_leaks):
    """c-asan-cov-planted with FUSEPROTO_PLANTED_BUG=heap-overflow: a STATFS is an ASan
    finding. Its pcap holds the whole exchange (setup, the STATFS flagged INJECTED, the
    finding as an annotation); its script, run alone, says "reproduced" (exit 1) against
    the planted build and "not reproduced" (exit 0) against c-asan-cov and c-src."""
    from fuseproto.capture import decode_capture
    from fuseproto.fuzz import virtiofsd
    from fuseproto.fuzz.findings import FindingStore
    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    label = "c-asan-cov-planted"
    inst = _variant(label)
    for other in ("c-asan-cov", "c-src"):
        _variant(other)
    store = FindingStore(tmp_path / "findings")
    stats = virtiofsd.DaemonStats(label)
    with DaemonHarness(inst, env={"FUSEPROTO_PLANTED_BUG": "heap-overflow"}) as h:
        h.unique += 2
        ok = h.send(codec.encode_request(O.FUSE_GETATTR, None, unique=h.unique, nodeid=1))
        assert ok.finding is None, ok.cls
        h.unique += 2
        statfs = codec.encode_request(O.FUSE_STATFS, None, unique=h.unique, nodeid=1)
        out = h.send(statfs)
        assert out.finding == "asan", (out.cls, out.detail)
        f = virtiofsd.record_finding(stats, store, h, label, out)
    assert f.script.endswith(".repro.py") and f.pcap.endswith(".pcap")
    doc = json.loads(Path(f.reproducer).read_text())
    assert doc["daemon_env"] == {"FUSEPROTO_PLANTED_BUG": "heap-overflow"}

    msgs = list(decode_capture(f.pcap))
    requests = [m for m in msgs if m.kind == "request"]
    ops = [m.opcode for m in requests]
    assert ops[0] == O.FUSE_INIT and O.FUSE_LOOKUP in ops  # the harness's setup
    assert ops[-2:] == [O.FUSE_GETATTR, O.FUSE_STATFS] and requests[-1].raw == statfs
    assert sum(m.kind == "reply" and m.paired for m in msgs) >= len(requests) - 1
    assert msgs[-1].kind == "annotation" and f.signature.encode() in msgs[-1].raw

    script = Path(f.script).read_text()
    assert "from fuseproto.fuzz.verdict import reproducer_main" in script
    here = _run_script(f.script, "--pcap", str(tmp_path / "replay.pcap"))
    assert here.returncode == 1 and here.stdout.startswith("reproduced: asan"), \
        here.stdout + here.stderr
    assert any(m.kind == "request" and m.raw == statfs
               for m in decode_capture(tmp_path / "replay.pcap"))
    for other in ("c-asan-cov", "c-src"):
        there = _run_script(f.script, "--daemon", other)
        assert there.returncode == 0 and there.stdout.strip() == "not reproduced", \
            (other, there.stdout, there.stderr)
    js = _run_script(f.script, "--json")
    verdict = json.loads(js.stdout)
    assert verdict["reproduced"] and verdict["expected"] == f.signature
    assert verdict["binary"] == inst.binary


def test_in_process_finding_gets_a_script(tmp_path, monkeypatch):
    """An in-process target's finding (a decoder off-by-one planted through
    FUSEPROTO_FUZZ_INJECT, fuzzed in a fresh worker process): the script replays the saved
    input under the same oracle; without the fault it does not reproduce."""
    from fuseproto.fuzz import jobs
    from fuseproto.fuzz.findings import FindingStore

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("FUSEPROTO_FUZZ_INJECT", "fuzz_faults:name_off_by_one")
    monkeypatch.setenv("PYTHONPATH", tests_dir)
    st = jobs.run_inprocess("wire_decode", jobs=1, seconds=10, store=FindingStore(tmp_path),
                            seed=1, workdir=tmp_path)
    assert st.findings, "the planted off-by-one was not found"
    f = st.findings[0]
    assert f.script.endswith(".repro.py") and not f.pcap
    env = {**os.environ, "FUSEPROTO_FUZZ_INJECT": "fuzz_faults:name_off_by_one",
           "PYTHONPATH": tests_dir}
    p = subprocess.run([sys.executable, f.script], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 1 and p.stdout.startswith(f"reproduced: {f.kind}"), \
        p.stdout + p.stderr
    env.pop("FUSEPROTO_FUZZ_INJECT")
    p = subprocess.run([sys.executable, f.script], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "not reproduced", p.stdout + p.stderr


@pytest.mark.daemon
def test_descriptor_chain_finding_script_reproduces(tmp_path, no_leaks):
    """The scripts of the targets below the FUSE layer go through the same table as
    ``fuzz replay`` (fuseproto.fuzz.verdict): a chains crash with a site in the log (the
    packaged C daemon has several within seconds) says "reproduced"."""
    from fuseproto import daemons
    from fuseproto.fuzz import chains
    from fuseproto.fuzz.findings import FindingStore

    inst = daemons.find("c")
    if inst is None:
        pytest.skip("the packaged C daemon is not installed")
    store = FindingStore(tmp_path)
    chains.fuzz_chains(inst, seconds=6, store=store, seed=1, label="c")
    sited = [f for f in store if f.kind == "crash" and "Assertion" in f.signature]
    assert sited, [f.signature for f in store]
    # Two assertions of fv_queue_worker (different lines) would be two findings here.
    p = _run_script(sited[0].script)
    assert p.returncode == 1 and p.stdout.startswith("reproduced: crash"), p.stdout + p.stderr


def test_store_keeps_script_and_pcap_with_the_smaller_reproducer_and_adopts(tmp_path):
    """A repeat with a smaller reproducer replaces the reproducer, its script and its pcap
    together; another store's finding is adopted with its files (counts add up)."""
    from fuseproto.capture import decode_capture
    from fuseproto.capture.frames import Direction
    from fuseproto.fuzz.findings import Finding, FindingStore
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    def doc(n: int) -> tuple[dict, list]:
        reqs = [codec.encode_request(O.FUSE_GETATTR, None, unique=2 * i + 2, nodeid=1)
                for i in range(n)]
        ex = [(Direction.REQUEST, 1, r, 1_000_000_000 + i) for i, r in enumerate(reqs)]
        return ({"target": "virtiofsd", "daemon": "c", "requests": [{"hex": r.hex()}
                 for r in reqs], "finding": {"kind": "crash", "signature": "crash:c:X"}}, ex)

    store = FindingStore(tmp_path / "a")
    big, big_ex = doc(5)
    f = store.add(Finding("virtiofsd", "crash", "crash:c:X", "x", daemon="c"), big, ".json",
                  exchange=big_ex)
    assert len([m for m in decode_capture(f.pcap) if m.kind == "request"]) == 5
    small, small_ex = doc(2)
    g = store.add(Finding("virtiofsd", "crash", "crash:c:X", "x", daemon="c"), small,
                  ".json", exchange=small_ex)
    assert g is f and f.count == 2
    msgs = list(decode_capture(f.pcap))
    assert [m.kind for m in msgs] == ["request", "request", "annotation"]
    assert msgs[0].raw == bytes.fromhex(small["requests"][0]["hex"])
    assert repr(json.dumps(small, separators=(",", ":"))) in Path(f.script).read_text()
    other = FindingStore(tmp_path / "b")
    h = other.adopt(f)
    assert h is not f and h.count == 2 and Path(h.reproducer).parent.parent == tmp_path / "b"
    for attr in ("reproducer", "script", "pcap"):
        assert Path(getattr(h, attr)).read_bytes() == Path(getattr(f, attr)).read_bytes()
    assert other.adopt(f) is h and h.count == 4

"""Source-built C virtiofsd variants: cached builds, serving under the chroot sandbox and
seccomp, the coverage map (cov_spec: header, guards, pid, counters), the planted bug.

The variants are built on first use (minutes; cached under the fuseproto cache, and
``make setup`` builds c-src and c-asan-cov beforehand); later runs take seconds.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_daemons import built_installation

from fuseproto import daemons
from fuseproto.client import Client
from fuseproto.daemons import variants
from fuseproto.errors import DaemonError, TransportError
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import FUSE_ROOT_ID

pytestmark = pytest.mark.daemon

SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:color=never:symbolize=0:abort_on_error=1:handle_abort=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:color=never:symbolize=0",
}
HEADER = 64
MAP_SIZE = 1 << 16


@contextlib.contextmanager
def cov_map(map_size: int = MAP_SIZE, magic: bytes = b"FPCOVMAP") -> Iterator[str]:
    """A coverage-map file as cov_spec describes it (what the harness creates)."""
    fd, path = tempfile.mkstemp(prefix="fuseproto-cov-", dir="/dev/shm")
    try:
        header = struct.pack("<8sIIIIQ", magic, 1, map_size, 0, 0, 0).ljust(HEADER, b"\0")
        os.write(fd, header + bytes(map_size))
        yield path
    finally:
        os.close(fd)
        os.unlink(path)


def read_map(path: str) -> tuple[int, int, int, bytes]:
    """(map_size, guards, pid, counters) of a coverage-map file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        _magic, _version, size, guards, pid, _hits = struct.unpack_from("<8sIIIIQ", m, 0)
        return size, guards, pid, bytes(m[HEADER:HEADER + size])


def nonzero(counters: bytes) -> int:
    return len(counters) - counters.count(0)


@contextlib.contextmanager
def served(inst: daemons.Installation, shared_dir: str, scratch_dir: str,
           env: dict[str, str] | None = None) -> Iterator[tuple[Client, daemons.Daemon]]:
    """An initialised client of ``inst`` (chroot sandbox, the daemon's own seccomp filter)
    started with ``env``; the daemon's log is kept in ``scratch_dir``."""
    d = daemons.Daemon(inst, shared_dir, os.path.join(scratch_dir, "vhost.sock"),
                       log_path=os.path.join(scratch_dir, "daemon.log"),
                       env={**SANITIZER_ENV, **(env or {})})
    assert d.sandbox == "chroot"
    d.start()
    t = VhostUserTransport(d.socket_path, daemon=d, timeout=10.0)
    try:
        c = Client(t)
        c.init()
        yield c, d
    finally:
        t.close()
        d.stop()


def exercise(c: Client) -> None:
    """LOOKUP, GETATTR, OPEN, READ and RELEASE of ``f`` (written by the test)."""
    entry = c.lookup(FUSE_ROOT_ID, "f")
    assert c.getattr(entry.nodeid).attr.size == 5
    fh = c.open(entry.nodeid).fh
    assert c.read(entry.nodeid, fh, 0, 100) == b"hello"
    c.release(entry.nodeid, fh)


def assert_clean_log(d: daemons.Daemon) -> None:
    log = d.log_text()
    for bad in ("Sanitizer", "runtime error", "SIGSYS", "seccomp"):
        assert bad not in log, f"{bad!r} in the daemon's log:\n{log}"
    status = d.poll()
    assert status is not None
    assert not os.WIFSIGNALED(status) or os.WTERMSIG(status) in (15,), d.describe()


@pytest.fixture(scope="module")
def asan_cov() -> daemons.Installation:
    return built_installation("c-asan-cov")


# -- the cache ------------------------------------------------------------------------------
def test_build_is_cached_and_described():
    first = built_installation("c-src")
    t0 = time.monotonic()
    again = daemons.build("c-src")
    assert time.monotonic() - t0 < 1.0
    assert again == first == daemons.find("c-src") == daemons.resolve("c-src")
    assert (first.kind, first.variant, first.instrumentation) == ("c", "c-src", "")
    assert first.version == daemons.SOURCE_VERSION
    assert daemons.detect_kind(first.binary) == "c"
    text = daemons.version_text(first)
    assert "virtiofsd version 7.2" in text and "fuseproto c-src" in text
    recipe = daemons.recipe("c-src")
    assert recipe is not None and "-D_FORTIFY_SOURCE=2" in " ".join(recipe["configure"])
    assert (Path(first.root) / "build.log").stat().st_size > 0
    # The packaged daemon is still what "c" means.
    assert daemons.find("c").variant == "c"


def test_asan_cov_is_instrumented(asan_cov):
    assert (asan_cov.kind, asan_cov.instrumentation) == ("c", "asan+ubsan+sancov")
    recipe = daemons.recipe("c-asan-cov")
    assert recipe is not None and "-Wl,--wrap=seccomp_load" in recipe["link_extra"]
    syms = subprocess.run(["nm", asan_cov.binary], capture_output=True, text=True).stdout
    for name in ("__asan_init", "__wrap_seccomp_load", "__sanitizer_cov_trace_pc_guard"):
        assert name in syms


def test_cli_build_and_list(asan_cov):
    built_installation("c-src")
    out = subprocess.run([sys.executable, "-m", "fuseproto", "daemons", "build"],
                         capture_output=True, text=True, check=True).stdout
    assert "c-src: cached" in out and "c-asan-cov: cached" in out
    out = subprocess.run([sys.executable, "-m", "fuseproto", "daemons", "list"],
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "asan+ubsan+sancov" in lines["c-asan-cov"] and asan_cov.binary in lines["c-asan-cov"]
    assert daemons.SOURCE_VERSION in lines["c-src"]
    assert "tests only" in lines["c-asan-cov-planted"]


def test_failed_build_leaves_nothing(monkeypatch):
    """A configure that fails (an unknown compiler flag) names the step and the log's tail
    and leaves no build tree and no installation; so does a failed compile of our files
    (the shared tree, complete, stays)."""
    built_installation("c-src")
    bad = variants.Variant("c-broken", "test", "gcc", ("-fno-such-flag-fuseproto",), ())
    monkeypatch.setitem(variants.VARIANTS, "c-broken", bad)
    with pytest.raises(DaemonError, match=r"step 'configure' failed") as e:
        daemons.build("c-broken", jobs=1)
    assert "log " in str(e.value) and "tail" in str(e.value)
    assert not (variants.builds_dir() / "tree" / "c-broken").exists()
    assert not variants.install_dir("c-broken").exists()
    assert daemons.find("c-broken") is None

    broken_extra = variants.Extra("no-such-file.c", ())
    relink = variants.Variant("c-broken2", "test", "gcc", variants.DEBIAN_CFLAGS,
                               variants.DEBIAN_LDFLAGS, tree="c-src", extras=(broken_extra,))
    monkeypatch.setitem(variants.VARIANTS, "c-broken2", relink)
    with pytest.raises(DaemonError, match=r"step 'compile no-such-file.c' failed"):
        daemons.build("c-broken2", jobs=1)
    assert not variants.install_dir("c-broken2").exists()
    assert not list(variants.builds_dir().glob(".c-broken2-*"))
    assert (variants.builds_dir() / "tree" / "c-src" / variants.TARGET).exists()
    for name in ("c-broken", "c-broken2"):
        with contextlib.suppress(FileNotFoundError):
            (variants.builds_dir() / f"{name}.log").unlink()


# -- serving ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["c-src", "c-asan-cov"])
def test_variant_serves_under_sandbox_and_seccomp(no_leaks, variant, shared_dir, scratch_dir):
    inst = built_installation(variant)
    Path(shared_dir, "f").write_bytes(b"hello")
    t = VhostUserTransport.spawn(inst, shared_dir)
    d = t.daemon
    assert d is not None and "sandbox=chroot" in d.argv()
    try:
        c = Client(t)
        c.init()
        exercise(c)
        c.statfs()
        assert d.running()
    finally:
        t.close()
    assert_clean_log(d)


def test_coverage_map_fills(no_leaks, asan_cov, shared_dir, scratch_dir):
    Path(shared_dir, "f").write_bytes(b"hello")
    with cov_map() as path, served(asan_cov, shared_dir, scratch_dir,
                                   {"FUSEPROTO_COV_MAP": path}) as (c, d):
        size, guards, pid, counters = read_map(path)
        assert size == MAP_SIZE and guards > 1000 and pid == d.pid
        after_init = nonzero(counters)
        assert after_init > 0
        exercise(c)
        after = nonzero(read_map(path)[3])
        assert after > after_init, (after_init, after)
    assert_clean_log(d)


def test_coverage_map_small_and_bad(no_leaks, asan_cov, shared_dir, scratch_dir):
    """A map smaller than the number of edges wraps (every counter is in bounds); a file
    with a bad magic is left alone and the daemon serves all the same."""
    Path(shared_dir, "f").write_bytes(b"hello")
    with cov_map(map_size=64) as path, served(asan_cov, shared_dir, scratch_dir,
                                              {"FUSEPROTO_COV_MAP": path}) as (c, d):
        exercise(c)
        size, guards, _pid, counters = read_map(path)
        assert size == 64 and guards > 64 and nonzero(counters) > 32
    with cov_map(magic=b"NOTAMAP!") as path:
        before = Path(path).read_bytes()
        with served(asan_cov, shared_dir, scratch_dir, {"FUSEPROTO_COV_MAP": path}) as (c, d):
            exercise(c)
        assert Path(path).read_bytes() == before
    assert_clean_log(d)


# -- the planted bug ------------------------------------------------------------------------
def test_planted_heap_overflow(no_leaks, shared_dir, scratch_dir):
    inst = built_installation("c-asan-cov-planted")
    assert inst.variant == "c-asan-cov-planted"
    Path(shared_dir, "f").write_bytes(b"hello")
    with served(inst, shared_dir, scratch_dir) as (c, d):  # without the variable: harmless
        exercise(c)
        c.statfs()
    assert_clean_log(d)
    with served(inst, shared_dir, scratch_dir,
                {"FUSEPROTO_PLANTED_BUG": "heap-overflow"}) as (c, d):
        with pytest.raises(TransportError):
            c.statfs()
        d.wait_exit(10)
    log = d.log_text()
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in log, log
    assert "SIGSYS" not in log and os.WTERMSIG(d.poll() or 0) == 6, d.describe()
    # Frame #0, symbolized offline against the binary, is the planted wrapper.
    frame0 = next(line for line in log.splitlines() if line.strip().startswith("#0 "))
    offset = frame0.split("+")[-1].split(")")[0]
    sym = subprocess.run(["llvm-symbolizer", f"--obj={inst.binary}", offset],
                         capture_output=True, text=True).stdout
    assert sym.splitlines()[0] == "__wrap_fstatvfs64", sym

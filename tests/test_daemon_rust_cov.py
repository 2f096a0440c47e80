"""rust-cov: Debian 13's Rust virtiofsd built with SanitizerCoverage and our edge-map
runtime (fuseproto.daemons.rust_build): its recipe, serving a client as the packaged Rust
daemon does, its map filling, and the live fuzzer's edges growing on it.

rust-cov is built by ``make setup`` only with ``FUSEPROTO_BUILD_RUST_COV=1``, as CI sets it
(a Debian 13 chroot, 1.4 GB, and cargo's build of ~100 crates: 3 minutes on a quiet fresh
machine, 17-30 on a busy one; see the README). These tests run when it is built
(``fuseproto daemons build rust-cov``), or build it first when ``FUSEPROTO_BUILD_RUST_COV=1``;
otherwise they are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuseproto import daemons
from fuseproto.client import Client
from fuseproto.daemons import rust_build
from fuseproto.errors import DaemonError
from fuseproto.fuzz.coverage import CoverageMap
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import FUSE_ROOT_ID

pytestmark = pytest.mark.daemon


@pytest.fixture(scope="module")
def rust_cov() -> daemons.Installation:
    inst = daemons.find("rust-cov")
    if inst is None:
        if os.environ.get("FUSEPROTO_BUILD_RUST_COV") != "1":
            pytest.skip("rust-cov is not built: run `fuseproto daemons build rust-cov` (a "
                        "Debian 13 chroot, 1.4 GB, 17-30 min; see README) or set "
                        "FUSEPROTO_BUILD_RUST_COV=1 to build it here")
        inst = daemons.build("rust-cov")
    return inst


@contextlib.contextmanager
def served(inst: daemons.Installation, shared_dir: str, scratch_dir: str,
           env: dict[str, str] | None = None) -> Iterator[tuple[Client, daemons.Daemon]]:
    """An initialised client of ``inst`` (its default sandbox) started with ``env``; the
    daemon's socket and log in ``scratch_dir``, stopped by PID afterwards."""
    name = os.path.basename(shared_dir)
    d = daemons.Daemon(inst, shared_dir, os.path.join(scratch_dir, f"{name}.sock"),
                       log_path=os.path.join(scratch_dir, f"{name}.log"), env=env or {})
    d.start()
    t = VhostUserTransport(d.socket_path, daemon=d, timeout=10.0)
    try:
        c = Client(t)
        c.init()
        yield c, d
    finally:
        t.close()
        d.stop()


def exercise(c: Client, shared: str) -> tuple[int, bytes, int, bytes, list[bytes]]:
    """LOOKUP, GETATTR, OPEN, READ, RELEASE of ``f``; CREATE, WRITE, RELEASE of ``g``;
    OPENDIR, READDIR, RELEASEDIR of the root. Returns what the answers said."""
    entry = c.lookup(FUSE_ROOT_ID, "f")
    size = c.getattr(entry.nodeid).attr.size
    fh = c.open(entry.nodeid).fh
    data = c.read(entry.nodeid, fh, 0, 100)
    c.release(entry.nodeid, fh)
    r = c.create(FUSE_ROOT_ID, "g", 0o640, os.O_RDWR)
    wrote = c.write(r.nodeid, r.fh, 0, b"created")
    c.release(r.nodeid, r.fh)
    h = c.opendir(FUSE_ROOT_ID)
    names = sorted(bytes(e.name) for e in c.readdir(FUSE_ROOT_ID, h.fh, 0, 4096))
    c.releasedir(FUSE_ROOT_ID, h.fh)
    return size, data, wrote, Path(shared, "g").read_bytes(), names


# -- the build ------------------------------------------------------------------------------
def test_recipe_and_list(rust_cov):
    assert rust_cov.kind == "rust" and rust_cov.variant == "rust-cov"
    assert "sancov" in rust_cov.instrumentation
    assert rust_cov.loader and Path(rust_cov.loader).name == "ld-linux-x86-64.so.2"
    r = daemons.recipe("rust-cov")
    assert r is not None and r["runtime_sha256"] == rust_build.runtime_digest()
    assert "passes=sancov-module" in r["rustflags"] and r["size"] > 1_000_000
    assert r["compiler"].startswith("rustc 1.")
    # The binary carries our runtime (its guard-init hook) and the edge hooks' callers.
    syms = subprocess.run(["nm", "-D", "--defined-only", rust_cov.binary], capture_output=True,
                          text=True).stdout + subprocess.run(
        ["nm", rust_cov.binary], capture_output=True, text=True).stdout
    assert "__sanitizer_cov_trace_pc_guard_init" in syms
    out = subprocess.run([sys.executable, "-m", "fuseproto", "daemons", "list"],
                         capture_output=True, text=True, timeout=60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("rust-cov "))
    assert "rust" in line.split() and "sancov" in line and rust_cov.binary in line
    # resolve() knows the name (what every --daemon takes) and returns the cached build.
    assert daemons.resolve("rust-cov").binary == rust_cov.binary


# -- serving ----------------------------------------------------------------------------
def test_serves_like_the_packaged_rust(no_leaks, rust_cov, shared_dir, scratch_dir):
    """The same requests get the same answers, and INIT the same protocol minor and
    flags, from rust-cov as from the packaged Rust daemon (each on a fresh directory)."""
    answers = {}
    for inst in (daemons.resolve("rust"), rust_cov):
        shared = os.path.join(shared_dir, inst.variant)
        os.mkdir(shared)
        Path(shared, "f").write_bytes(b"hello")
        with served(inst, shared, scratch_dir) as (c, d):
            got = exercise(c, shared)
            c.statfs()
            assert d.running()
            answers[inst.variant] = (c.session.minor, int(c.session.flags), got)
    assert answers["rust-cov"] == answers["rust"]
    assert answers["rust-cov"][2] == (5, b"hello", 7, b"created", [b".", b"..", b"f", b"g"])


def test_coverage_map_fills_and_grows(no_leaks, rust_cov, shared_dir, scratch_dir):
    Path(shared_dir, "f").write_bytes(b"hello")
    with CoverageMap.create() as cov, served(rust_cov, shared_dir, scratch_dir, cov.env()) as (c, d):
        h = cov.header()
        assert h.valid and h.guards > 5000 and h.pid == d.pid, h
        cov.update()
        after_init = cov.seen
        assert after_init > 0
        exercise(c, shared_dir)
        cov.update()
        assert cov.seen > after_init, (after_init, cov.seen)


# -- the live fuzzer ------------------------------------------------------------------------
def test_live_fuzzer_edges_grow_on_rust_cov(tmp_path, no_leaks, rust_cov):
    """15 s of the single-request loop against rust-cov: coverage feedback is on, the map
    shows the binary's guards, the edges grow past what start-up and setup lit."""
    from fuseproto.fuzz import virtiofsd
    from fuseproto.fuzz.findings import FindingStore

    st = virtiofsd.fuzz_daemon(rust_cov, seconds=15, store=FindingStore(tmp_path / "f"),
                               seed=5, label="rust-cov", corpus_dir=tmp_path / "corpus")
    e = st.edges
    assert e["feedback"] == "coverage" and e["guards"] > 5000, e
    tl = e["timeline"]
    after_setup = next(p[1] for p in tl if p[1] > 0)
    assert e["edges"] > after_setup + 50, (after_setup, e["edges"])
    assert [p[1] for p in tl] == sorted(p[1] for p in tl)
    assert st.requests > 500 and st.corpus_saved > 10


# -- a failed build ---------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("debootstrap"),
                    reason="building rust-cov needs root and debootstrap")
def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    """A chroot that cannot be made (an archive nobody answers at): DaemonError naming the
    step and the log's tail; no chroot, no half-made tree, no installation, no mount left;
    the log stays beside the builds."""
    monkeypatch.setenv("FUSEPROTO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FUSEPROTO_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(DaemonError, match="step 'debootstrap' failed") as e:
        daemons.build("rust-cov")
    assert "127.0.0.1:9" in str(e.value)
    builds = rust_build.builds_dir()
    assert str(builds).startswith(str(tmp_path))
    assert sorted(p.name for p in builds.iterdir()) == [".rust.lock", "rust-cov.log"]
    assert daemons.find("rust-cov") is None
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path) not in f.read()

"""The DAX fuzz target: geometry per input, operations beyond read/write, refusals judged,
the clean managers not flagged, planted manager bugs caught; and its live mode against the
real ``c-dax`` daemon (clean: nothing; a planted daemon bug: caught).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from fixtures_daemons import built_installation

from fuseproto.dax.device import ModelDevice, RefusingDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import InvariantViolation
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.messages import FLAG_READ, removemapping, setupmapping
from fuseproto.dax.osv import OsvDaxManager
from fuseproto.fuzz import dax_ops, dax_target, engine, registry
from fuseproto.fuzz.dax_ops import HEADER_SIZE, PatternFile, decode_program, encode_program
from fuseproto.fuzz.dax_run import (
    ENV_MANAGER,
    ENV_OSV_DEFECTS,
    FULL_EVERY,
    LINUX_KINDS,
    OSV_KINDS,
)
from fuseproto.fuzz.findings import FindingStore

P = 4096


# ---- the input: geometry per input -------------------------------------------------------
def _geometries(n: int = 4000):
    rng = random.Random(1)
    for _ in range(n):
        yield decode_program(rng.randbytes(HEADER_SIZE)).geometry


def test_geometry_reaches_small_and_large_windows_units_and_alignments():
    geos = list(_geometries())
    chunks = {g.chunks for g in geos}
    assert 1 in chunks and max(chunks) > 300 and len(chunks) > 60
    units = {g.unit for g in geos}
    assert {4096, 2 << 20, 3 * (2 << 20)} <= units and len(units) > 12
    assert {g.map_alignment for g in geos} >= {None, 12, 13, 14, 16, 21}
    assert {g.mounts for g in geos} == {1, 2, 3}
    assert any(g.remainder for g in geos) and {g.background for g in geos} == {"off",
                                                                              "after_op"}
    for g in geos:  # every manager accepts the geometry it is given
        assert g.unit % (1 << (g.map_alignment or 12)) == 0
        assert g.window_size == g.chunks * g.unit + g.remainder and g.remainder < g.unit


def test_file_sizes_around_units_and_the_window():
    g = next(x for x in _geometries() if x.chunks > 4 and x.unit == 4096)
    w, u = g.chunks * g.unit, g.unit
    sizes = {g.file_size(code) for code in range(256)}
    assert {0, 1, u - 1, u, u + 1, 2 * u, w - 1, w, w + 1, 2 * w, 100 * w} <= sizes
    assert max(sizes) > 100 * w  # files much larger than the window


def test_positions_and_lengths_hit_boundaries():
    size, unit = 10 * P + 17, P
    offs = {dax_ops.position(c, size, unit) for c in range(0, 65536, 7)}
    assert {0, P - 1, P, P + 1, size, size + 1} <= offs or {P - 1, P, P + 1} <= offs
    assert any(o > size for o in offs) and any(o % P == 0 for o in offs)
    lens = {dax_ops.length(c, size, 0, unit) for c in range(0, 65536, 5)}
    assert {0, P, 2 * P, P + 1, P - 1} <= lens and max(lens) <= dax_ops.READ_MAX


def test_short_inputs_and_torn_ops_are_handled():
    assert decode_program(b"") is None and decode_program(b"\x00" * (HEADER_SIZE - 1)) is None
    dax_target.check_dax(b"\x00" * HEADER_SIZE + b"\x01\x02\x03")  # a torn op: ignored
    assert len(decode_program(b"\x00" * HEADER_SIZE + b"\x00" * 6000).ops) == dax_ops.MAX_OPS


def test_pattern_file_reads_writes_and_extends():
    f = PatternFile(3 * P + 5, key=9)
    base = f[0 : 3 * P + 5]
    assert len(base) == 3 * P + 5 and base == dax_ops.pattern_bytes(9, 0, 3 * P + 5)
    assert base[P : 2 * P] != base[:P]  # not a short period
    f.write(P - 3, b"abcdef")
    assert f[P - 4 : P + 4] == base[P - 4 : P - 3] + b"abcdef" + base[P + 3 : P + 4]
    f.write(5 * P, b"zz")  # extends: the gap reads as zeros
    assert len(f) == 5 * P + 2 and f[3 * P + 5 : 5 * P] == bytes(2 * P - 5)
    f[0:2] = b"QQ"
    assert f[0:3] == b"QQ" + base[2:3]


def test_pattern_files_match_in_place_as_read_compares():
    """``matches`` (the checker's copy-free comparison) never says True where ``read``
    differs, and says True for the original pattern's bytes."""
    files = dax_ops.PatternFiles()
    files.add(2, 3 * P + 5, key=9)
    files.add(3, 2 * P, key=4)
    files.data(3).write(P, b"xy")  # written pages: the oracle's way
    rng = random.Random(5)
    said_true = 0
    for _ in range(3000):
        node = rng.choice((2, 3, 7))
        off = rng.randrange(-2, 4 * P)
        n = rng.randrange(1, 2 * P)
        want = files.read(node, max(off, 0), n) if node in files and off >= 0 else None
        data = want if want and rng.random() < 0.7 else rng.randbytes(n)
        if files.matches(node, off, data):
            said_true += 1
            assert want == data
    assert said_true > 500
    assert files.matches(2, 0, dax_ops.pattern_bytes(9, 0, 3 * P + 5))
    assert not files.matches(2, 1, dax_ops.pattern_bytes(9, 0, 16))


# ---- operations and their judgement ------------------------------------------------------
def _program(config: int, ops: list[tuple[str, int, int, int]], **header) -> bytes:
    """ops: (kind name, sel, a, b); kind names index the policy's table."""
    kinds = LINUX_KINDS if config == 2 else OSV_KINDS
    h = dict(config=config, align=0, unit=2, chunks=6, extra=0, sizes=[0x12, 0x25, 0x07,
                                                                      0x33]) | header
    return encode_program(h, [dict(kind=kinds.index(k), sel=s, a=a, b=b)
                              for k, s, a, b in ops])


def test_seeds_reach_hundreds_of_ranges_and_batch_their_removal():
    seeds = dict(dax_target.dax_inputs())
    checker = dax_target.run_model(seeds["dax-linux-hundreds"])
    mgr = checker.managers[0]
    assert mgr.nr_ranges == 300
    # 300 ranges of one inode forgotten: 256 + 44 entries, after the inline reclaims
    assert mgr.stats.removemapping_entries == 320 and mgr.stats.removemapping == 22
    assert checker.messages_checked == 320 + 22


@pytest.mark.parametrize("config", [0, 2])
def test_read_bytes_fails_through_the_in_place_comparison(config, monkeypatch):
    """The model stage's checker compares a read with the file in place
    (``PatternFiles.matches``); a wrong byte from the window is still ``read_bytes``, and
    the run leaves the managers without observers (no cycle left behind)."""
    clean = dax_target.run_model(_program(config, [("read", 0, 0, 0x4000)]))
    assert clean.matches is not None and clean.reads_checked == 1
    assert all(not m.observers for m in clean.managers)
    real = ModelDevice.read

    def flipped(self, moffset, length):
        data = bytearray(real(self, moffset, length))
        data[-1:] = bytes(b ^ 1 for b in data[-1:])
        return bytes(data)

    monkeypatch.setattr(ModelDevice, "read", flipped)
    with pytest.raises(InvariantViolation) as e:
        dax_target.run_model(_program(config, [("read", 0, 0, 0x4000)]))
    assert e.value.violation.invariant == "read_bytes"


def test_refusals_run_error_paths_and_are_judged():
    # OSv: a refused SETUPMAPPING falls back to FUSE_READ for the whole read
    data = _program(0, [("refuse", 0, 1, 0), ("read", 0, 0, 100), ("read", 1, 0, 100)])
    checker = dax_target.run_model(data)
    mgr = checker.managers[0]
    assert mgr.stats.failed == 1 and mgr.stats.errors.get(errno.ENOSPC) == 2  # msg + read
    assert mgr.stats.fallback_bytes == 101 and checker.full_checks >= 2
    # Linux: a refused upgrade (write after read) leaves the range read-only; judged
    data = _program(2, [("read", 0, 0, 100), ("refuse", 0, 2, 0), ("write", 0, 0, 100),
                        ("write", 0, 0, 100)], sizes=[0x32, 1, 1, 1])
    checker = dax_target.run_model(data)
    mgr = checker.managers[0]
    assert mgr.stats.failed == 1 and mgr.stats.errors == {errno.EIO: 1}
    assert mgr.stats.setupmapping == 3  # the mapping, the refused upgrade, the upgrade


class _Mute(list):
    def append(self, item):
        pass


def linux_silent(device, backend, **options):
    """Linux dropping its warnings (a refused REMOVEMAPPING goes unreported)."""
    mgr = LinuxDaxManager(device, backend, range_shift=14)
    mgr.warnings = _Mute()
    return mgr


def test_a_refused_removemapping_is_a_documented_warning(monkeypatch):
    # Linux reads 2 ranges, the device refuses the next request, the inode is forgotten:
    # its REMOVEMAPPING fails, the ranges are freed anyway, with a warning.
    ops = [("read", 0, 0, 5 << 13), ("refuse", 0, 2, 0), ("forget", 0, 0, 0)]
    data = _program(2, ops, sizes=[0x12, 1, 1, 1])
    checker = dax_target.run_model(data)
    mgr = checker.managers[0]
    assert mgr.stats.errors == {errno.EIO: 1} and len(mgr.warnings) == 1
    monkeypatch.setenv(ENV_MANAGER, "test_fuzz_dax_target:linux_silent")
    with pytest.raises(AssertionError, match="no warning"):
        dax_target.run_model(data)


def test_osv_direct_map_and_deep_unmap_more_than_mapped():
    data = _program(0, [("map", 0, 0, 2), ("map", 1, 0, 1), ("unmap", 0x10, 0, 99),
                        ("unmap", 0x10, 0, 1), ("map", 2, 0, 0)], chunks=6)
    checker = dax_target.run_model(data)
    mgr = checker.managers[0]
    assert mgr.stats.removemapping == 1 and mgr.stats.setupmapping == 3
    assert mgr.stats.errors == {}  # the second unmap (empty window) answered ENODATA


def test_refusing_device_refuses_armed_requests_and_its_own_geometry():
    files = FileStore({2: bytes(8 * P)})
    inner = ModelDevice(8 * P, files)
    dev = RefusingDevice(inner, window_size=4 * P, map_alignment=13)

    def setup(moffset, length=2 * P):
        return dev.submit(setupmapping(2, fh=0, foffset=0, length=length, flags=FLAG_READ,
                                       moffset=moffset))

    assert setup(4 * P) == errno.EINVAL  # past its narrower window
    assert setup(P) == errno.EINVAL  # not aligned to its 8 KiB
    dev.refuse(errno.ENOSPC, after=1)
    assert setup(0) == 0 and setup(2 * P) == errno.ENOSPC and setup(2 * P) == 0
    assert len(dev.injected) == 1 and len(inner.mappings()) == 2 == len(dev.mappings())
    assert dev.submit(removemapping(0, [(0, 2 * P)], count=2)) == errno.EINVAL
    with pytest.raises(ValueError):
        RefusingDevice(inner, window_size=9 * P)


# ---- clean managers are not flagged; planted bugs are -----------------------------------
@pytest.mark.parametrize("manager", ["osv", "osv-aggressive", "linux"])
def test_clean_managers_are_not_flagged(manager, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_MANAGER, manager)
    st = engine.run_loop(registry.get_target("dax"), iterations=600, seed=3,
                         store=FindingStore(tmp_path))
    assert st.iterations == 600 and st.findings == [], [f.summary for f in st.findings]


class _OsvOneMore(OsvDaxManager):
    """OSv mapping one chunk more than each miss needs."""

    def map(self, nodeid, fh, nchunks, fstart, evict=False):
        return super().map(nodeid, fh, nchunks + 1, fstart, evict)


def osv_one_more(device, backend, **options):
    return _OsvOneMore(device, backend, chunk_size=16 * 1024)


class _OsvIgnoresRefusals(OsvDaxManager):
    """OSv whose SETUPMAPPING error path forgets the error: a refused mapping is kept."""

    def map_ll(self, nodeid, fh, nchunks, fstart, mstart):
        super().map_ll(nodeid, fh, nchunks, fstart, mstart)
        return 0


def osv_ignores_refusals(device, backend, **options):
    return _OsvIgnoresRefusals(device, backend, chunk_size=16 * 1024)


class _LinuxOneBatch(LinuxDaxManager):
    """Linux sending every range of a forgotten inode in one REMOVEMAPPING."""

    def _removemapping_list(self, nodeid, ranges):
        return self.send_removemapping(nodeid, [(r.window_offset, r.length) for r in ranges])


def linux_one_batch(device, backend, **options):
    return _LinuxOneBatch(device, backend, range_shift=12, background="off")


class _LinuxForgetsUpgrade(LinuxDaxManager):
    """Linux not recording the writable upgrade it got (the range stays read-only in its
    own bookkeeping while the device maps it writable)."""

    def _setup_one_mapping(self, nodeid, start_idx, r, writable, upgrade):
        err = super()._setup_one_mapping(nodeid, start_idx, r, writable, upgrade)
        if upgrade and not err:
            r.writable = False
        return err


def linux_forgets_upgrade(device, backend, **options):
    return _LinuxForgetsUpgrade(device, backend, range_shift=14)


@pytest.mark.parametrize("spec, env, caught_by", [
    ("osv", {ENV_OSV_DEFECTS: "unregistered_manager"}, {"cross_manager_overlap"}),
    ("osv", {ENV_OSV_DEFECTS: "no_forget"}, {"read_bytes", "read_stale_range"}),
    ("test_fuzz_dax_target:osv_one_more", {}, {"miss_span", "past_eof"}),
    ("test_fuzz_dax_target:osv_ignores_refusals", {},
     {"refused_request", "view_matches_device", "read_stale_range", "read_bytes"}),
    ("test_fuzz_dax_target:linux_one_batch", {}, {"removemapping_count"}),
    ("test_fuzz_dax_target:linux_forgets_upgrade", {}, {"writable_flag"}),
])
def test_planted_manager_bug_is_caught(spec, env, caught_by, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_MANAGER, spec)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = engine.run_loop(registry.get_target("dax"), iterations=6000, seed=1,
                         store=FindingStore(tmp_path), stop_on_finding=True)
    assert st.findings, f"{spec} {env}: not caught in {st.iterations} inputs"
    assert st.findings[0].signature.removeprefix("invariant:") in caught_by, \
        st.findings[0].summary


# (manager, environment, flags some of the 70 inputs): the clean managers, and the planted
# bugs (no_forget and linux_forgets_upgrade need more inputs than these to show)
PLANTED = [
    ("osv", {}, False), ("linux", {}, False),
    ("osv", {ENV_OSV_DEFECTS: "unregistered_manager"}, True),
    ("osv", {ENV_OSV_DEFECTS: "no_forget"}, None),
    ("test_fuzz_dax_target:osv_one_more", {}, True),
    ("test_fuzz_dax_target:osv_ignores_refusals", {}, True),
    ("test_fuzz_dax_target:linux_one_batch", {}, True),
    ("test_fuzz_dax_target:linux_forgets_upgrade", {}, None),
]
# Managers on 4 KiB / 16 KiB ranges: every check after every step walks thousands of
# ranges per input (linux_one_batch took 30 s for 70 inputs, 47 s in CI; its 13th input
# is the first it flags): fewer inputs.
FEWER = {"test_fuzz_dax_target:linux_one_batch": 13,
         "test_fuzz_dax_target:linux_forgets_upgrade": 35}


def _mutants(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    corpus = [d for _name, d in dax_target.dax_inputs()]
    out = list(corpus)
    while len(out) < n:
        out.append(dax_target.dax_mutator(rng.choice(corpus), 4096, rng))
        if rng.random() < 0.3:
            corpus.append(out[-1])
    return out[:n]


def _verdict(data: bytes, full_every: int) -> str | None:
    try:
        dax_target.run_model(data, full_every=full_every)
    except InvariantViolation as e:
        return e.violation.invariant
    except AssertionError as e:  # the operations' own judgement
        return f"assert: {e}"
    return None


@pytest.mark.parametrize("spec, env, flags", PLANTED)
def test_incremental_and_full_checks_agree(spec, env, flags, monkeypatch):
    """The target as it runs (full state checks every FULL_EVERY steps, after refusals and
    at the end; per-message checks on their fast path) and every check after every step
    give the same verdict, naming the same invariant, on seeds and mutants: for the clean
    managers (nothing) and for the planted bugs (most inputs flag one)."""
    monkeypatch.setenv(ENV_MANAGER, spec)
    monkeypatch.delenv(ENV_OSV_DEFECTS, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    flagged = 0
    for data in _mutants(FEWER.get(spec, 70), seed=7):
        fast, full = _verdict(data, FULL_EVERY), _verdict(data, 1)
        assert fast == full, (spec, env, data.hex())
        flagged += fast is not None
    if flags is not None:
        assert (flagged > 0) == flags, flagged


def test_full_check_mode_finds_the_same(monkeypatch):
    """The incremental mode (full state checks every FULL_EVERY steps) and the full mode
    agree on the seeds."""
    for _name, data in dax_target.dax_inputs():
        dax_target.run_model(data, full_every=1)
        dax_target.run_model(data)


# ---- live mode: the real c-dax daemon ----------------------------------------------------
@pytest.fixture
def live_session(no_leaks):
    from fuseproto.fuzz import dax_live

    yield dax_live
    dax_live.close_session()


def _live_run(monkeypatch, tmp_path, device: str, iterations: int, seed: int):
    monkeypatch.setenv(dax_target.ENV_DEVICE, device)
    return engine.run_loop(registry.get_target("dax"), iterations=iterations, seed=seed,
                           store=FindingStore(tmp_path), stop_on_finding=True)


@pytest.mark.daemon
def test_live_clean_c_dax_finds_nothing(live_session, monkeypatch, tmp_path):
    built_installation("c-dax")
    st = _live_run(monkeypatch, tmp_path, "c-dax", 60, seed=4)
    assert st.iterations == 60 and st.findings == [], [f.summary for f in st.findings]
    sess = live_session.session("c-dax")  # one daemon for every input
    assert sess.inputs >= 50
    proc = sess.live.client.transport.daemon.proc
    live_session.close_session()  # stopped by PID, its scratch directory removed
    assert proc.poll() is not None and not os.path.exists(sess.root)


@pytest.mark.daemon
@pytest.mark.parametrize("bug, caught_by", [
    ("unmap", "exact_ranges"),  # by the managers' own REMOVEMAPPINGs
    ("access", "handle_access"),  # OSv's read mappings through the read-only handle
    ("align", "alignment"),  # the rest by probes: the frontend refuses, the record shows
    ("window-end", "inside_window"),
    ("count", "invalid_accepted"),
])
def test_live_mode_catches_a_planted_daemon_bug(live_session, monkeypatch, tmp_path, bug,
                                                caught_by):
    """Each planted daemon bug of c-dax, caught by the live DAX target with a fixed seed
    within a bounded run."""
    built_installation(f"c-dax-bug-{bug}")
    st = _live_run(monkeypatch, tmp_path, f"c-dax-bug-{bug}", 40, seed=4)
    assert st.findings, f"c-dax-bug-{bug} not caught in {st.iterations} inputs"
    assert st.findings[0].signature == f"invariant:{caught_by}", st.findings[0].summary


@pytest.mark.daemon
def test_live_atheris_harness_leaves_no_daemon_or_directory(no_leaks, tmp_path):
    """libFuzzer ends the process with exit(): the harness still stops its daemon by PID
    and removes its scratch directory (a C atexit handler)."""
    import glob
    import tempfile

    from fuseproto.fuzz import campaign

    if campaign.fuzz_dir() is None:
        pytest.skip("needs the fuzz/ directory")
    built_installation("c-dax")
    pattern = os.path.join(tempfile.gettempdir(), "fuseproto-daxlive-*")
    before = set(glob.glob(pattern))
    run = campaign.run_atheris("dax", 3, tmp_path, seed=2,
                               env={dax_target.ENV_DEVICE: "c-dax"})
    assert run.artifact is None and run.executions > 3, Path(run.log).read_text()[-2000:]
    assert set(glob.glob(pattern)) == before
    daemons = [p for p in os.listdir("/proc") if p.isdigit() and "fuseproto-daxlive-" in
               _cmdline(p)]
    assert daemons == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""

"""Simulator, Belady's MIN, traces, plug-ins and the CLI."""

from __future__ import annotations

import errno
import itertools
import json
import sys
import types

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from fuseproto.cli import main
from fuseproto.dax import simulator, traces
from fuseproto.dax.belady import belady_min
from fuseproto.dax.device import ModelDevice
from fuseproto.dax.host import FileStore
from fuseproto.dax.invariants import DaxChecker, InvariantViolation
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.manager import (
    Accounting,
    DaxManager,
    ReadResult,
    Segment,
    ViewEntry,
)
from fuseproto.dax.messages import removemapping, setupmapping
from fuseproto.dax.registry import load_manager

MiB = 1 << 20


def brute_force_min(seq, cap):
    """Best hits over every eviction choice (tiny inputs only)."""
    best = 0

    def go(i, cache, hits):
        nonlocal best
        if i == len(seq):
            best = max(best, hits)
            return
        x = seq[i]
        if x in cache:
            go(i + 1, cache, hits + 1)
        elif len(cache) < cap:
            go(i + 1, cache | {x}, hits)
        else:
            for victim in cache:
                go(i + 1, (cache - {victim}) | {x}, hits)

    go(0, frozenset(), 0)
    return best


@settings(max_examples=150, deadline=None)
@given(seq=st.lists(st.integers(0, 4), max_size=11), cap=st.integers(1, 3))
def test_belady_min_is_optimal(seq, cap):
    assert belady_min(seq, cap).hits == brute_force_min(seq, cap)


def test_min_bounds_both_managers_on_every_trace():
    for name in ("sequential", "zipf", "small", "real", "strace"):
        t = traces.make_trace(name)
        if name not in ("real", "strace"):
            t.accesses = t.accesses[:4000]
        w = max(2, t.working_set // 8 // (2 * MiB)) * 2 * MiB
        best = simulator.simulate_min(t, w)
        for m in ("osv", "linux"):
            r = simulator.simulate(t, m, w)
            assert r.chunk_accesses == best.chunk_accesses
            assert r.hits <= best.hits, (name, m)
            assert r.bytes_read == t.bytes_read()


def _short(name, n=3000):
    t = traces.make_trace(name)
    t.accesses = t.accesses[:n]
    return t


@pytest.mark.parametrize(
    "manager,options",
    [
        ("osv", None),
        ("osv", {"aggressive": True}),
        ("linux", None),
        ("linux", {"background": "off"}),
    ],
)
def test_record_path_and_message_path_make_the_same_decisions(manager, options):
    """The simulator's mapping records and full wire messages (encoded and decoded
    through the codec) give the same SETUPMAPPING / REMOVEMAPPING sequence and counts."""
    for name in ("sequential", "random", "zipf", "small", "mix", "real"):
        t = _short(name)
        w = max(2, t.working_set // 8 // (2 * MiB)) * 2 * MiB
        fast_log, full_log = [], []
        fast = simulator.simulate(t, manager, w, options=options, log=fast_log)
        full = simulator.simulate(t, manager, w, options=options, records=False, log=full_log)
        assert fast_log == full_log, (name, manager)
        assert any(e[0] == "setup" for e in fast_log)
        if manager == "linux":
            assert any(e[0] == "remove" for e in fast_log)
        a, b = fast.as_dict(), full.as_dict()
        for k in ("seconds", "reads_per_second"):
            a.pop(k), b.pop(k)
        assert a == b, name


def test_record_path_covers_forget_unmount_and_refusals():
    """Batched REMOVEMAPPINGs (forget, unmount) and refused requests, both ways."""

    def run(records):
        log = []
        dev = simulator.SimWindow(
            64 * MiB, chunk=2 * MiB, records=records, through_codec=not records, log=log
        )
        backend = simulator.SimBackend({2: 40 * MiB, 3: 40 * MiB, 4: 5000})
        mgr = LinuxDaxManager(dev, backend, range_shift=21)
        for off in range(0, 40 * MiB, MiB):
            mgr.read(2, off, 4096)
            mgr.read(3, off, 4096)
        mgr.forget(2)
        mgr.read(4, 0, 5000)
        mgr.unmount()
        decisions = list(log)
        # A device that refuses: misaligned window offsets and a bad count.
        err = [
            dev.submit(setupmapping(2, fh=0, foffset=1, length=4096, flags=0, moffset=0)),
            dev.setup_record(2, 0, 1, 4096, 0, 0),
            dev.submit(removemapping(2, [(0, 4096)], count=2)),
            dev.remove_record(2, [(0, 4096)], count=2),
            dev.remove_record(2, [(0, 4096)] * 257),
            dev.remove_record(2, [(4096, 64 * MiB)]),
        ]
        return decisions, mgr.stats, err, dev.requests, dev.refused

    fast, full = run(True), run(False)
    assert fast[0] == full[0]
    assert max(len(e[2]) for e in fast[0] if e[0] == "remove") > 1  # a batch
    assert fast[1] == full[1]
    assert fast[2] == [errno.EINVAL] * 6 and fast[2:] == full[2:]


def test_simulation_with_checker_on():
    t = traces.make_trace("mix")
    t.accesses = t.accesses[:3000]
    for m in ("osv", "linux"):
        r = simulator.simulate(t, m, 64 * MiB, check=True)
        assert r.errors == 0 and r.hits > 0


def test_trace_roundtrip_and_strace_parser(tmp_path):
    t = traces.zipf(nreads=50)
    p = tmp_path / "t.jsonl.gz"
    traces.save(t, p)
    u = traces.load(p)
    assert u.files == t.files and u.accesses == t.accesses
    f = tmp_path / "data"
    f.write_bytes(b"x" * 10000)
    text = "\n".join(
        [
            f'100 openat(AT_FDCWD, "{f}", O_RDONLY) = 3<{f}>',
            f'100 read(3<{f}>, ""..., 4096) = 4096',
            f'100 read(3<{f}>, ""..., 4096) = 4096',
            f"100 lseek(3<{f}>, 100, SEEK_SET) = 100",
            f'100 pread64(3<{f}>, ""..., 512, 8192) = 512',
            f'100 read(3<{f}>, ""..., 4096) = 4096',
        ]
    )
    s = traces.from_strace(text)
    assert [(a.offset, a.size) for a in s.accesses] == [
        (0, 4096),
        (4096, 4096),
        (8192, 512),
        (100, 4096),
    ]
    assert list(s.files.values()) == [10000]


def test_strace_trace_is_shipped():
    t = traces.make_trace("strace")
    assert len(t.accesses) > 1000 and len(t.files) > 100


def test_real_trace_comes_from_the_shipped_capture():
    """``real``: the FUSE_READs of corpus/captures/dax-reads.pcap (a real virtiofsd),
    file sizes from its LOOKUP replies; simulated beside MIN at every window size."""
    assert traces.REAL_CAPTURE.stat().st_size < 200 * 1024
    t = traces.make_trace("real")
    assert t.name == "real" and len(t.accesses) > 400 and len(t.files) >= 15
    assert t.working_set > 32 * MiB
    # Sizes are the files' (LOOKUP), not the ends of reads: reads run past the end.
    assert any(a.offset + a.size > t.files[a.nodeid] for a in t.accesses)
    keys = [(a.nodeid, a.offset) for a in t.accesses]
    assert len(set(keys)) < len(keys)  # re-reads
    sizes = {a.size for a in t.accesses}
    assert {4096, 32 * 1024, 64 * 1024, 128 * 1024, 256 * 1024} <= sizes
    # Same as the raw READ requests through from_fuse_requests (no LOOKUP sizes).
    from fuseproto.capture import decode_capture
    from fuseproto.wire.constants import fuse_opcode

    raw = [
        m.raw
        for m in decode_capture(traces.REAL_CAPTURE)
        if m.kind == "request" and m.opcode == fuse_opcode.FUSE_READ
    ]
    u = traces.from_fuse_requests(raw)
    assert u.accesses == t.accesses and set(u.files) == set(t.files)
    results = simulator.sweep([t], ["osv", "linux"])
    assert len(results) == 4 * 3
    for r in results:
        assert r.chunk_accesses == results[0].chunk_accesses and r.errors == 0
    for w in {r.window_size for r in results}:
        best = next(r for r in results if r.window_size == w and r.manager == "belady-min")
        for r in results:
            if r.window_size == w:
                assert 0 < r.hits <= best.hits


@pytest.mark.daemon
def test_record_from_a_live_daemon_and_convert(no_leaks, installation, scratch_dir):
    """Re-record the workload from a real virtiofsd: the capture's READs are exactly the
    reads sent, sizes are the files', and the trace simulates."""
    from fuseproto.dax import workload

    pcap = f"{scratch_dir}/reads.pcap"
    files, reads = workload.record_daemon_reads(installation, pcap, scale=0.1, seed=3)
    t = traces.from_capture(pcap, "live")
    assert [(a.nodeid, a.offset, a.size) for a in t.accesses] == [
        (r.nodeid, r.offset, r.size) for r in reads
    ]
    node_of = {r.path: r.nodeid for r in reads}
    assert t.files == {node_of[p]: files[p] for p in node_of}
    assert len(reads) > 300 and len(set(node_of)) >= 10
    w = max(2, t.working_set // 4 // (2 * MiB)) * 2 * MiB
    best = simulator.simulate_min(t, w)
    for m in ("osv", "linux"):
        r = simulator.simulate(t, m, w, check=True)
        assert r.errors == 0 and r.hits <= best.hits
        assert (
            r.bytes_read
            == t.bytes_read()
            == sum(max(0, min(x.size, files[x.path] - x.offset)) for x in reads)
        )


# ---- plug-ins ----------------------------------------------------------------------------------


class CarelessManager(DaxManager):
    """A plug-in that maps every read at window offset 0 and believes it all stays."""

    name = "careless"

    def __init__(self, device, backend, **kw):
        super().__init__(device, backend)
        self._view: list[ViewEntry] = []
        self.chunk = 2 * MiB

    def read(self, nodeid, offset, size, *, fh=0):
        fsize = self.backend.file_size(nodeid)
        size = max(0, min(size, fsize - offset, self.chunk - offset % self.chunk))
        if size <= 0:
            return self.finish_read(nodeid, offset, size, ReadResult(b""))
        fstart = offset - offset % self.chunk
        hit = next((e for e in self._view if e.nodeid == nodeid and e.foffset == fstart), None)
        if hit is None:
            self.send(
                setupmapping(nodeid, fh=fh, foffset=fstart, length=self.chunk, flags=0, moffset=0)
            )
            hit = ViewEntry(len(self._view) * 0, self.chunk, nodeid, fstart)
            self._view.append(hit)
        m = hit.moffset + offset - fstart
        data = self.window_read(m, size, nodeid, offset)
        return self.finish_read(nodeid, offset, size, ReadResult(data, [Segment(offset, size, m)]))

    def forget(self, nodeid):
        self._view = [e for e in self._view if e.nodeid != nodeid]

    def unmount(self):
        self._view = []

    def view(self):
        return list(self._view)

    def accounting(self):
        total = self.device.window_size
        return Accounting(
            min(total, len(self._view) * self.chunk),
            total - min(total, len(self._view) * self.chunk),
            total,
        )


@pytest.fixture
def plugin_module(monkeypatch):
    mod = types.ModuleType("dax_plugin_example")
    mod.make = lambda device, backend, **kw: CarelessManager(device, backend, **kw)
    monkeypatch.setitem(sys.modules, "dax_plugin_example", mod)
    return mod


def test_plugin_loads_and_is_caught_by_the_checks(plugin_module):
    factory = load_manager("dax_plugin_example:make")
    files = FileStore({2: b"a" * (3 * MiB), 3: b"b" * (3 * MiB)})
    dev = ModelDevice(8 * MiB, files)
    mgr = factory(dev, files)
    checker = DaxChecker.for_manager(mgr)
    assert mgr.read(2, 0, 10).data == b"a" * 10
    mgr.read(3, 0, 10)
    with pytest.raises(InvariantViolation) as e:
        checker.check_state()
    assert e.value.violation.invariant in ("view_overlap", "view_matches_device")
    with pytest.raises(InvariantViolation) as e:
        mgr.read(2, 0, 10)  # served from a window range now mapping file 3
    assert e.value.violation.invariant == "read_stale_range"


def test_unknown_manager_spec():
    with pytest.raises(ValueError):
        load_manager("nope")


def test_two_linux_mounts_over_one_window_are_caught():
    files = FileStore({2: b"a" * (3 * MiB), 3: b"b" * (3 * MiB)})
    dev = ModelDevice(8 * MiB, files)
    a = LinuxDaxManager(dev, files, sender="mount-a")
    b = LinuxDaxManager(dev, files, sender="mount-b")
    DaxChecker(dev.window_size, files=files, device=dev).attach(a, b)
    a.read(2, 0, 10)
    with pytest.raises(InvariantViolation) as e:
        b.read(3, 0, 10)  # b's free list also starts at window offset 0
    assert e.value.violation.invariant == "cross_manager_overlap"
    assert "mount-a" in str(e.value)


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_simulate(tmp_path, capsys, plugin_module):
    out = tmp_path / "r.json"
    png = tmp_path / "hit.png"
    args = [
        "dax",
        "simulate",
        "--trace",
        "sequential",
        "--window",
        "16M",
        "--window",
        "64M",
        "--manager",
        "osv",
        "--manager",
        "linux",
        "--manager",
        "dax_plugin_example:make",
        "--option",
        "osv:aggressive=true",
        "--json",
        str(out),
    ]
    pytest.importorskip("matplotlib")
    args += ["--plot", str(png)]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    got = {(r["manager"], r["window_size"]) for r in rows}
    want = set(
        itertools.product(
            ["osv", "linux", "dax_plugin_example:make", "belady-min"], [16 * MiB, 64 * MiB]
        )
    )
    assert got == want
    assert png.stat().st_size > 1000
    assert "hit%" in capsys.readouterr().out


def test_cli_help_mentions_traces_and_plugins(capsys):
    with pytest.raises(SystemExit):
        main(["dax", "simulate", "--help"])
    text = capsys.readouterr().out
    for word in ("zipf", "real", "strace", ".pcap", "module:factory", "Belady", "--plot"):
        assert word in text


@pytest.mark.daemon
def test_cli_record_from_daemon_then_simulate(no_leaks, daemon_installations, tmp_path, capsys):
    """`fuseproto dax record --from-daemon` writes a capture or a trace; both replay."""
    pcap, trace = tmp_path / "reads.pcap", tmp_path / "reads.jsonl.gz"
    assert main(["dax", "record", "--from-daemon", "c", "--scale", "0.05", str(pcap)]) == 0
    assert main(["dax", "record", "--from-daemon", "rust", "--scale", "0.05", str(trace)]) == 0
    assert "READs of" in capsys.readouterr().out
    a, b = traces.make_trace(str(pcap)), traces.make_trace(str(trace))
    # Same seed, same workload (the two daemons may number nodes differently).
    assert [(x.offset, x.size) for x in a.accesses] == [(x.offset, x.size) for x in b.accesses]
    assert sorted(a.files.values()) == sorted(b.files.values())
    png = tmp_path / "hit.png"
    args = ["dax", "simulate", "--trace", str(pcap), "--trace", str(trace), "--plot", str(png)]
    assert main(args) == 0
    assert png.stat().st_size > 1000

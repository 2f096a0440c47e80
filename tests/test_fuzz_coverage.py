"""The daemon edge map (fuseproto.fuzz.coverage) against a synthetic writer of the format,
and the sanitizer-report forensics on captured-style report texts (no daemon needed)."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys

import pytest

from fuseproto.fuzz import coverage
from fuseproto.fuzz.coverage import ENV_VAR, HEADER_SIZE, CoverageMap


class SyntheticRuntime:
    """What the daemon's coverage runtime does, in Python: open the file named by
    FUSEPROTO_COV_MAP, check magic, version and size, write guards and pid, and count
    edge executions (u8, wrapping) at 64 + (guard - 1) % map_size; anything wrong with
    the file: count into a private buffer instead (the daemon never fails because of it)."""

    def __init__(self, env: dict[str, str], guards: int, pid: int = 4242):
        self.shared = False
        self.map_size = 1 << 16
        self.buf: bytearray | mmap.mmap = bytearray(HEADER_SIZE + self.map_size)
        path = env.get(ENV_VAR)
        try:
            fd = os.open(path or "", os.O_RDWR)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, HEADER_SIZE, 0)
            if len(head) < HEADER_SIZE:
                return
            magic, version, map_size = struct.unpack_from("<8sII", head)
            if magic != b"FPCOVMAP" or version != 1 or not map_size \
                    or size < HEADER_SIZE + map_size:
                return
            self.buf = mmap.mmap(fd, HEADER_SIZE + map_size)
            self.map_size = map_size
            self.shared = True
            struct.pack_into("<II", self.buf, 16, guards, pid)
        finally:
            os.close(fd)

    def hit(self, guard: int, times: int = 1) -> None:
        i = HEADER_SIZE + (guard - 1) % self.map_size
        self.buf[i] = (self.buf[i] + times) & 0xFF


def test_create_writes_the_header_and_env_names_the_file():
    with CoverageMap.create(map_size=4096) as cov:
        assert cov.path.startswith("/dev/shm/fuseproto-cov-")
        assert os.path.getsize(cov.path) == HEADER_SIZE + 4096
        assert cov.env() == {"FUSEPROTO_COV_MAP": cov.path}
        h = cov.header()
        assert h.valid and (h.magic, h.version, h.map_size, h.guards, h.pid) == \
            (b"FPCOVMAP", 1, 4096, 0, 0)
        with open(cov.path, "rb") as f:
            assert f.read(HEADER_SIZE) == coverage.write_header(4096)
        assert cov.guards == 0 and not cov.instrumented and cov.edges() == 0
        path = cov.path
    assert not os.path.exists(path)  # the harness owns and deletes it


@pytest.fixture(params=["numpy", "bytes"])
def reader(request, monkeypatch):
    """Both ways update() reads the counters: numpy's, and the pure-bytes fallback."""
    if request.param == "bytes":
        monkeypatch.setattr(coverage, "np", None)
    elif coverage.np is None:
        pytest.skip("numpy is not installed")
    return request.param


def test_edges_seen_new_and_reset_with_a_synthetic_writer(reader):
    with CoverageMap.create(map_size=1024) as cov:
        rt = SyntheticRuntime(cov.env(), guards=3000)
        assert rt.shared and cov.guards == 3000 and cov.pid == 4242 and cov.instrumented
        for g in (1, 2, 3, 2):
            rt.hit(g)
        assert cov.edges() == 3
        assert cov.update() == 3 and cov.seen == 3
        assert cov.update() == 0  # nothing changed
        rt.hit(2)
        assert cov.update() == 0  # a known edge again is not new
        rt.hit(1025)  # guard 1025 folds onto counter 0 (guard 1): not new either
        assert cov.update() == 0
        rt.hit(10)
        rt.hit(11)
        assert cov.update() == 2 and cov.seen == 5
        snap = cov.snapshot()
        assert len(snap) == 1024 and snap[0] == 2 and snap[1] == 3 and snap[9] == 1
        bm = cov.seen_bitmap()
        assert [i for i, b in enumerate(bm) if b] == [0, 1, 2, 9, 10]
        cov.reset()
        assert cov.edges() == 0 and cov.seen == 5 and cov.guards == 3000
        rt.hit(3)
        assert cov.update() == 0
        rt.hit(500)
        assert cov.update() == 1 and cov.seen == 6
        # A counter that wraps to 0 is not "lost" and not new when it comes back.
        rt.hit(500, 255)
        assert cov.snapshot()[499] == 0 and cov.update() == 0
        rt.hit(500)
        assert cov.update() == 0 and cov.seen == 6
        cov.sample()
        s = cov.summary()
        assert s["guards"] == 3000 and s["edges"] == 6 and s["timeline"][-1][1] == 6
        assert [p[1] for p in s["timeline"]] == sorted(p[1] for p in s["timeline"])


def test_absorb_takes_edges_without_crediting_the_next_input(reader):
    """A fresh daemon's start-up lights edges; the harness absorbs them, so the first input
    after a restart is credited only with what it adds."""
    with CoverageMap.create(map_size=256) as cov:
        rt = SyntheticRuntime(cov.env(), guards=100)
        for g in range(1, 40):
            rt.hit(g)
        assert cov.absorb() == 39
        rt.hit(5)
        assert cov.update() == 0
        # The restarted daemon's runtime opens the same file: startup again is no news.
        rt2 = SyntheticRuntime(cov.env(), guards=100, pid=99)
        for g in range(1, 40):
            rt2.hit(g)
        assert cov.absorb() == 0 and cov.pid == 99


def test_a_daemon_that_never_writes_the_header_counts_nothing():
    with CoverageMap.create(map_size=512) as cov:
        assert cov.update() == 0 and cov.guards == 0 and cov.seen == 0
        assert not cov.instrumented


@pytest.mark.parametrize("damage", ["magic", "version", "map_size", "truncated", "empty",
                                    "missing"])
def test_garbled_or_small_maps_are_refused_not_fatal(tmp_path, damage):
    """A writer that finds a bad map counts privately; the reader refuses such a file with
    a ValueError (never a crash, never a SIGBUS on a short file)."""
    path = tmp_path / "map"
    head = bytearray(coverage.write_header(4096))
    body = bytes(4096)
    if damage == "magic":
        head[:8] = b"NOTAMAP!"
    elif damage == "version":
        head[8:12] = (2).to_bytes(4, "little")
    elif damage == "map_size":
        head[12:16] = (1 << 20).to_bytes(4, "little")  # announces more than the file has
    elif damage == "truncated":
        body = bytes(100)
    elif damage == "empty":
        head, body = bytearray(b"FPCO"), b""
    if damage != "missing":
        path.write_bytes(bytes(head) + body)
    rt = SyntheticRuntime({ENV_VAR: str(path)}, guards=77)
    assert not rt.shared
    rt.hit(3)  # counts privately
    if damage == "missing":
        with pytest.raises(FileNotFoundError):
            CoverageMap.open(str(path))
        return
    with pytest.raises(ValueError):
        CoverageMap.open(str(path))
    assert path.read_bytes()[16:20] != (77).to_bytes(4, "little")


def test_open_reads_a_valid_map_and_too_small_a_size_is_refused(tmp_path):
    path = tmp_path / "map"
    path.write_bytes(coverage.write_header(128, guards=9, pid=1) + bytes(128))
    m = CoverageMap.open(str(path))
    try:
        assert m.map_size == 128 and m.guards == 9
    finally:
        m.close()
    assert not path.exists()
    path.write_bytes(coverage.write_header(128) + bytes(10))
    with pytest.raises(ValueError):
        CoverageMap(str(path), 128)
    with pytest.raises(ValueError):
        CoverageMap.create(map_size=0)


@pytest.mark.parametrize("size", [2048, 2047])  # a size not a multiple of 8: byte view
def test_a_writer_in_another_process_is_seen(size):
    """The map is shared memory: another process's counters show up (as the daemon's do)."""
    with CoverageMap.create(map_size=size) as cov:
        code = ("import mmap, os, struct, sys\n"
                "fd = os.open(os.environ['FUSEPROTO_COV_MAP'], os.O_RDWR)\n"
                f"m = mmap.mmap(fd, 64 + {size})\n"
                "struct.pack_into('<II', m, 16, 321, os.getpid())\n"
                f"for g in (1, 7, 7, {size}, {2 * size}): m[64 + (g - 1) % {size}] += 1\n")
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **cov.env()},
                       check=True, timeout=30)
        assert cov.guards == 321 and cov.edges() == 3 and cov.update() == 3
        assert cov.snapshot()[6] == 2 and cov.snapshot()[size - 1] == 2
        assert [i for i, b in enumerate(cov.seen_bitmap()) if b] == [0, 6, size - 1]


def test_timeline_is_thinned_to_its_bound(reader):
    with CoverageMap.create(map_size=1 << 14) as cov:
        rt = SyntheticRuntime(cov.env(), guards=1 << 14)
        for g in range(1, 3000):
            rt.hit(g)
            cov.update()
        assert len(cov.timeline) <= coverage.TIMELINE_POINTS + 1
        assert cov.timeline[-1][1] == cov.seen == 2999


# -- against the instrumented daemon (c-asan-cov, built and cached on first use) -----------

def _variant(name: str):
    """The built variant (built now, once, and cached, when the daemons package can)."""
    from fuseproto import daemons

    inst = daemons.find(name)
    if inst is None:
        build = getattr(daemons, "build", None)
        if build is None:
            pytest.skip(f"{name} is not built and this checkout cannot build it")
        inst = build(name)
    return inst


@pytest.mark.daemon
def test_live_fuzzer_edges_grow_on_c_asan_cov(tmp_path, no_leaks):
    """8 s of the single-request loop against c-asan-cov: the map shows the binary's
    guards, the edges grow past what start-up and setup lit, inputs that lit new edges are
    kept on disk, and the next run starts from them."""
    from fuseproto.fuzz import virtiofsd
    from fuseproto.fuzz.findings import FindingStore

    inst = _variant("c-asan-cov")
    assert "sancov" in inst.instrumentation
    store = FindingStore(tmp_path / "findings")
    st = virtiofsd.fuzz_daemon(inst, seconds=8, store=store, seed=3, label="c-asan-cov",
                               corpus_dir=tmp_path / "corpus")
    e = st.edges
    assert e["feedback"] == "coverage" and e["guards"] > 1000, e
    tl = e["timeline"]
    after_setup = next(p[1] for p in tl if p[1] > 0)
    assert e["edges"] > after_setup + 50, (after_setup, e["edges"])
    assert [p[1] for p in tl] == sorted(p[1] for p in tl)
    assert st.requests > 1000 and st.corpus_saved > 10
    again = virtiofsd.fuzz_daemon(inst, seconds=3, store=store, seed=4, label="c-asan-cov",
                                  corpus_dir=tmp_path / "corpus")
    assert again.corpus_loaded == min(st.corpus_saved, 2000)
    assert again.edges["edges"] > after_setup


@pytest.mark.daemon
def test_sequences_read_the_edges_too(tmp_path, no_leaks):
    from fuseproto.fuzz.findings import FindingStore
    from fuseproto.fuzz.sequences import fuzz_sequences

    inst = _variant("c-asan-cov")
    st = fuzz_sequences(inst, seconds=8, store=FindingStore(tmp_path), seed=1,
                        corpus_dir=tmp_path / "seq")
    assert st.edges["guards"] > 1000 and st.edges["edges"] > 500
    assert st.corpus_saved > 0 and list((tmp_path / "seq").glob("*.json"))


@pytest.mark.daemon
def test_planted_heap_overflow_is_an_asan_finding(tmp_path, no_leaks):
    """c-asan-cov-planted with FUSEPROTO_PLANTED_BUG=heap-overflow: a FUSE_STATFS makes the
    daemon read past a heap block in __wrap_fstatvfs; the harness reports an ASan finding
    whose signature names heap-buffer-overflow and that frame, with the report."""
    from fuseproto.fuzz import virtiofsd
    from fuseproto.fuzz.findings import FindingStore
    from fuseproto.fuzz.forensics import outcome_signature
    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    inst = _variant("c-asan-cov-planted")
    store = FindingStore(tmp_path)
    stats = virtiofsd.DaemonStats("c-asan-cov-planted")
    with DaemonHarness(inst, env={"FUSEPROTO_PLANTED_BUG": "heap-overflow"}) as h:
        h.unique += 2
        out = h.send(codec.encode_request(O.FUSE_STATFS, None, unique=h.unique, nodeid=1))
        assert out.finding == "asan", (out.cls, out.detail, out.evidence)
        sig = outcome_signature("c-asan-cov-planted", out)
        assert sig.startswith("asan:c-asan-cov-planted:heap-buffer-overflow:__wrap_fstatvfs"), sig
        assert "AddressSanitizer: heap-buffer-overflow" in out.evidence["report"]
        assert out.evidence["frames"][0].startswith("#0 __wrap_fstatvfs")
        f = virtiofsd.record_finding(stats, store, h, "c-asan-cov-planted", out)
        assert f.kind == "asan" and f.signature == sig and f.reproducer
        # Without the variable the same build answers STATFS.
        h.start()
        h.env.clear()
        h.start()
        h.unique += 2
        ok = h.send(codec.encode_request(O.FUSE_STATFS, None, unique=h.unique, nodeid=1))
        assert ok.finding is None and ok.cls.startswith("FUSE_STATFS:0:"), ok.cls


def test_report_shows_daemon_edges_table_json_and_plot(tmp_path):
    """The report's Daemon coverage section, report.json's timelines and edges.png, from a
    campaign result (no daemon needed)."""
    import json
    import time

    from fuseproto.fuzz import report
    from fuseproto.fuzz.campaign import CampaignResult, TargetResult

    r = TargetResult("virtiofsd", "daemon", daemon="c-asan-cov", seconds=60.0, iterations=50000,
                     coverage={"outcome_classes": 300, "daemon_edges": 4100})
    r.edges = {"guards": 21000, "edges": 4100, "map_size": 65536, "feedback": "coverage",
               "variant": "c-asan-cov", "instrumentation": "asan+ubsan+sancov",
               "timeline": [[0.0, 0], [0.4, 2500], [5.0, 3200], [20.0, 3900], [60.0, 4100]],
               "requests_edges": 3900, "corpus_loaded": 12, "corpus_saved": 40}
    plain = TargetResult("virtiofsd", "daemon", daemon="rust", seconds=60.0, iterations=9,
                         coverage={"outcome_classes": 20})
    res = CampaignResult(str(tmp_path), time.time(), seconds=120.0, results=[r, plain])
    md_path, json_path = report.write(res, tmp_path)
    md = md_path.read_text()
    assert "## Daemon coverage" in md and "![daemon edges over time](edges.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| c-asan-cov | asan"))
    # guards, edges, after 10 s, after 25% (15 s), after 50% (30 s), when sequences began
    assert row.split(" | ")[1:10] == ["asan+ubsan+sancov", "coverage", "21000", "4100",
                                       "3200", "3200", "3900", "3900", "12 / 40 |"]
    assert "300 outcome classes, 4100 daemon edges" in md
    assert "the instrumented build (asan+ubsan+sancov)" in md
    j = json.loads(json_path.read_text())
    assert list(j["daemon_edges"]) == ["c-asan-cov"]
    assert j["daemon_edges"]["c-asan-cov"]["timeline"][-1] == [60.0, 4100]
    png = (tmp_path / "edges.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # Without an instrumented daemon: the section says so and there is no plot.
    out2 = tmp_path / "plain"
    report.write(CampaignResult(str(out2), time.time(), results=[plain]), out2)
    assert "No instrumented daemon was fuzzed" in (out2 / "report.md").read_text()
    assert not (out2 / "edges.png").exists()


@pytest.mark.daemon
def test_planted_signed_overflow_is_a_ubsan_finding(no_leaks):
    """FUSEPROTO_PLANTED_BUG=signed-overflow: UBSan's "runtime error" in the same wrapper
    is a ubsan finding (not the crash its abort status alone would say), named by the
    message (numbers as N), its source line and the top frames."""
    from fuseproto.fuzz.forensics import outcome_signature
    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    inst = _variant("c-asan-cov-planted")
    with DaemonHarness(inst, env={"FUSEPROTO_PLANTED_BUG": "signed-overflow"}) as h:
        h.unique += 2
        out = h.send(codec.encode_request(O.FUSE_STATFS, None, unique=h.unique, nodeid=1))
    assert out.finding == "ubsan", (out.cls, out.detail)
    sig = outcome_signature("c-asan-cov-planted", out)
    assert sig.startswith("ubsan:c-asan-cov-planted:signed integer overflow:"), sig
    assert ":planted_bug.c:" in sig and ":__wrap_fstatvfs" in sig
    assert "runtime error: signed integer overflow" in out.evidence["report"]


def _mapped_cov_files() -> set[str]:
    """fuseproto-cov-* files this process has mapped now."""
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "fuseproto-cov-" in line}


def test_sibling_maps_share_one_seen_set(reader):
    """One map per daemon (spawn), one seen set: a daemon is credited only with edges no
    map of the set has seen; a fresh daemon's start-up is absorbed; what a spare lights
    while it waits never reaches the map being read; closing a sibling unmaps and deletes
    it and the parent falls back to its own file."""
    with CoverageMap.create(map_size=1024) as root:
        a, b = root.spawn(), root.spawn()
        assert len({root.path, a.path, b.path}) == 3
        assert all(os.path.dirname(m.path) == os.path.dirname(root.path) for m in (a, b))
        ra = SyntheticRuntime(a.env(), guards=500, pid=1)
        for g in range(1, 21):  # daemon a's start-up
            ra.hit(g)
        root.follow(a)
        assert root.instrumented and root.pid == 1
        assert root.absorb() == 20 and root.seen == 20
        rb = SyntheticRuntime(b.env(), guards=500, pid=2)
        for g in (*range(1, 21), 200, 201):  # the spare b starts (and lights two more)
            rb.hit(g)
        ra.hit(5)
        assert root.update() == 0  # b's edges are not in a's map
        ra.hit(100)
        assert root.update() == 1 and root.seen == 21
        root.follow(b)  # b adopted: its start-up (and 200, 201) absorbed, not credited
        assert root.pid == 2 and root.absorb() == 2 and root.seen == 23
        rb.hit(100)  # what a lit already: not new from b either
        assert root.update() == 0
        rb.hit(300)
        assert root.update() == 1 and root.seen == 24
        assert root.summary()["edges"] == 24 and root.timeline[-1][1] == 24
        assert [i for i, v in enumerate(root.seen_bitmap()) if v] == \
            [*range(20), 99, 199, 200, 299]
        with pytest.raises(ValueError):
            root.follow(CoverageMap.create(map_size=1024))  # its own seen set: refused
        root.follow(None)
        assert root.guards == 0 and root.summary()["guards"] == 500  # the last daemon's
        for m in (a, b):
            m.close()
            assert not os.path.exists(m.path) and m.path not in _mapped_cov_files()
        root.follow(a)  # a closed map is never read: the parent's own file is
        assert root.guards == 0 and root.update() == 0 and root.seen == 24


@pytest.mark.daemon
def test_each_daemon_and_spare_has_its_own_map_removed_with_it(daemon_installations,
                                                                no_leaks, tmp_path,
                                                                monkeypatch):
    """The harness gives every daemon it starts (spares too) a map of its own, reads the
    current one through the given map, and unmaps and deletes each as its daemon is
    retired, discarded or fails to start: nothing is left in /dev/shm."""
    import signal
    import tempfile

    from fuseproto.fuzz.harness import DaemonHarness, resolve_installation

    made: list[str] = []

    def recording(root: CoverageMap):
        spawn = root.spawn

        def wrapped() -> CoverageMap:
            m = spawn()
            made.append(m.path)
            return m
        return wrapped

    inst = daemon_installations["c"]
    with CoverageMap.create() as root:
        root.spawn = recording(root)  # type: ignore[method-assign]
        with DaemonHarness(inst, coverage=root, spare=True) as h:
            assert h.spare_allowed() and h.spare is not None
            seen_env = []
            for _ in range(3):
                assert h.edge_map is not None and h.daemon is not None
                assert h.daemon.env["FUSEPROTO_COV_MAP"] == h.edge_map.path != root.path
                assert root.current is h.edge_map
                seen_env.append(h.edge_map.path)
                h.daemon.signal(signal.SIGKILL)
                h.start()
            assert len(set(seen_env)) == 3
            assert h.spare.settle() >= 1  # spares made, each with a map
            assert len(made) >= 3 + 1
        assert root.current is root and os.path.exists(root.path)
        # A daemon that cannot start: its map goes with it.
        bad = tmp_path / "virtiofsd"
        bad.write_text("#!/bin/sh\nexit 3\n")
        bad.chmod(0o755)
        before = len(made)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        with monkeypatch.context() as mp:
            mp.setattr(tempfile, "tempdir", str(scratch))  # where the harness's workdir goes
            with pytest.raises(Exception), DaemonHarness(  # noqa: B017 -- DaemonError or transport
                    resolve_installation(str(bad), "c"), coverage=root, spare=True):
                pass
        assert len(made) > before
        assert not list(scratch.iterdir())  # the failed start's work directory is gone too
    leftover = [p for p in made if os.path.exists(p)]
    assert not leftover, leftover
    assert not _mapped_cov_files() & set(made)
    assert not os.path.exists(root.path)


@pytest.mark.daemon
def test_spares_beside_c_asan_cov_do_not_light_the_live_map(no_leaks):
    """With c-asan-cov and warm spares: once the spares are up (each started with its own
    map), the live daemon's map shows nothing new; a request does; after a kill the next
    daemon (a spare) is adopted with its start-up absorbed."""
    import signal

    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    inst = _variant("c-asan-cov")
    with CoverageMap.create() as root, DaemonHarness(inst, coverage=root, spare=True) as h:
        assert h.spare_allowed() and root.instrumented and root.guards > 1000
        assert h.spare is not None and h.spare.settle() >= 1
        assert root.update() == 0  # the spares' start-ups are in their own maps
        first = h.edge_map
        h.unique += 2
        out = h.send(codec.encode_request(O.FUSE_STATFS, None, unique=h.unique, nodeid=1))
        assert out.finding is None and root.update() > 0  # the live daemon's new edges
        seen = root.seen
        h.daemon.signal(signal.SIGKILL)
        h.start()
        assert first is not None and h.edge_map is not None and h.edge_map is not first
        assert root.update() == 0 and root.seen >= seen
    assert first is not None and not os.path.exists(first.path)


def test_corpus_save_of_one_entry_from_many_writers_at_once(tmp_path):
    """Parallel jobs share a corpus directory and may save the same entry at once: each
    writer's temporary file is its own, so none fails (one temporary name for all made
    the second os.replace raise FileNotFoundError in a two-job run), one entry stays, and
    exactly one writer is told it saved it (the jobs' corpus_saved counts add up to the
    files: with replace() both writers counted, 280 saves for 278 files in CI)."""
    import multiprocessing
    import threading

    from fuseproto.fuzz.corpus import Corpus

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    saved: list[bool] = []

    def save() -> None:
        barrier.wait()
        try:
            for i in range(50):
                saved.append(Corpus.save(tmp_path, b"same entry %d" % i, ".bin"))
        except BaseException as e:  # noqa: BLE001 -- the test's verdict
            errors.append(e)

    ts = [threading.Thread(target=save) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    procs = [multiprocessing.get_context("fork").Process(
        target=Corpus.save, args=(tmp_path, b"from a process", ".bin")) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert not errors and all(p.exitcode == 0 for p in procs)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 51 and all(n.endswith(".bin") for n in names)
    assert saved.count(True) == 50

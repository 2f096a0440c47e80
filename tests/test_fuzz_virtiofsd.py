"""The virtiofsd fuzz target and the campaign, against the real daemons (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from construct import Container

from fuseproto.fuzz import known, report, virtiofsd
from fuseproto.fuzz.campaign import run_campaign
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.fuzz.sanitizer import sanitize
from fuseproto.wire import codec, structs
from fuseproto.wire.constants import fuse_opcode as O

pytestmark = pytest.mark.daemon


def test_sanitize_defuses_device_nodes_and_huge_allocations():
    mk = codec.encode_request(O.FUSE_MKNOD, Container(mode=0o060600, rdev=0x0801, umask=0,
                              name=b"sda"), unique=2, nodeid=1)
    body = structs.FAST["fuse_mknod_in"].parse(sanitize(mk), 40)
    assert body["mode"] == 0o100600 and body["rdev"] == 0
    fa = codec.encode_request(O.FUSE_FALLOCATE, Container(fh=1, offset=0, length=1 << 40,
                              mode=0), unique=4, nodeid=2)
    assert structs.FAST["fuse_fallocate_in"].parse(sanitize(fa), 40)["length"] < 1 << 27
    # Bytes our codec would reject are defused too (trailing garbage after the name).
    assert sanitize(mk + b"junk")[40:56] == sanitize(mk)[40:56]


def test_seed_requests_get_valid_replies(daemon_installations, no_leaks):
    for kind, inst in daemon_installations.items():
        with DaemonHarness(inst) as h:
            pid = h.daemon.pid
            # INTERRUPT and NOTIFY_REPLY have their own tests: they break a daemon (below).
            outs = [h.send(r) for r in h.seed_requests()
                    if structs.FAST["fuse_in_header"].parse(r, 0)["opcode"]
                    not in (O.FUSE_INTERRUPT, O.FUSE_NOTIFY_REPLY)]
            bad = [(o.cls, o.detail) for o in outs if o.finding]
            assert not bad, f"{kind}: {bad}"
            assert sum(o.cls.split(":")[1] == "0" for o in outs) > 15, kind
        assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped


def _read_request(h: DaemonHarness, size: int) -> bytes:
    h.unique += 2
    return codec.encode_request(O.FUSE_READ, Container(fh=h.fhs["file"], offset=0, size=size),
                                unique=h.unique, nodeid=h.nodes["file"])


def test_read_area_bigger_than_size_is_reported_for_the_c_daemon(daemon_installations):
    """The C daemon fills the whole device-writable area of a READ, past ``size``; the
    fuzzer must report it as a protocol violation with evidence (the Rust one answers EIO)."""
    with DaemonHarness(daemon_installations["c"]) as h:
        exact = h.send(_read_request(h, 100), variant=0)
        assert exact.finding is None and exact.cls.startswith("FUSE_READ:0")
        big = h.send(_read_request(h, 100), variant=1)
    assert big.finding == "protocol"
    assert "LimitExceededError" in big.cls
    assert big.evidence["requested_size"] == 100 and big.evidence["used_len"] > 116



@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_forced_header_length_gets_the_area_of_its_fields(daemon_installations, kind):
    """A READ whose fuse_in_header.len lies (shorter or longer than its bytes) does not
    decode, yet both daemons serve it by its descriptors: it gets the area a kernel would
    give for its fields (size + 16, not a default 4 KiB one the C daemon then fills past
    ``size`` and the Rust one answers EIO: a diff run's READ 0/-5 was that), and its reply
    is bounded by its ``size`` as an honest READ's."""
    with DaemonHarness(daemon_installations[kind]) as h:
        for length in (40, 56, 79, 200):
            data = bytearray(_read_request(h, 100))
            data[0:4] = length.to_bytes(4, "little")  # fuse_in_header.len
            assert h.decode(bytes(data))[0] is None
            req = h.as_served(bytes(data))
            assert req is not None and req.body["size"] == 100
            out = h.send(bytes(data))
            assert out.finding is None and out.cls == "FUSE_READ:0:<=256", (length, out.cls)
            assert len(out.reply) == 116
        if kind == "c":  # a bigger area: C's reads past size are still caught
            data = bytearray(_read_request(h, 100))
            data[0:4] = (40).to_bytes(4, "little")
            big = h.send(bytes(data), variant=1)
            assert big.finding == "protocol" and "LimitExceededError" in big.cls


def test_stale_interrupt_breaks_the_c_daemon(daemon_installations):
    """Finding, kept as a test: an INTERRUPT naming a request that is not in flight is
    answered (-EAGAIN) by QEMU 7.2's C virtiofsd in the *next* request's buffer, so that
    request gets a reply with the wrong unique, or the daemon aborts on the double reply."""
    with DaemonHarness(daemon_installations["c"]) as h:
        intr = codec.encode_request(O.FUSE_INTERRUPT, Container(unique=12345), unique=801)
        first = h.send(intr)
        assert first.finding is None
        h.unique += 2
        stat = codec.encode_request(O.FUSE_STATFS, Container(), unique=h.unique, nodeid=1)
        out = h.send(stat)
    assert out.finding in ("protocol", "crash"), out
    if out.finding == "protocol":
        assert out.cls == "FUSE_STATFS:wrong-unique" and out.evidence["header"]["unique"] == 801
        assert out.evidence["header"]["error"] == -11  # EAGAIN, meant for the INTERRUPT


def test_notify_reply_panics_the_rust_daemon(daemon_installations):
    """Finding, kept as a test: virtiofsd 1.13 tries to answer a NOTIFY_REPLY (which has
    no reply, so the chain has no device-writable descriptor) and its queue worker panics
    (EncodeMessage WriteZero); the process lives, the queue is dead. The panic shows while
    the next request waits, and is put down to the NOTIFY_REPLY (whose chain the daemon
    never gave back), with the request it was seen behind."""
    with DaemonHarness(daemon_installations["rust"]) as h:
        nr = codec.encode_request(O.FUSE_NOTIFY_REPLY, Container(offset=0, size=None,
                                  data=b"abcd"), unique=900, nodeid=h.nodes["file"])
        assert h.send(nr).cls == "FUSE_NOTIFY_REPLY:noreply"
        h.unique += 2
        out = h.send(codec.encode_request(O.FUSE_STATFS, Container(), unique=h.unique,
                                          nodeid=1))
        assert h.daemon.running()
    assert out.finding == "crash" and out.cls == "FUSE_NOTIFY_REPLY:panic", out.cls
    assert "WriteZero" in out.evidence["site"]
    assert out.evidence["seen_after"] == "FUSE_STATFS" and out.evidence["culprit_back"] == 2
    assert "after FUSE_NOTIFY_REPLY (seen behind FUSE_STATFS)" in out.detail


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_frozen_daemon_is_a_hang_and_a_dead_one_a_crash(daemon_installations, kind,
                                                          no_leaks):
    """The harness's wait (blocked in slices, looking at the daemon between them) still
    reports a daemon that never answers as a hang, and one killed while it waits as a
    crash with its signal, not as a hang."""
    with DaemonHarness(daemon_installations[kind], hang_timeout=0.3) as h:
        getattr_ = [r for r in h.seed_requests()
                    if structs.FAST["fuse_in_header"].parse(r, 0)["opcode"] == O.FUSE_GETATTR][0]
        assert h.send(getattr_).finding is None
        h.daemon.freeze()
        out = h.send(getattr_)
        assert out.finding == "hang" and out.cls == "FUSE_GETATTR:hang", (out.cls, out.detail)
        h.daemon.thaw()
        h.start()
        h.on_send = lambda hh, _data: hh.daemon.freeze()  # frozen before the kick ...
        pid = h.daemon.pid

        def kill_later() -> None:
            import time
            time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)  # ... and killed while the harness waits

        import threading
        t = threading.Thread(target=kill_later)
        t.start()
        out = h.send(getattr_)
        t.join()
        h.on_send = None
    assert out.finding == "crash" and out.evidence.get("signal") == "SIGKILL", \
        (out.cls, out.detail, out.evidence)


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_late_reply_is_slow_not_a_hang_and_without_grace_a_hang(daemon_installations,
                                                                  kind, no_leaks):
    """A daemon frozen for longer than the hang timeout but thawed within the grace
    answers late: the request is counted slow (with how long it waited), not a finding,
    and the daemon is kept. With no grace the same late reply is a hang."""
    import threading
    import time

    from fuseproto.fuzz.virtiofsd import DaemonStats

    def late(h: DaemonHarness, req: bytes) -> tuple[object, float]:
        h.daemon.freeze()
        t = threading.Timer(0.6, h.daemon.thaw)
        t.start()
        t0 = time.monotonic()
        try:
            return h.send(req), time.monotonic() - t0
        finally:
            t.join()
            h.daemon.thaw()

    with DaemonHarness(daemon_installations[kind], hang_timeout=0.2) as h:
        getattr_ = [r for r in h.seed_requests()
                    if structs.FAST["fuse_in_header"].parse(r, 0)["opcode"] == O.FUSE_GETATTR][0]
        pid = h.daemon.pid
        out, took = late(h, getattr_)
        assert out.finding is None and out.cls.startswith("FUSE_GETATTR:"), (out.cls, out.detail)
        assert 0.5 < took < 2.0
        n, longest = h.slow["FUSE_GETATTR"]
        assert n == 1 and 0.5 < longest < 2.0
        assert h.daemon.pid == pid and h.send(getattr_).finding is None  # served on
        assert h.slow["FUSE_GETATTR"][0] == 1  # a prompt reply is not slow
        st = DaemonStats(kind)
        st.add_slow(h.slow)
        st.add_slow({"FUSE_GETATTR": [2, 0.3], "FUSE_READ": [1, 0.9]})
        assert st.slow == {"FUSE_GETATTR": [3, longest], "FUSE_READ": [1, 0.9]}
        note = st.slow_note()
        assert note is not None and note.startswith("4 slow replies") and "FUSE_READ 1" in note
    with DaemonHarness(daemon_installations[kind], hang_timeout=0.2, hang_grace=0) as h:
        out, took = late(h, getattr_)
        assert out.finding == "hang" and out.cls == "FUSE_GETATTR:hang", (out.cls, out.detail)
        assert not h.slow
    if kind == "rust":
        # A worker panic in the log while the reply is late gets no grace: it is the
        # panic finding at once, even though the (frozen) daemon answers afterwards.
        with DaemonHarness(daemon_installations[kind], hang_timeout=0.2) as h:
            with open(h.daemon.log_path, "a") as log:
                h.on_send = lambda _h, _d: (log.write(
                    "thread 'pool-1' panicked at src/planted.rs:7:9:\nplanted\n"), log.flush())
                out, took = late(h, getattr_)
            assert out.finding == "crash" and out.cls == "FUSE_GETATTR:panic", out.cls
            assert "planted.rs:7:9" in out.evidence["site"] and took < 0.5
            assert not h.slow


def test_crash_is_detected_saved_and_the_daemon_restarted(daemon_installations, tmp_path,
                                                           no_leaks):
    """A daemon killed by a signal mid-request (SIGSEGV sent by PID from the test hook) is a
    crash finding with a replayable reproducer, and fuzzing continues on a fresh daemon."""
    killed: list[int] = []
    sent = [0]

    def on_send(h: DaemonHarness, data: bytes) -> None:
        sent[0] += 1
        if sent[0] in (10, 60):
            killed.append(h.daemon.pid)
            os.kill(h.daemon.pid, signal.SIGSEGV)

    store = FindingStore(tmp_path)
    st = virtiofsd.fuzz_daemon(daemon_installations["c"], seconds=30, store=store,
                               max_requests=120, on_send=on_send, seed=4)
    assert len(killed) == 2 and st.starts >= 3
    crash = [f for f in store if f.kind == "crash" and "SIGSEGV" in f.signature]
    assert sum(f.count for f in crash) >= 2 and crash[0].daemon == "c"
    assert crash[0].evidence["signal"] == "SIGSEGV" and crash[0].evidence["previous"]
    doc = json.loads(Path(crash[0].reproducer).read_text())
    assert doc["daemon"] == "c" and doc["requests"] and "7.2" in doc["daemon_version"]
    assert crash[0].replay.startswith("fuseproto fuzz replay ")
    assert st.requests >= 100


def test_campaign_writes_report_and_findings_replay(tmp_path, no_leaks):
    out = tmp_path / "out"
    res = run_campaign(out, seconds=14, daemons=["c"], seed=1)
    md = (out / "report.md").read_text()
    for section in report.SECTIONS:
        assert section in md
    j = json.loads((out / "report.json").read_text())
    names = [t["target"] for t in j["targets"]]
    assert names[:2] == ["wire_decode", "session"] and "virtiofsd" in names
    assert names[names.index("virtiofsd") + 1:] == ["chains", "control_plane"]
    for t in j["targets"]:
        assert t["iterations"] > 0 and t["per_second"] > 0, t
        assert t["coverage"], t
    assert j["daemons"][0]["version"].startswith("virtiofsd version 7.2")
    vt = next(t for t in j["targets"] if t["target"] == "virtiofsd")
    assert any(n.startswith("daemon configs: ") for n in vt["notes"]), vt["notes"]
    # Clean in-process targets; the C daemon has real findings within seconds.
    live = ("virtiofsd", "chains", "control_plane")
    assert not [f for f in j["findings"] if f["target"] not in live]
    daemon_findings = [f for f in res.findings if f.target == "virtiofsd"]
    assert daemon_findings
    # Marked against the shipped known findings (the default from the repo root); this
    # run's own report, read back as a known-set, knows every one of them.
    assert j["known"]["sources"] == [str(Path("corpus") / "findings")] and \
        j["known"]["signatures"] >= 40
    assert j["known"]["new"] == sum(1 for f in res.findings if not f.known)
    again = known.load([out / "report.json"])
    assert again.mark(res.findings) == (0, len(res.findings))
    f = daemon_findings[0]
    assert f.reproducer and os.path.exists(f.reproducer) and f.signature in md
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "replay", f.reproducer,
                           "--json"], capture_output=True, text=True, timeout=120)
    verdict = json.loads(proc.stdout)
    assert verdict["target"] == "virtiofsd" and verdict["requests_sent"] > 0


def test_atheris_harness_leaves_nothing_after_a_crash(daemon_installations, tmp_path):
    """libFuzzer ends the process on the crash without Python's atexit: the harness stops
    its daemon and removes its pid file and scratch directory before raising."""
    from fixtures_daemons import pid_dir_files, stale_pid_files

    crash = tmp_path / "short-request"
    crash.write_bytes(b"\x00" + bytes(10))  # variant 0, a request shorter than its header
    before_pid = pid_dir_files()
    before_tmp = set(Path("/tmp").glob("fuseproto-fuzz-*"))
    env = dict(os.environ, FUSEPROTO_FUZZ_DAEMON="c", FUSEPROTO_FUZZ_OUT=str(tmp_path / "f"))
    p = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "fuzz" /
                        "virtiofsd_fuzzer.py"), str(crash)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "virtiofsd crash" in p.stdout + p.stderr
    assert not stale_pid_files(pid_dir_files() - before_pid)
    assert set(Path("/tmp").glob("fuseproto-fuzz-*")) <= before_tmp


def test_batch_size_puts_several_in_flight_only_for_an_in_order_daemon():
    from types import SimpleNamespace

    rust = SimpleNamespace(kind="rust", config=None)
    assert virtiofsd.batch_size(rust, steering=False) == virtiofsd.IN_ORDER_BATCH
    assert virtiofsd.batch_size(rust, steering=True) == 1  # edges read after each input
    pooled = SimpleNamespace(kind="rust", config=SimpleNamespace(
        args=("--thread-pool-size", "4")))
    assert virtiofsd.batch_size(pooled, steering=False) == 1
    pooled.config.args = ("--thread-pool-size=4",)
    assert virtiofsd.batch_size(pooled, steering=False) == 1
    assert virtiofsd.batch_size(SimpleNamespace(kind="c", config=None), steering=False) == 1
    assert virtiofsd.batch_size(SimpleNamespace(kind="c", config=None), False, batch=3) == 3


@pytest.mark.parametrize("kind", ["c", "rust"])
def test_live_loop_batches_the_rust_daemon_and_ends_a_batch_at_init(daemon_installations,
                                                                   tmp_path, kind, no_leaks):
    """Against the Rust daemon the loop puts up to IN_ORDER_BATCH requests on one kick
    (each history item names its kick, so replay puts them in flight together again) and
    an INIT or DESTROY is always the last of its kick; the C daemon gets one per kick."""
    sent: list[tuple[int, Any, int]] = []

    def on_send(h: DaemonHarness, data: bytes) -> None:
        op = structs.FAST["fuse_in_header"].parse(data, 0)["opcode"] if len(data) >= 40 else -1
        sent.append((h.starts, h.history[-1].get("batch"), op))

    st = virtiofsd.fuzz_daemon(daemon_installations[kind], seconds=60, max_requests=400,
                               store=FindingStore(tmp_path), seed=3, on_send=on_send)
    assert st.requests <= 400
    kicks: dict[tuple[int, Any], list[int]] = {}
    for n, (start, b, op) in enumerate(sent):
        kicks.setdefault((start, b if b is not None else f"one-{n}"), []).append(op)
    sizes = [len(ops) for ops in kicks.values()]
    if kind == "c":
        assert max(sizes) == 1
        return
    assert max(sizes) == virtiofsd.IN_ORDER_BATCH and sum(s > 1 for s in sizes) > 20
    ends = (O.FUSE_INIT, O.FUSE_DESTROY)
    assert all(op not in ends for ops in kicks.values() for op in ops[:-1])


def test_a_batched_loop_still_reports_an_escape(daemon_installations, tmp_path, no_leaks):
    """The canaries are checked once per kick (the daemon has served the whole kick by
    the time its replies are judged): a canary written while a kick of the Rust daemon is
    sent (here by the test hook, at its 6th request) is still an escape finding."""
    from fuseproto.fuzz.canaries import CANARY_FILE

    sent = [0]

    def touch(h: DaemonHarness, data: bytes) -> None:
        sent[0] += 1
        if sent[0] == 6:
            with open(os.path.join(h.canaries.base, CANARY_FILE), "ab") as f:
                f.write(b"!")

    store = FindingStore(tmp_path)
    st = virtiofsd.fuzz_daemon(daemon_installations["rust"], seconds=30, store=store,
                               max_requests=40, on_send=touch, seed=2)
    assert f"escape:rust:written:{CANARY_FILE}" in [f.signature for f in st.findings]


def test_a_panic_is_not_put_down_to_a_forget_the_daemon_served(daemon_installations):
    """A FORGET the Rust daemon gave back (its chain came back used) is not blamed for a
    later panic: a LOOKUP whose name runs into extension bytes (the daemon reads them as
    part of the name: an interior NUL) is the culprit, named as such."""
    with DaemonHarness(daemon_installations["rust"]) as h:
        forget = codec.encode_request(O.FUSE_FORGET, Container(nlookup=1), unique=801,
                                      nodeid=h.nodes["empty"])
        lookup = codec.encode_request(O.FUSE_LOOKUP, Container(name=b"file"), unique=803,
                                      nodeid=1)
        hdr = dict(structs.FAST["fuse_in_header"].parse(lookup, 0))
        hdr.update(len=len(lookup) + 8, total_extlen=1)
        lookup = structs.FAST["fuse_in_header"].build(hdr) + lookup[40:] + bytes(8)
        outs = h.send_many([(forget, 0), (lookup, 0)])
    assert [o.cls for o in outs] == ["FUSE_FORGET:noreply", "FUSE_LOOKUP:panic"], outs
    assert "InteriorNul" in outs[1].evidence["site"] and "culprit_back" not in outs[1].evidence

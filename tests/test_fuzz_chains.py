"""Hostile descriptor chains (fuseproto.fuzz.chains) against the real daemons, and the
chain model's oracles (fuseproto.fuzz.descchain) fed chains and used entries that break
them."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from fuseproto.fuzz import chains
from fuseproto.fuzz.chains import ChainSession
from fuseproto.fuzz.descchain import ChainInput, Desc, chain_check, judge_used
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.forensics import PanicWatch
from fuseproto.fuzz.rawfront import Region
from fuseproto.transport.virtqueue import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)

pytestmark = pytest.mark.daemon

N, W, IND = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
BASE = 0x4000_0000
TWO = (Region(0, 16 << 20, BASE), Region(16 << 20, 16 << 20, BASE + (16 << 20)))
GAP = (Region(0, 16 << 20, BASE), Region(16 << 20, 16 << 20, BASE + (16 << 20) + (1 << 30)))


def _ring(*descs: Desc) -> list[Desc | None]:
    ring: list[Desc | None] = [None] * 256
    for i, d in enumerate(descs):
        ring[i] = d
    return ring


def _check(*descs: Desc, regions=TWO, tables=None, indirect_ok=False, head=0):
    return chain_check(_ring(*descs), head, tables or {}, regions, indirect_ok=indirect_ok)


# -- the model, pure --------------------------------------------------------------------------

def test_chain_check_accepts_valid_shapes_and_names_the_writable_part():
    ok = _check(Desc(BASE, 40, N, 1), Desc(BASE + 64, 8, N, 2), Desc(BASE + 128, 100, W | N, 3),
                Desc(BASE + 4096, 0, W))
    assert ok.valid and ok.writable_bytes == 100 and len(ok.writable) == 2
    # A buffer across the two contiguous regions is valid; across the hole it is not.
    edge = BASE + (16 << 20) - 20
    assert _check(Desc(edge, 40, N, 1), Desc(BASE, 64, W)).valid
    bad = _check(Desc(edge, 40, N, 1), Desc(BASE, 64, W), regions=GAP)
    assert not bad.valid and bad.reasons == ["buffer outside guest memory"]
    # A direct chain ending in an indirect table (2.7.5.3.2: the device MUST handle it).
    table = [Desc(BASE + 8192, 64, W)]
    tail = _check(Desc(BASE, 40, N, 1), Desc(BASE + 4096, 16, IND), tables={BASE + 4096: table},
                  indirect_ok=True)
    assert tail.valid and tail.writable_bytes == 64


@pytest.mark.parametrize("descs,kw,reason", [
    ((Desc(BASE, 40, N, 1), Desc(BASE + 64, 8, N, 0)), {}, "next loops"),
    ((Desc(BASE, 40, N, 300),), {}, "next out of range"),
    ((Desc(BASE, 40, W | N, 1), Desc(BASE + 64, 8, 0)), {}, "readable after writable"),
    ((Desc(0, 40, 0),), {}, "buffer outside guest memory"),
    ((Desc(BASE, 0xFFFFF000, 0),), {}, "buffer outside guest memory"),
    ((Desc(BASE, 40, 0),), {"head": 300}, "avail entry names no descriptor"),
    ((Desc(BASE + 4096, 16, IND),), {"tables": {BASE + 4096: [Desc(BASE, 40, 0)]}},
     "indirect not negotiated"),
    ((Desc(BASE + 4096, 15, IND),), {"tables": {BASE + 4096: [Desc(BASE, 40, 0)]},
                                   "indirect_ok": True}, "indirect table length"),
    ((Desc(BASE + 4096, 16, IND | N, 1), Desc(BASE, 8, 0)),
     {"tables": {BASE + 4096: [Desc(BASE, 40, 0)]}, "indirect_ok": True}, "INDIRECT with NEXT"),
    ((Desc(BASE + 4096, 16, IND),), {"tables": {BASE + 4096: [Desc(BASE + 4096, 16, IND)]},
                                   "indirect_ok": True}, "nested indirect"),
    ((Desc(BASE + 4096, 16 * 257, IND),),
     {"tables": {BASE + 4096: [Desc(BASE, 0, N, k + 1) for k in range(256)] + [Desc(BASE, 8, 0)]},
      "indirect_ok": True}, "chain longer than the ring"),
])
def test_chain_check_names_what_breaks_the_rules(descs, kw, reason):
    got = _check(*descs, **kw)
    assert not got.valid and reason in got.reasons


def test_judge_used_flags_a_length_past_the_writable_area_and_unknown_heads():
    check = _check(Desc(BASE, 40, N, 1), Desc(BASE + 64, 100, W | N, 2), Desc(BASE + 256, 16, W))
    assert judge_used("FUSE_READ", 0, [(0, 116)], check, set()) is None
    over = judge_used("FUSE_READ", 0, [(0, 117)], check, set())
    assert over is not None and over.finding == "protocol" and over.cls.endswith("used-overflow")
    assert over.evidence["writable"] == 116
    stray = judge_used("FUSE_READ", 0, [(7, 16)], check, set())
    assert stray is not None and stray.cls.endswith("used-unknown-head")
    assert judge_used("FUSE_READ", 0, [(7, 16)], check, {7}) is None  # a late completion


def test_used_bound_of_a_looping_chain():
    """A device that bounds a looping walk by the ring size (instead of refusing it) may
    count the writable buffer each time round: not a finding; past that it is."""
    loop = _check(Desc(BASE, 40, N, 1), Desc(BASE + 64, 1, W | N, 1))
    assert not loop.valid and "next loops" in loop.reasons and loop.used_bound == 256
    assert judge_used("FUSE_READ", 0, [(0, 254)], loop, set()) is None
    assert judge_used("FUSE_READ", 0, [(0, 257)], loop, set()) is not None


def test_panic_watch_waits_for_the_message_line(tmp_path):
    log = tmp_path / "d.log"
    log.write_text("[INFO virtiofsd] Client connected\n")
    w = PanicWatch(str(log), log.stat().st_size)
    assert not w.seen()
    with open(log, "a") as f:
        f.write("thread 'vring_worker' panicked at src/vhost_user.rs:268:18:\n")
    assert not w.seen()  # the message (the site's second half) is not there yet
    with open(log, "a") as f:
        f.write("called `Result::unwrap()` on an `Err` value: QueueReader(FindMemoryRegion)\n")
    assert w.seen()


# -- live daemons ---------------------------------------------------------------------------

def _run(inst, tmp_path, layout="two", **kw):
    s = ChainSession(inst, str(tmp_path), layout=layout, indirect=True)
    try:
        data, area = s.read_request()
        out, usable = s.run(ChainInput(data, kw.pop("area", area), **kw))
    finally:
        s.stop()
    return out, usable


def test_well_formed_chains_give_no_finding_on_either_daemon(daemon_installations, tmp_path,
                                                             no_leaks):
    """A fixed-seed run of valid chains both daemons handle (odd readable cuts, headers
    split mid-field, odd writable splits, indirect tables) carrying well-formed requests:
    every one answered correctly, no finding."""
    rng = random.Random(0)
    for kind, inst in daemon_installations.items():
        s = ChainSession(inst, str(tmp_path), layout="two", indirect=True)
        try:
            assert s.indirect_ok, kind
            served = 0
            for _ in range(40):
                op, body, node = rng.choice([t for t in s.templates()
                                             if len(t[1].get("data", b"")) < 65536])
                data = s.request(op, body, node)
                inp = chains.random_input(data, chains.codec.reply_area(op, body), rng)
                inp.ops, inp.order = [], "normal"
                if inp.area < chains.codec.reply_area(op, body):
                    inp.area = chains.codec.reply_area(op, body)
                out, usable = s.run(inp)
                assert out.finding is None, (kind, inp.tags(), out.cls, out.detail)
                assert usable and out.evidence["valid"]
                served += not out.cls.endswith(("noreply-small-area",))
            assert served >= 35
        finally:
            s.stop()


def test_chain_findings_on_the_c_daemon(daemon_installations, tmp_path):
    """Real findings (QEMU 7.2 C virtiofsd, libvhost-user), each a valid chain:
    a buffer across two contiguous memory regions inside an indirect table ends the daemon
    ("Looped descriptor": it counts iovecs against the table's entries); a direct chain
    ending in an indirect table (which the device MUST handle) completes with nothing
    written; a zero-length descriptor ends it; a request bigger than its buffer aborts it.
    Invalid chains are refusals, not findings."""
    c = daemon_installations["c"]
    out, _ = _run(c, tmp_path, cuts=[40], indirect=True, ops=[("straddle", 1)])
    assert out.finding == "daemon-exit" and out.evidence["valid"]
    assert "Looped descriptor" in out.evidence["log_tail"]
    out, _ = _run(c, tmp_path, cuts=[40], ops=[("indirect-tail", 0)])
    assert out.finding == "protocol" and out.cls == "FUSE_READ:no-reply-written"
    out, _ = _run(c, tmp_path, cuts=[40], ops=[("zero", 1)])
    assert out.finding == "daemon-exit" and "zero sized" in out.evidence["log_tail"]
    out, usable = _run(c, tmp_path, cuts=[40], order="writable-first")
    assert out.finding is None and out.cls.startswith("refused-exit") and not usable
    out, _ = _run(c, tmp_path, layout="gap", cuts=[40], ops=[("straddle", 1)])
    assert out.finding is None and "invalid address" in out.detail
    # The same straddle directly (not in a table) is served.
    out, usable = _run(c, tmp_path, cuts=[40], indirect=False, ops=[("straddle", 1)])
    assert out.finding is None and usable
    # A WRITE of 1 MiB + 4 KiB (bigger than the daemon's buffer) aborts it; Rust: ENOMEM.
    s = ChainSession(c, str(tmp_path))
    try:
        op, body, node = s.templates()[5]
        out, _ = s.run(ChainInput(s.request(op, body, node), 4096))
    finally:
        s.stop()
    assert out.finding == "crash" and "fuse_virtio.c:502" in out.evidence["site"]
    # Its pcap: the handshake (annotations), the honest setup and the hostile WRITE.
    from fuseproto.capture import decode_capture
    from fuseproto.wire.constants import fuse_opcode

    f = chains.record_chain_finding(FindingStore(tmp_path / "store"), "c", s, out, False)
    recs = list(decode_capture(f.pcap))
    ops = [m.opcode for m in recs if m.kind == "request"]
    assert ops[0] == fuse_opcode.FUSE_INIT and ops[-1] == fuse_opcode.FUSE_WRITE
    assert sum(m.kind == "reply" and m.paired for m in recs) >= 5  # INIT, LOOKUPs, OPENs
    notes = [m.raw.decode() for m in recs if m.kind == "annotation"]
    assert any(n.startswith("hostile chain") for n in notes)
    assert any(n.startswith("front-end: SET_MEM_TABLE") for n in notes)


def test_rust_worker_panic_is_a_prompt_finding(daemon_installations, tmp_path):
    """Rust virtiofsd 1.13: a readable buffer across two contiguous memory regions (a
    valid chain) panics the queue worker; the panic is read from the log as it happens,
    long before the hang timeout."""
    rust = daemon_installations["rust"]
    s = ChainSession(rust, str(tmp_path), layout="two", timeout=5.0)
    try:
        data, area = s.read_request()
        t0 = time.monotonic()
        out, usable = s.run(ChainInput(data, area, cuts=[40], ops=[("straddle", 1)]))
        took = time.monotonic() - t0
    finally:
        s.stop()
    assert out.finding == "crash" and out.cls == "FUSE_READ:panic" and not usable
    assert "FindMemoryRegion" in out.detail or "OutOfBounds" in out.detail
    assert out.evidence["valid"]
    assert took < 1.0, took  # not the 5 s hang timeout


def test_used_overflow_is_judged_on_a_live_session(daemon_installations, tmp_path):
    """The used ring oracle on real traffic: a crafted used entry (as a buggy device
    would write it) past the chain's writable bytes is a protocol finding."""
    s = ChainSession(daemon_installations["c"], str(tmp_path))
    try:
        data, area = s.read_request()
        out, usable = s.run(ChainInput(data, area, cuts=[20]))
        assert out.finding is None and usable
        check = chain_check(s.mirror, 0, {}, s.fe.regions, indirect_ok=s.indirect_ok)
        used = out.evidence["writable"]
        forged = judge_used("FUSE_READ", 0, [(0, used + 1)], check, set())
        assert forged is not None and forged.cls == "FUSE_READ:used-overflow"
    finally:
        s.stop()



@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_late_chain_reply_is_counted_slow(daemon_installations, tmp_path, kind):
    """A valid chain answered after the hang timeout, within the grace (the daemon frozen
    for 0.8 s): no finding, counted slow with its wait in the table the loop reports; a
    prompt one is not counted."""
    import threading

    slow: dict[str, list[float]] = {}
    s = ChainSession(daemon_installations[kind], str(tmp_path), timeout=0.3, slow=slow)
    try:
        data, area = s.read_request()
        out, usable = s.run(ChainInput(data, area))
        assert out.finding is None and usable and slow == {}
        s.live.daemon.freeze()
        thaw = threading.Timer(0.8, s.live.daemon.thaw)
        thaw.start()
        try:
            out, usable = s.run(ChainInput(data, area))
        finally:
            thaw.join()
            s.live.daemon.thaw()
        assert out.finding is None and usable, out
        (n, longest), = slow.values()
        assert n == 1 and 0.7 < longest < 2.5 and list(slow) == ["FUSE_READ"]
    finally:
        s.stop()


def test_a_daemon_killed_mid_run_is_a_finding(daemon_installations, tmp_path):
    for kind, inst in daemon_installations.items():
        s = ChainSession(inst, str(tmp_path))
        try:
            os.kill(s.live.daemon.pid, signal.SIGKILL)
            data, area = s.read_request()
            out, usable = s.run(ChainInput(data, area))
        finally:
            s.stop()
        assert out.finding == "crash" and out.evidence["signal"] == "SIGKILL", kind
        assert not usable


def test_bounded_campaign_and_replay(daemon_installations, tmp_path):
    """A fixed-seed campaign per daemon runs, files reproducers that replay, and leaves
    nothing behind."""
    for kind, inst in daemon_installations.items():
        store = FindingStore(tmp_path / kind)
        st = chains.fuzz_chains(inst, seconds=60, store=store, seed=1, max_inputs=40)
        assert st.inputs == 40 and st.error is None, (kind, st.error)
        assert st.valid > 5 and len(st.classes) > 8
        for f in st.findings:
            assert Path(f.reproducer).exists() and f.signature.split(":")[1] == "chain"
        if st.findings:
            import json

            doc = json.loads(Path(st.findings[0].reproducer).read_text())
            outs = chains.replay_chains(doc, inst)
            assert outs and doc["inputs"]


def test_live_harness_reads_a_rust_panic_before_the_hang_timeout(daemon_installations):
    """The single-request target (DaemonHarness) sees a Rust worker panic in the log as it
    is written: with a 5 s hang timeout the verdict comes in well under a second."""
    from construct import Container

    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import codec
    from fuseproto.wire.constants import fuse_opcode as O

    with DaemonHarness(daemon_installations["rust"], hang_timeout=5.0) as h:
        bad = codec.encode_request(O.FUSE_LOOKUP, Container(name=b"file"), unique=9001,
                                   nodeid=1, length=24)  # a header len that lies
        t0 = time.monotonic()
        out = h.send(bad)
        took = time.monotonic() - t0
    assert out.finding == "crash" and out.cls.endswith(":panic"), out
    assert took < 1.0, took


def test_c_daemon_aborts_on_a_request_with_unique_0(daemon_installations, tmp_path):
    """Finding (C), first seen by the chain target (a WRITE flag flipped on a zeroed
    buffer made the header all zeros): a request whose ``unique`` is 0 -- reserved for
    notifications, but a guest can send it -- aborts the daemon when it replies
    (virtio_send_msg's ``out->unique`` assertion); the Rust daemon answers it."""
    import struct

    getattr0 = struct.pack("<IIQQIIII", 56, 3, 0, 1, 0, 0, 0, 0) + bytes(16)
    for kind, inst in daemon_installations.items():
        s = ChainSession(inst, str(tmp_path))
        try:
            out, _ = s.run(ChainInput(getattr0, 4112))
        finally:
            s.stop()
        if kind == "c":
            assert out.finding == "crash" and "virtio_send_msg" in out.evidence["site"]
        else:
            assert out.finding is None and out.cls.startswith("FUSE_GETATTR:0")


def test_chains_steer_by_daemon_edges_on_an_instrumented_daemon(daemon_installations,
                                                                tmp_path):
    """On c-asan-cov the chains read the edge map: edges are counted and steer (chains
    that lit new edges are kept); on a packaged daemon there are none to count."""
    from fixtures_daemons import built_installation

    inst = built_installation("c-asan-cov")
    st = chains.fuzz_chains(inst, seconds=60, store=FindingStore(tmp_path / "cov"), seed=2,
                            max_inputs=30)
    assert st.inputs == 30 and st.error is None, st.error
    e = st.edges
    assert e["feedback"] == "coverage" and e["guards"] > 5000 and e["edges"] > 1000, e
    assert st.corpus_size >= 1
    off = chains.fuzz_chains(inst, seconds=60, store=FindingStore(tmp_path / "off"), seed=2,
                             max_inputs=10, feedback="outcome")
    assert off.edges["feedback"] == "outcome" and off.edges["edges"] > 1000
    plain = daemon_installations["c"]
    st = chains.fuzz_chains(plain, seconds=60, store=FindingStore(tmp_path / "plain"),
                            seed=2, max_inputs=5)
    assert st.inputs == 5 and st.edges == {}

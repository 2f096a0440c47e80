"""The vhost-user control plane as a fuzz target (fuseproto.fuzz.control_plane) against
the real daemons: well-formed programs give no finding, each oracle fires."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from fuseproto.fuzz import control_plane as cp
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.rawfront import LAYOUTS, CtlStep, standard_program
from fuseproto.transport.vhost_user_proto import (
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VhostUserMessage,
)
from fuseproto.transport.vhost_user_proto import VhostUserRequest as R

pytestmark = pytest.mark.daemon

STD = standard_program()


def _before(req: int, index: int | None = None) -> int:
    return next(i for i, s in enumerate(STD) if s.request == req and s.index in (index, None))


def _run(inst, tmp_path, prog, **kw):
    return cp.run_control_program(prog, inst, workdir=str(tmp_path), **kw)


# -- pure parts -------------------------------------------------------------------------------

@pytest.mark.parametrize("step,valid", [
    (CtlStep(R.SET_VRING_NUM, 1, 256), True),
    (CtlStep(R.SET_VRING_NUM, 1, 255), False),  # not a power of two
    (CtlStep(R.SET_VRING_NUM, 1, 65536), False),
    (CtlStep(R.SET_VRING_NUM, 2, 256), False),  # past the queue count
    (CtlStep(R.SET_VRING_ADDR, 0xFFFFFFFF), False),
    (CtlStep(R.SET_VRING_ADDR, 1, mode="unaligned"), False),
    (CtlStep(R.SET_VRING_KICK, 1, fds="none"), False),
    (CtlStep(R.GET_FEATURES, fds="extra"), False),
    (CtlStep(R.SET_MEM_TABLE, mode="beyond-file"), False),
    (CtlStep(R.SET_VRING_BASE, 1, size_delta=-4), False),
    (CtlStep(R.SET_OWNER, flags=VHOST_USER_VERSION | VHOST_USER_REPLY_MASK), False),
    (CtlStep(R.SEND_RARP), False),
    (CtlStep(0xFFFF), False),
    (CtlStep(R.SET_VRING_ENABLE, 0, 1), True),
])
def test_step_valid(step, valid):
    assert cp.step_valid(step, offered=~0, offered_protocol=~0) is valid


def test_features_without_version_1_are_invalid():
    v1 = 1 << 32
    assert cp.step_valid(CtlStep(R.SET_FEATURES, value=v1), offered=v1 | 1 << 30)
    assert not cp.step_valid(CtlStep(R.SET_FEATURES, value=0), offered=v1)
    assert not cp.step_valid(CtlStep(R.SET_FEATURES, value=v1), offered=0)  # never asked


@pytest.mark.parametrize("msg,cls", [
    (VhostUserMessage(R.GET_FEATURES, VHOST_USER_VERSION, bytes(8)), "reply-mismatch"),
    (VhostUserMessage(R.SET_VRING_CALL, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, bytes(8)),
     "stray-SET_VRING_CALL"),
    (VhostUserMessage(R.GET_FEATURES, 2 | VHOST_USER_REPLY_MASK, bytes(8)), "reply-version"),
    (VhostUserMessage(R.GET_FEATURES, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, bytes(4)),
     "reply-size"),
    (VhostUserMessage(R.GET_FEATURES, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, bytes(8)),
     "features"),
])
def test_reply_oracle_flags_replies_that_break_the_protocol(msg, cls):
    out = cp.judge_control_reply(CtlStep(R.GET_FEATURES), msg, True)
    assert out is not None and out.finding == "protocol" and out.cls.endswith(cls)


def test_reply_oracle_refused_valid_step():
    ack = VhostUserMessage(R.SET_MEM_TABLE, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK,
                           (1).to_bytes(8, "little"))
    out = cp.judge_control_reply(CtlStep(R.SET_MEM_TABLE, need_reply=True), ack, True)
    assert out is not None and out.cls.endswith("refused-valid")
    assert cp.judge_control_reply(CtlStep(R.SET_MEM_TABLE, need_reply=True), ack, False) is None


def test_program_json_roundtrip():
    prog = cp.mutate_program(STD, __import__("random").Random(3))
    assert cp.program_from_json(json.loads(json.dumps(cp.program_to_json(prog)))) == prog


# -- real daemons -----------------------------------------------------------------------------

WELL_FORMED = {
    "standard": STD,
    "gets-again": STD + [CtlStep(R.GET_FEATURES), CtlStep(R.GET_PROTOCOL_FEATURES),
                         CtlStep(R.GET_QUEUE_NUM), CtlStep(R.GET_MAX_MEM_SLOTS)],
    "call-again": STD[:-2] + [CtlStep(R.SET_VRING_CALL, 1)] + STD[-2:],
    "enable-toggle": STD + [CtlStep(R.SET_VRING_ENABLE, 1, 0, need_reply=True),
                            CtlStep(R.SET_VRING_ENABLE, 1, 1, need_reply=True)],
    "features-again": STD[:7] + [CtlStep(R.SET_FEATURES)] + STD[7:],
    "memtable-again": STD + [CtlStep(R.SET_MEM_TABLE, need_reply=True)],
    "hiprio-128": STD[:8] + [CtlStep(R.SET_VRING_NUM, 0, 128)] + STD[8:],
}


def test_well_formed_programs_give_no_finding_and_the_ring_serves(daemon_installations,
                                                                  tmp_path, no_leaks):
    for kind, inst in daemon_installations.items():
        for i, (name, prog) in enumerate(WELL_FORMED.items()):
            layout = LAYOUTS[i % len(LAYOUTS)]
            res = _run(inst, tmp_path, prog, layout=layout)
            assert res.finding is None, (kind, name, res.finding)
            assert res.expected_serving and res.served, (kind, name, layout)
            assert all(o.cls.endswith((":ok", "<=64")) for o in res.outcomes), (kind, name)
    # Without a kick fd for ring 1 nothing is expected of it (and nothing is judged).
    no_kick = [s for s in STD if not (s.request == R.SET_VRING_KICK and s.index == 1)]
    res = _run(daemon_installations["c"], tmp_path, no_kick)
    assert not res.expected_serving and res.served is None and res.finding is None


def test_crash_oracle_c_aborts_on_get_vring_base_of_a_ring_never_started(daemon_installations,
                                                                         tmp_path):
    """Finding (QEMU 7.2 C virtiofsd): GET_VRING_BASE for ring 1 before its kick fd was
    set -- valid message, valid index -- aborts the daemon (fv_queue_cleanup_thread's
    ``qidx < vud->nqueues``); the Rust daemon answers it."""
    i = _before(R.SET_VRING_NUM, 1)
    prog = STD[:i] + [CtlStep(R.GET_VRING_BASE, 1)] + STD[i:]
    res = _run(daemon_installations["c"], tmp_path, prog)
    assert res.finding is not None and res.finding.finding == "crash"
    assert "fv_queue_cleanup_thread" in res.finding.evidence["site"]
    assert res.first_invalid is None  # every step valid in its place
    # The finding's pcap shows the program: each vhost-user message as an annotation.
    f = cp.record_control_finding(FindingStore(tmp_path / "store"), "c",
                                  daemon_installations["c"], prog, "one", res.finding,
                                  res.log, None, res.exchange)
    from fuseproto.capture import decode_capture

    recs = list(decode_capture(f.pcap))
    notes = [m.raw.decode() for m in recs if m.kind == "annotation"]
    assert sum(n.startswith("front-end: GET_VRING_BASE") for n in notes) == 1
    assert any(n.startswith("back-end: GET_FEATURES") for n in notes)
    assert len(notes) >= len(prog[:i + 1]) and not [m for m in recs if m.error]
    res = _run(daemon_installations["rust"], tmp_path, prog)
    assert res.finding is None and res.served


def test_crash_oracle_out_of_range_ring_index(daemon_installations, tmp_path):
    """Finding (C): SET_VRING_ADDR / SET_VRING_BASE naming ring 0xffffffff write outside
    libvhost-user's ring array (SIGSEGV, at once or a step later); the Rust daemon refuses
    them by closing the connection (a refusal, not a finding)."""
    for step in (CtlStep(R.SET_VRING_BASE, 0xFFFFFFFF, 5), CtlStep(R.SET_VRING_ADDR, 0xFFFFFFFF)):
        res = _run(daemon_installations["c"], tmp_path, STD + [step])
        assert res.finding is not None and res.finding.evidence.get("signal") == "SIGSEGV"
        assert res.first_invalid == cp.step_tag(step)
        res = _run(daemon_installations["rust"], tmp_path, STD + [step])
        assert res.finding is None
        assert any(o.cls.startswith("refused-exit") for o in res.outcomes)


def test_protocol_oracle_c_answers_set_vring_call_it_cannot_signal(daemon_installations,
                                                                   tmp_path):
    """Finding (C): a SET_VRING_CALL whose fd cannot be written (here /dev/null, read-only)
    is answered with a reply nobody asked for, which the front-end then takes for the
    next message's reply."""
    prog = STD[:-2] + [CtlStep(R.SET_VRING_CALL, 1, fds="bad")] + STD[-2:]
    res = _run(daemon_installations["c"], tmp_path, prog)
    assert res.finding is not None and res.finding.finding == "protocol"
    assert "SET_VRING_CALL" in res.finding.detail
    # Named by the request the stray reply carries, whichever step it lands on; a
    # decorated program shrinks to the one plain message that matters.
    assert res.finding.cls.endswith(":stray-SET_VRING_CALL"), res.finding.cls
    fancy = [CtlStep(R.GET_FEATURES), CtlStep(R.SET_PROTOCOL_FEATURES, size_delta=3),
             CtlStep(R.SET_VRING_CALL, 0, mode="nregions-lie", fds="bad"),
             CtlStep(R.GET_FEATURES)]
    key = cp.finding_key(_run(daemon_installations["c"], tmp_path, fancy).finding)
    assert key == ("protocol", "stray-SET_VRING_CALL")
    small, sres = cp.shrink_control(fancy, daemon_installations["c"], "one", key, seconds=20)
    assert small == [CtlStep(R.SET_VRING_CALL, 0, fds="bad")]
    assert sres is not None and cp.finding_key(sres.finding) == key
    assert _run(daemon_installations["rust"], tmp_path, fancy).finding is None


def test_hang_oracle_rust_ignores_a_second_kick_fd(daemon_installations, tmp_path):
    """Finding (Rust virtiofsd 1.13): a second SET_VRING_KICK for ring 1 (valid: it sets
    the fd and starts the ring) leaves the ring deaf -- the process lives, holds the queue,
    and never answers a request kicked through the new fd. The C daemon aborts on it
    (``kick_fd == -1`` in fv_queue_set_started)."""
    prog = STD[:-2] + [CtlStep(R.SET_VRING_KICK, 1)] + STD[-2:]
    res = _run(daemon_installations["rust"], tmp_path, prog)
    assert res.expected_serving and res.served is False
    assert res.finding is not None and res.finding.finding == "hang"
    res = _run(daemon_installations["c"], tmp_path, prog)
    assert res.finding is not None and "fv_queue_set_started" in res.finding.evidence["site"]


def test_hang_and_signal_oracles_mid_program(daemon_installations, tmp_path, no_leaks):
    """A daemon stopped (SIGSTOP) mid-program is a hang at the next step that needs a
    reply; one killed by a signal mid-program is a crash."""
    i = _before(R.SET_MEM_TABLE)
    for kind, inst in daemon_installations.items():
        res = _run(inst, tmp_path, STD, before_step=lambda k, live: k == i and live.daemon.freeze())
        assert res.finding is not None and res.finding.finding == "hang", kind
        assert res.finding.cls == "SET_MEM_TABLE:hang"
        res = _run(inst, tmp_path, STD,
                   before_step=lambda k, live: k == i and os.kill(live.daemon.pid, signal.SIGKILL))
        assert res.finding is not None and res.finding.finding == "crash", kind
        assert res.finding.evidence["signal"] == "SIGKILL"



@pytest.mark.parametrize("kind", ["c", "rust"])
def test_a_late_reply_is_slow_not_a_hang_and_without_grace_a_hang(daemon_installations, kind,
                                                                  tmp_path, no_leaks):
    """A daemon frozen past the hang timeout at a step that needs a reply and thawed
    within the grace answers late: counted slow (with its wait), no finding, and the
    program goes on to serve ring 1. With no grace the same late reply is a hang."""
    import threading

    i = _before(R.SET_MEM_TABLE)
    timers: list[threading.Timer] = []

    def freeze_briefly(k, live):
        if k == i:
            live.daemon.freeze()
            timers.append(threading.Timer(0.9, live.daemon.thaw))
            timers[-1].start()

    inst = daemon_installations[kind]
    try:
        res = _run(inst, tmp_path, STD, timeout=0.5, before_step=freeze_briefly)
        assert res.finding is None and res.served, (res.finding, res.outcomes[-3:])
        n, longest = res.slow["SET_MEM_TABLE"]
        assert n == 1 and 0.8 < longest < 2.5 and len(res.slow) == 1, res.slow
        res = _run(inst, tmp_path, STD, timeout=0.5, hang_grace=0, before_step=freeze_briefly)
        assert res.finding is not None and res.finding.cls == "SET_MEM_TABLE:hang"
        assert res.slow == {}
    finally:
        for t in timers:
            t.join()


def test_slow_replies_of_several_jobs_add_up():
    """Jobs' slow-reply tables merge as counts that add and the longest wait of any."""
    from fuseproto.fuzz.forensics import slow_note
    from fuseproto.fuzz.jobs import _merge_value

    merged = _merge_value("slow", [{"GET_FEATURES": [1, 0.7]},
                                   {"GET_FEATURES": [2, 0.6], "probe FUSE_INIT": [1, 1.1]}, {}])
    assert merged == {"GET_FEATURES": [3, 0.7], "probe FUSE_INIT": [1, 1.1]}
    note = slow_note(merged)
    assert note is not None and note.startswith("4 slow replies") and "GET_FEATURES 3" in note
    assert slow_note({}) is None


def test_bounded_campaign_and_replay(daemon_installations, tmp_path):
    for kind, inst in daemon_installations.items():
        store = FindingStore(tmp_path / kind)
        st = cp.fuzz_control_plane(inst, seconds=60, store=store, seed=0, max_programs=40,
                                   shrink_seconds=1.0)
        assert st.programs == 40 and st.error is None, (kind, st.error)
        assert st.served >= 1 and len(st.classes) > 15
        for f in st.findings:
            doc = json.loads(Path(f.reproducer).read_text())
            assert doc["target"] == "control_plane" and doc["program"]
            assert f.signature.split(":")[1] == "control"
        crashes = [f for f in st.findings if f.kind == "crash"]
        if crashes:
            doc = json.loads(Path(crashes[0].reproducer).read_text())
            again = cp.replay_control(doc, inst)
            assert again.finding is not None and again.finding.finding == "crash"


def test_programs_steer_by_daemon_edges_on_an_instrumented_daemon(tmp_path):
    """On c-asan-cov the control programs read the edge map (counted, steering); the
    shrinker's runs are absorbed, not credited to the next program."""
    from fixtures_daemons import built_installation

    inst = built_installation("c-asan-cov")
    st = cp.fuzz_control_plane(inst, seconds=60, store=FindingStore(tmp_path), seed=0,
                               max_programs=12, shrink_seconds=0.5)
    assert st.programs == 12 and st.error is None, st.error
    e = st.edges
    assert e["feedback"] == "coverage" and e["guards"] > 5000 and e["edges"] > 1000, e
    assert st.corpus_size >= 2  # the standard program and at least one that lit edges

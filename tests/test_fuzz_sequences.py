"""Stateful sequence programs, reproducer shrinking and --virtiofsd, against the real daemons."""

from __future__ import annotations

import json
import mmap
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from construct import Container

from fuseproto import daemons
from fuseproto.fuzz import sequences, shrink
from fuseproto.fuzz.forensics import Outcome, outcome_signature
from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.fuzz.replay import replay_daemon
from fuseproto.fuzz.seeds import INIT_FLAGS
from fuseproto.fuzz.sequences import Step
from fuseproto.session import Session
from fuseproto.wire import codec, structs
from fuseproto.wire.constants import InitFlags
from fuseproto.wire.constants import fuse_opcode as O

_IN = structs.FAST["fuse_in_header"]


def _deep_program() -> list[Step]:
    rng = random.Random(0)
    init = sequences.init_step(rng)
    init.fields.minor = 46
    return [
        init,
        Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1),
        Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=-1),
        Step(O.FUSE_READ, Container(fh=-1, offset=0, size=4096, read_flags=0, lock_owner=0,
                                    flags=0), node=-1),
        Step(O.FUSE_SETUPMAPPING, Container(fh=-1, foffset=0, len=2 << 20, flags=1,
                                            moffset=0), node=-1),
        # A REMOVEMAPPING whose count lies (3 said, 1 sent), and a device-node MKNOD that
        # sanitize() must turn into a regular file.
        Step(O.FUSE_REMOVEMAPPING, Container(count=3, entries=[Container(moffset=0,
                                                                         len=2 << 20)]),
             node=-1),
        Step(O.FUSE_MKNOD, Container(mode=0o060600, rdev=0x0801, umask=0, name=b"sda"), node=1),
        Step(O.FUSE_GETATTR, Container(getattr_flags=0, fh=0), node=-1, group=7),
        Step(O.FUSE_STATFS, Container(), node=1, group=7),
    ]


def test_programs_mutate_structurally_and_roundtrip_json():
    rng = random.Random(3)
    progs = [sequences.random_program(rng) for _ in range(20)]
    assert all(p[0].op == O.FUSE_INIT for p in progs)
    lens, ops = set(), set()
    for p in progs:
        for _ in range(20):
            p = sequences.mutate_program(p, rng)
            lens.add(len(p))
            ops.update(s.op for s in p)
            again = sequences.program_from_json(json.loads(json.dumps(
                sequences.program_to_json(p))))
            assert sequences.program_to_json(again) == sequences.program_to_json(p)
    assert len(lens) > 5 and {O.FUSE_SETUPMAPPING, O.FUSE_REMOVEMAPPING, O.FUSE_INTERRUPT,
                              O.FUSE_BATCH_FORGET, O.FUSE_DESTROY} <= ops


def _init_exchange(offer_minor: int, offer_flags: int, reply_minor: int, reply_flags: int,
                   unique: int) -> tuple[bytes, bytes]:
    f, f2 = InitFlags(offer_flags).words()
    req = codec.encode_request(O.FUSE_INIT, Container(
        major=7, minor=offer_minor, max_readahead=131072, flags=f, flags2=f2,
        unused=[0] * 11), unique=unique)
    f, f2 = InitFlags(reply_flags).words()
    reply = codec.encode_reply(O.FUSE_INIT, Container(
        major=7, minor=reply_minor, max_readahead=131072, flags=f, max_background=16,
        congestion_threshold=12, max_write=1 << 20, time_gran=1, max_pages=256,
        map_alignment=12, flags2=f2, max_stack_depth=0, request_timeout=0, unused=[0] * 11),
        unique=unique)
    return req, reply


_FEWER = int(InitFlags.FUSE_ASYNC_READ | InitFlags.FUSE_MAX_PAGES | InitFlags.FUSE_INIT_EXT)
_SETXATTR_EXT = int(InitFlags.FUSE_SETXATTR_EXT)


@pytest.mark.parametrize(("offer_minor", "offer_flags", "reply_minor", "reply_flags"), [
    (46, INIT_FLAGS, 46, _FEWER),  # the reply grants fewer flags than offered
    (46, INIT_FLAGS & ~_SETXATTR_EXT, 46, INIT_FLAGS),  # ... a flag that was not offered
    (46, INIT_FLAGS, 31, INIT_FLAGS),  # ... a lower minor
    (38, INIT_FLAGS, 46, _FEWER),  # the offer's minor is the lower one
])
def test_harness_and_session_agree_on_init(offer_minor, offer_flags, reply_minor, reply_flags):
    """The live-daemon harness negotiates INIT by the session's rule (one function,
    session.negotiate_init): same minor, and the reply's flags as the kernel takes them --
    also a granted flag that was not offered (SETXATTR_EXT changes SETXATTR's layout)."""
    req, reply = _init_exchange(offer_minor, offer_flags, reply_minor, reply_flags, 2)
    session = Session()
    session.feed_request(req)
    session.feed_reply(reply)
    inst = daemons.Installation(kind="c", version="none", root="/nonexistent",
                                binary="/nonexistent/virtiofsd")
    h = DaemonHarness(inst, setup=False)  # never started: no daemon, no directory
    try:
        neg = h.learn_init(codec.decode_request(req, h.minor, flags=h.flags), reply)
        assert neg is not None
        assert (h.minor, h.flags) == (session.minor, int(session.flags))
    finally:
        h.close()
    assert h.minor == min(offer_minor, reply_minor)
    assert h.flags == reply_flags
    # An error reply settles nothing: the harness keeps what it had, as the session does.
    err = codec.encode_reply(O.FUSE_INIT, None, unique=4, error=-71)
    assert h.learn_init(None, err) is None and h.flags == reply_flags


@pytest.mark.daemon
def test_program_goes_deep_with_ids_from_replies(daemon_installations, no_leaks):
    """Node id and fh come from the daemon's replies: READ succeeds, the mappings reach the
    daemon's handler (both answer ENOSYS: neither implements DAX), MKNOD is defused, and
    the grouped pair shares one kick."""
    for kind, inst in daemon_installations.items():
        sent: list[bytes] = []
        with DaemonHarness(inst, setup=False, history=1000,
                                     on_send=lambda h, d, sent=sent: sent.append(d)) as h:
            res = sequences.run_program(h, _deep_program())
            items = list(h.history)
        classes = [o.cls for o in res.outcomes]
        assert res.fatal is None, (kind, classes)
        assert classes[0].startswith("FUSE_INIT:0") and classes[3].startswith("FUSE_READ:0:")
        assert sequences.DEPTHS[res.depth] == "mapping-sent", kind
        assert [a for _, _, a in res.mappings] == ["-38", "-38"], (kind, res.mappings)
        mk = next(d for d in sent if _IN.parse(d, 0)["opcode"] == O.FUSE_MKNOD)
        assert structs.FAST["fuse_mknod_in"].parse(mk, 40)["mode"] == 0o100600
        assert items[-1].get("batch") == items[-2].get("batch") is not None


def _stale_interrupt_kick(installation) -> list[Outcome]:
    init = sequences.init_step(random.Random(0))
    init.fields.minor = 46
    prog = [init,
            Step(O.FUSE_INTERRUPT, Container(unique=12345), group=1),
            Step(O.FUSE_STATFS, Container(), node=1, group=1)]
    with DaemonHarness(installation, setup=False) as h:
        return sequences.run_program(h, prog).outcomes


@pytest.mark.daemon
def test_stale_interrupt_on_the_same_kick_segfaults_the_c_daemon(daemon_installations):
    """Finding of the sequence mode, kept as a test: QEMU 7.2's C virtiofsd answers a
    stale INTERRUPT in the next request's buffer when they come one by one (the known
    wrong-unique), but with both in flight on one kick it dies of SIGSEGV."""
    outs = _stale_interrupt_kick(daemon_installations["c"])
    assert outs[-1].finding == "crash" and outs[-1].evidence["signal"] == "SIGSEGV"
    assert outcome_signature("c", outs[-1]) == \
        "crash:c:SIGSEGV:after FUSE_INTERRUPT"
    rust = _stale_interrupt_kick(daemon_installations["rust"])
    assert not [o for o in rust if o.finding], [o.cls for o in rust]


def _padded_doc(h: DaemonHarness, core: list[bytes], label: str = "c") -> dict:
    """20 harmless requests around ``core``, with ``core``'s finding signature."""
    pad = []
    for i in range(20):
        h.unique += 2
        pad.append(codec.encode_request(O.FUSE_GETATTR if i % 2 else O.FUSE_STATFS,
                                        Container(getattr_flags=0, fh=0) if i % 2
                                        else Container(), unique=h.unique, nodeid=1))
    reqs = pad[:13] + core + pad[13:]
    return {"target": "virtiofsd", "daemon": label, "requests": [
        {"hex": r.hex(), "variant": 0} for r in reqs]}


@pytest.mark.daemon
def test_shrink_padded_known_findings_to_their_core(daemon_installations, tmp_path, no_leaks):
    """The short-header SIGABRT and the stale INTERRUPT, each padded with 20 irrelevant
    requests, shrink to <= 3 requests that still reproduce (CLI shrink, then replay)."""
    inst = daemon_installations["c"]
    with DaemonHarness(inst) as h:
        h.unique += 2
        short = codec.encode_request(O.FUSE_GETATTR, Container(getattr_flags=0, fh=0),
                                     unique=h.unique, nodeid=1)[:24]
        intr = codec.encode_request(O.FUSE_INTERRUPT, Container(unique=12345), unique=801)
        h.unique += 2
        statfs = codec.encode_request(O.FUSE_STATFS, Container(), unique=h.unique, nodeid=1)
        docs = {"short": _padded_doc(h, [short]), "interrupt": _padded_doc(h, [intr, statfs])}
    docs["short"]["finding"] = {"signature": "crash:c:SIGABRT:fuse_virtio.c:497 "
                                "fv_queue_worker: Assertion '0' failed"}
    # The stale INTERRUPT's signature is whichever of its two known faces the padded
    # replay shows (wrong unique, or the double-reply abort).
    outs = replay_daemon(docs["interrupt"], inst)
    sigs = [outcome_signature("c", o) for o in outs if o.finding]
    assert sigs, [o.cls for o in outs]
    docs["interrupt"]["finding"] = {"signature": sigs[0]}
    for name, doc in docs.items():
        path = tmp_path / f"crash-{name}.json"
        path.write_text(json.dumps(doc))
        proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "shrink", str(path),
                               "--seconds", "20", "--json"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = json.loads(proc.stdout)
        assert got["requests_before"] == 21 + (name == "interrupt")
        assert got["requests_after"] <= 3, (name, got)
        mini = shrink.min_path(path)
        assert got["minimized"] == str(mini) and mini.exists()
        assert len(json.loads(mini.read_text())["requests"]) == got["requests_after"]
        rp = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "replay", str(mini),
                             "--json"], capture_output=True, text=True, timeout=120)
        verdict = json.loads(rp.stdout)
        assert verdict["reproduced"], (name, verdict)


@pytest.fixture
def wrapper(daemon_installations, tmp_path) -> Path:
    """A shell script that execs the installed C virtiofsd (a user's own build, say)."""
    argv = daemon_installations["c"].argv()
    path = tmp_path / "my-virtiofsd.sh"
    path.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in argv) + ' "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.daemon
def test_campaign_with_virtiofsd_path_names_it_in_the_report(wrapper, tmp_path, no_leaks):
    assert daemons.detect_kind(str(wrapper)) == "c"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "campaign",
                           "--virtiofsd", str(wrapper), "--target", "session",
                           "--engine", "inprocess", "--seconds", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert str(wrapper) in md and "`c:my-virtiofsd.sh`" in md
    j = json.loads((out / "report.json").read_text())
    d = j["daemons"][0]
    assert d["binary"] == str(wrapper) and d["version"].startswith("virtiofsd version 7.2")
    seq = j["sequences"]["c:my-virtiofsd.sh"]
    assert seq["programs"] > 0 and seq["mappings"] and "## Sequences" in md
    (t,) = [t for t in j["targets"] if t["target"] == "virtiofsd"]
    assert t["iterations"] > 0 and not t["error"], t
    below = [t for t in j["targets"] if t["engine"] == "below-fuse"]
    assert [t["target"] for t in below] == ["chains", "control_plane"]
    assert all(t["daemon"] == "c:my-virtiofsd.sh" and not t["error"] for t in below), below
    mins = [f for f in j["findings"] if f["minimized"]]
    assert mins and all(os.path.exists(f["minimized"]) for f in mins)
    assert mins[0]["minimized"] in md


@pytest.mark.daemon
def test_dax_record_from_a_virtiofsd_path(wrapper, tmp_path, no_leaks, capsys):
    from fuseproto.cli import main

    trace = tmp_path / "reads.jsonl"
    assert main(["dax", "record", "--virtiofsd", str(wrapper), "--scale", "0.05",
                 str(trace)]) == 0
    assert "c virtiofsd" in capsys.readouterr().out and trace.stat().st_size > 0


def test_program_reaches_mapping_accepted_on_c_dax(no_leaks):
    """Against our c-dax daemon the harness starts it with -o dax and a backend channel
    into a real window: the deep program's SETUPMAPPING is accepted (the backend-channel
    record holds the FS_MAP of the file), REMOVEMAPPING's lying count is refused, and the
    depth reached is "mapping-accepted" (the packaged daemons stop at "mapping-sent")."""
    from fixtures_daemons import built_installation

    inst = built_installation("c-dax")
    with DaemonHarness(inst, setup=False, history=1000) as h:
        assert h.has_dax and h.window is not None
        res = sequences.run_program(h, _deep_program())
        events = list(h.dax.events)
        mapped = h.window.mapped_pages()
    assert res.fatal is None, [o.cls for o in res.outcomes]
    assert sequences.DEPTHS[res.depth] == "mapping-accepted"
    answers = [a for _, _, a in res.mappings]
    assert answers[0] == "0" and answers[1] != "0", res.mappings  # count 3 but 1 entry
    assert any(e.result == 0 for e in events), events  # FS_MAP carried out
    assert mapped == (2 << 20) // mmap.PAGESIZE  # the 2 MiB chunk is in the window


# Each planted daemon-side DAX bug (fuseproto/daemons/csrc/dax/0001-dax.patch) and the
# invariant the live fuzzer must report it under.
DAX_BUG_CATCHES = {
    "c-dax-bug-align": "alignment",  # FS_MAP with a misaligned file offset (record)
    "c-dax-bug-window-end": "inside_window",  # FS_MAP one page past the window (record)
    "c-dax-bug-count": "accepted_count_mismatch",  # count != entries answered 0
    "c-dax-bug-access": "accepted_write_on_read_only_handle",  # write via an O_RDONLY fh
    "c-dax-bug-unmap": "accepted_unmap_left_mapped",  # REMOVEMAPPING left a page mapped
}


def _dax_findings(variant, tmp_path, programs):
    from fixtures_daemons import built_installation

    from fuseproto.fuzz.findings import FindingStore

    stats = sequences.fuzz_sequences(
        built_installation(variant), seconds=240, store=FindingStore(tmp_path / variant),
        seed=1, max_programs=programs, feedback="outcome", label=variant)
    assert stats.sequences["deepest"] == "mapping-accepted", variant
    assert stats.sequences["programs"] == programs, (variant, stats.sequences)
    return stats, [f for f in stats.sequences["findings"] if f.startswith("dax:")]


def test_dax_oracles_accept_the_clean_daemon(tmp_path):
    """Live DAX fuzzing on clean c-dax: after every program the backend-channel record is
    checked and every accepted mapping request is judged against the protocol and the
    real window; 250 programs (mostly mapping-aware ones) give no DAX finding, and the
    mapping shapes the report shows include accepted and refused ones."""
    stats, found = _dax_findings("c-dax", tmp_path, 250)
    assert found == []
    maps = stats.sequences["mappings"]
    assert any(k.startswith("FUSE_SETUPMAPPING aligned-2M in window") and k.endswith(": 0")
               for k in maps), maps
    assert any("past the window end by one page" in k and k.endswith(": -22") for k in maps), maps
    assert any(k.startswith("FUSE_REMOVEMAPPING") and "lying count" in k and k.endswith(": -22")
               for k in maps), maps


@pytest.mark.parametrize("variant", sorted(DAX_BUG_CATCHES))
def test_dax_oracles_catch_each_daemon_side_bug(variant, tmp_path):
    """Each variant of our DAX patch with a realistic bug is caught by the live DAX fuzzing
    (mapping-aware programs, seed 1) within 80 programs (each was caught within 30), under
    the invariant that names the bug."""
    _stats, found = _dax_findings(variant, tmp_path, 80)
    assert f"dax:{variant}:{DAX_BUG_CATCHES[variant]}" in found, found


def test_campaign_report_shows_accepted_and_refused_mapping_shapes_on_c_dax(tmp_path):
    """A campaign on c-dax: the report's Sequences section has a row per mapping shape
    with the accepted count and the refusals by errno; in-window 4 KiB mappings are
    accepted, ones reaching one page past the window refused with EINVAL."""
    from fixtures_daemons import built_installation

    built_installation("c-dax")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "campaign",
                           "--daemon", "c-dax", "--target", "session", "--engine",
                           "inprocess", "--seconds", "16", "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
            for line in md.splitlines() if line.startswith("| FUSE_")}
    inside = [r for k, r in rows.items() if k.startswith("FUSE_SETUPMAPPING aligned-4K in window")]
    assert inside and sum(int(r[0]) for r in inside) > 0, md
    past = [r for k, r in rows.items() if "past the window end by one page" in k]
    assert past and all(r[0] == "0" for r in past) and any("-22 x" in r[1] for r in past), md


def test_a_program_on_an_acl_config_offers_the_flags_it_demands(daemon_installations, no_leaks):
    """With a daemon config that demands INIT flags (POSIX ACLs: the daemon refuses an INIT
    without FUSE_POSIX_ACL / FUSE_DONT_MASK), the program's INIT offers them, and the
    daemon serves the rest of the program; without the config the INIT stays as written."""
    from fuseproto.daemons.options import GENES, DaemonConfig

    init = sequences.init_step(random.Random(0))
    init.fields.minor = 46
    init.fields.flags, init.fields.flags2 = InitFlags(INIT_FLAGS).words()
    prog = [init, Step(O.FUSE_GETATTR, Container(getattr_flags=0, fh=0), node=1)]
    for kind, inst in daemon_installations.items():
        acl = [i for i, (name, _) in enumerate(GENES[kind]) if name == "xattr"][0]
        choice = [0] * len(GENES[kind])
        choice[acl] = [a.label for a in GENES[kind][acl][1]].index("posix_acl")
        cfg = DaemonConfig(kind, tuple(choice))
        sent: list[bytes] = []
        with DaemonHarness(inst, setup=False, config=cfg,
                           on_send=lambda h, d, sent=sent: sent.append(d)) as h:
            res = sequences.run_program(h, prog)
        classes = [o.cls for o in res.outcomes]
        assert classes[0].startswith("FUSE_INIT:0") and classes[1].startswith("FUSE_GETATTR:0"), \
            (kind, classes)
        body = structs.FAST["fuse_init_in"].parse(sent[0], 40)
        offered = InitFlags.from_words(body["flags"], body.get("flags2", 0))
        assert offered & InitFlags.FUSE_POSIX_ACL and offered & InitFlags.FUSE_DONT_MASK


def test_fuzz_sequences_with_configs_varies_and_credits_them(tmp_path, no_leaks):
    from fuseproto.fuzz.findings import FindingStore

    inst = daemons.find("c") or daemons.install("c")
    st = sequences.fuzz_sequences(inst, seconds=60, store=FindingStore(tmp_path),
                                  max_programs=12, configs=True, seed=3)
    assert st.sequences["programs"] == 12
    daemons_used = st.configs["daemons"]
    assert sum(daemons_used.values()) >= 12 and len(daemons_used) > 1, daemons_used

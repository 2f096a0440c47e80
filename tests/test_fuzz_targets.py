"""The in-process fuzz targets: clean code passes, planted bugs are caught."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import fuzz_faults
import pytest

from fuseproto.errors import DecodeError
from fuseproto.fuzz import campaign, engine, inputs, mutate, oracles, registry
from fuseproto.fuzz.findings import FindingStore
from fuseproto.wire import codec

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("name", ["wire_decode", "session"])
def test_checked_in_corpus_passes_the_oracle(name):
    files = sorted((ROOT / "corpus" / name).iterdir())
    assert len(files) > 40
    for f in files:
        registry.get_target(name).check(f.read_bytes())


def test_corpus_and_dictionaries_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_corpus.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["wire_decode", "session"])
def test_target_finds_nothing_on_clean_code(name, tmp_path):
    st = engine.run_loop(registry.get_target(name), iterations=3000, seed=7,
                         store=FindingStore(tmp_path))
    assert st.iterations == 3000
    assert st.findings == [], [f.summary for f in st.findings]


def test_request_mutator_keeps_most_outputs_well_formed():
    rng = random.Random(3)
    seeds = [inputs.parse_wire_input(d).message for n, d in registry.get_target(
        "wire_decode").corpus() if n.startswith("req-")]
    ok = changed = 0
    for i in range(600):
        src = seeds[i % len(seeds)]
        out = mutate.mutate_request(src, rng)
        changed += out != src
        try:
            codec.decode_request(out)
            ok += 1
        except DecodeError:
            pass
    assert changed > 500
    # Structure-aware: a good share still passes the codec's checks (hostile, not garbage).
    assert 150 < ok < 590


def test_wire_oracle_flags_roundtrip_and_escaped_exceptions(monkeypatch):
    look = codec.encode_request(1, {"name": b"a" * 300}, unique=2, nodeid=1)
    data = inputs.build_wire_input(inputs.WIRE_REQUEST, look)
    oracles.check_wire(data)
    monkeypatch.setattr("fuseproto.wire.messages.Name.parse", _raising_parse)
    with pytest.raises(IndexError):
        oracles.check_wire(data)


def _raising_parse(self, buf, off, end, body):
    raise IndexError("planted")


@pytest.mark.parametrize("plus", [False, True])
def test_differential_sees_one_wrong_field_deep_in_a_long_dirent_list(monkeypatch, plus):
    """The fast path and the construct are compared field by field down every record: a
    fast path that gets one field of the 200th of 255 records wrong (the others the same
    objects' values) is a differential finding; clean, the same message passes."""
    from fuseproto.wire import parts

    d = {"ino": 7, "off": 1, "type": 4, "name": b"abc"}
    rec = {"entry_out": {"nodeid": 9}, "dirent": d} if plus else d
    op = 44 if plus else 28  # READDIRPLUS, READDIR
    msg = codec.encode_reply(op, {"entries": [rec] * 255}, unique=2)
    data = inputs.build_wire_input(inputs.WIRE_REPLY, msg, opcode=op)
    monkeypatch.setattr(oracles, "DIFF_EVERY", oracles.DIFF_EVERY)  # restored after
    oracles.set_diff_every(1)
    oracles.check_wire(data)
    original = parts.Dirents.parse

    def parse(self, buf, off, end, body):
        at, body = original(self, buf, off, end, body)
        rec = body["entries"][199]
        (rec["dirent"] if self.plus else rec)["off"] += 1
        return at, body

    monkeypatch.setattr(parts.Dirents, "parse", parse)
    oracles.set_diff_every(1)
    with pytest.raises(oracles.Bug, match="differential"):
        oracles.check_wire(data)


def _plant(monkeypatch, owner, attr, fault) -> None:
    """Apply ``fault`` so that monkeypatch undoes it after the test."""
    original = getattr(owner, attr)
    fault()
    planted = getattr(owner, attr)
    setattr(owner, attr, original)
    monkeypatch.setattr(owner, attr, planted)


def test_planted_decoder_bug_is_caught_in_process(monkeypatch, tmp_path):
    _plant(monkeypatch, fuzz_faults.messages.Name, "parse", fuzz_faults.name_off_by_one)
    st = engine.run_loop(registry.get_target("wire_decode"), iterations=20000, seed=1,
                         store=FindingStore(tmp_path), stop_on_finding=True)
    assert st.findings, "the fuzzer missed the planted off-by-one"
    f = st.findings[0]
    assert f.kind in ("roundtrip", "differential")
    assert Path(f.reproducer).exists() and "fuseproto fuzz replay" in f.replay


def test_planted_session_bug_is_caught_in_process(monkeypatch, tmp_path):
    from fuseproto.session import Session

    _plant(monkeypatch, Session, "feed_reply", fuzz_faults.session_keyerror)
    st = engine.run_loop(registry.get_target("session"), iterations=20000, seed=2,
                         store=FindingStore(tmp_path), stop_on_finding=True)
    assert st.findings and st.findings[0].signature.startswith("KeyError@")


def _violations():
    """(name, change) pairs, each breaking one invariant of Session.check_valid."""
    from fuseproto.wire.constants import fuse_opcode as op

    def req(opcode, unique, body=None):
        return codec.decode_request(codec.encode_request(opcode, body or {}, unique=unique))

    return {
        "more than max_pending": lambda p, i, io: p.update({10 + 2 * k: p[2] for k in range(5)}),
        "unique 0": lambda p, i, io: p.__setitem__(0, p[2]),
        "under another unique": lambda p, i, io: p.__setitem__(8, p[2]),
        "no reply expected": lambda p, i, io: p.__setitem__(5, req(op.FUSE_FORGET, 5)),
        "records disagree": lambda p, i, io: i.clear(),
        "target not in flight": lambda p, i, io: p.pop(2),
        "record names another": lambda p, i, io: setattr(i[3], "target", 99),
        "interrupt unique in flight": lambda p, i, io: p.__setitem__(3, req(op.FUSE_GETATTR, 3)),
    }


@pytest.mark.parametrize("name", sorted(_violations()))
def test_session_invariant_check_fires_on_each_violation(name):
    """The session oracle's invariant (Session.check_valid, after every message) fails
    for a session whose tables break any one of its invariants."""
    from fuseproto.session import Session
    from fuseproto.wire.constants import fuse_opcode as op

    s = Session(max_pending=4)
    s.feed_request(codec.encode_request(op.FUSE_GETATTR, {}, unique=2, nodeid=1))
    s.feed_request(codec.encode_request(op.FUSE_INTERRUPT, {"unique": 2}, unique=3))
    s.check_valid()
    _violations()[name](s._pending, s._interrupts, s._interrupt_of)  # noqa: SLF001
    with pytest.raises(AssertionError, match=_BROKEN[name]):
        s.check_valid()


# The invariant each violation breaks, as check_valid's message names it.
_BROKEN = {
    "more than max_pending": "at most max_pending requests in flight",
    "unique 0": "no request under unique 0",
    "under another unique": "each request under its own unique",
    "no reply expected": "only requests that get a reply are in flight",
    "records disagree": "one interrupt record per interrupted request",
    "target not in flight": "interrupted requests are in flight",
    "record names another": "each interrupt record names the request",
    "interrupt unique in flight": "no interrupt under a unique in flight",
}


def _env_with_fault(fault: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "FUSEPROTO_FUZZ_INJECT": f"fuzz_faults:{fault}"}


@pytest.mark.skipif(campaign.fuzz_dir() is None, reason="needs the fuzz/ directory")
def test_atheris_harness_runs_clean(tmp_path):
    run = campaign.run_atheris("session", 3, tmp_path, seed=5)
    assert run.artifact is None, Path(run.log).read_text()[-2000:]
    assert run.executions > 500 and run.cov > 100


@pytest.mark.skipif(campaign.fuzz_dir() is None, reason="needs the fuzz/ directory")
@pytest.mark.parametrize("name", ["wire_decode", "session"])
def test_atheris_harness_instruments_the_code_under_test_only(name, tmp_path):
    """The decoders and encoders are instrumented, and the session where the target runs
    it; the oracles and mutators, the construct reference and the declaration-only
    modules are not."""
    proc = subprocess.run([sys.executable, str(ROOT / "fuzz" / f"{name}_fuzzer.py"), "-runs=0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = set(re.findall(r"INFO: Instrumenting (\S+)", proc.stderr))
    wire = {f"fuseproto.wire.{m}" for m in ("codec", "parts", "ext")}
    # The session harness runs the session; the wire one leaves out the message tables and
    # the message classes (their edges are the same for every decoded input).
    extra = ({"fuseproto.session", "fuseproto.wire.messages", "fuseproto.wire.decoded"}
             if name == "session" else set())
    assert got == {"fuseproto", "fuseproto.wire"} | wire | extra


@pytest.mark.skipif(campaign.fuzz_dir() is None, reason="needs the fuzz/ directory")
def test_atheris_catches_planted_bug_and_replay_classifies_it(tmp_path):
    env = _env_with_fault("name_off_by_one")
    run = campaign.run_atheris("wire_decode", 30, tmp_path, seed=3, env=env)
    assert run.artifact, Path(run.log).read_text()[-2000:]
    verdict = campaign.classify_artifact(run.artifact, "wire_decode", env)
    assert verdict["reproduced"] and verdict["kind"] in ("roundtrip", "differential")
    # On clean code the same input is fine: the finding is the planted bug.
    clean = campaign.classify_artifact(run.artifact, "wire_decode")
    assert clean["reproduced"] is False


def test_dax_target_clean_on_builtin_managers(tmp_path):
    st = engine.run_loop(registry.get_target("dax"), iterations=1500, seed=5,
                         store=FindingStore(tmp_path))
    assert st.findings == [], [f.summary for f in st.findings]


def test_dax_target_catches_a_broken_plugged_in_manager(monkeypatch, tmp_path):
    """A user's manager given as module:factory (here OSv with FORGET broken) is caught by
    the black-box invariants: a reused node id reads the old file's bytes."""
    from fuseproto.fuzz.dax_target import ENV_MANAGER

    monkeypatch.setenv(ENV_MANAGER, "fuzz_faults:osv_no_forget")
    # Seed 7 catches it within ~50 inputs (seeds 1-8: 52..1,516 inputs, 1-41 s here).
    st = engine.run_loop(registry.get_target("dax"), iterations=20000, seed=7,
                         store=FindingStore(tmp_path), stop_on_finding=True)
    assert st.findings and st.findings[0].signature == "invariant:read_bytes"


def test_run_options_after_the_target_are_ours_the_rest_libfuzzers(tmp_path):
    """``fuseproto fuzz run wire_decode --seconds 60`` (as fuzz/README.md documents it):
    options after the target are ``run``'s own; unknown ones and all after ``--`` go to
    libFuzzer."""
    from fuseproto.cli import build_parser
    from fuseproto.commands.fuzz import split_run_args

    args = build_parser().parse_args(["fuzz", "run", "wire_decode", "--seconds", "7", "-runs=5",
                                      "--out", str(tmp_path), "corpus_dir", "--seed=3", "--",
                                      "--seconds", "-dict=x"])
    assert split_run_args(args) == ["-runs=5", "corpus_dir", "--seconds", "-dict=x"]
    assert (args.seconds, args.out, args.seed, args.target) == (7.0, str(tmp_path), 3,
                                                                "wire_decode")


@pytest.mark.parametrize("argv, ours, libfuzzer", [
    # options before the target
    (["--seconds", "5", "--jobs", "2", "wire_decode", "-runs=3"],
     {"seconds": 5.0, "jobs": 2}, ["-runs=3"]),
    # a live target's options after it, --opt=value spelling
    (["virtiofsd", "--daemon", "rust", "--sequences", "--seconds=3", "--jobs=2", "--no-corpus"],
     {"seconds": 3.0, "jobs": 2, "daemon": "rust", "sequences": True, "no_corpus": True}, []),
    # some before, some after; everything after -- is libFuzzer's, even our names
    (["--daemon", "rust", "virtiofsd", "--feedback", "outcome", "--", "-x"],
     {"daemon": "rust", "feedback": "outcome", "seconds": 60.0}, ["-x"]),
    (["session", "-runs=3", "--seconds", "4", "--", "--jobs", "9"],
     {"seconds": 4.0, "jobs": 1}, ["-runs=3", "--jobs", "9"]),
])
def test_run_options_in_any_order(argv, ours, libfuzzer):
    from fuseproto.cli import build_parser
    from fuseproto.commands.fuzz import split_run_args

    args = build_parser().parse_args(["fuzz", "run", *argv])
    assert split_run_args(args) == libfuzzer
    assert {k: getattr(args, k) for k in ours} == ours


@pytest.mark.skipif(campaign.fuzz_dir() is None, reason="needs the fuzz/ directory")
def test_documented_run_command_works(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "run", "wire_decode",
                           "--seconds", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # libFuzzer ran for our --seconds (not its default), on the run's own corpus directory.
    done = re.search(r"Done \d+ runs in (\d+) second", proc.stderr)
    assert done and int(done.group(1)) <= 10, proc.stderr[-2000:]
    assert any((tmp_path / "corpus" / "wire_decode").iterdir())


def test_help_after_the_target_is_help_not_a_run():
    """``fuseproto fuzz run virtiofsd --help`` prints run's help and exits 0 at once (it
    used to hand --help to libFuzzer and fuzz the C daemon for a minute); after ``--`` a
    flag still goes to libFuzzer."""
    from fuseproto.cli import build_parser
    from fuseproto.commands.fuzz import split_run_args

    proc = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "run", "virtiofsd",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: fuseproto fuzz run" in proc.stdout, proc.stderr
    assert "--seconds" in proc.stdout
    args = build_parser().parse_args(["fuzz", "run", "wire_decode", "--", "-help=1"])
    assert split_run_args(args) == ["-help=1"]

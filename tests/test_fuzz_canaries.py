"""Escape canaries: every check fires on a planted breach, stays quiet on clean bounded
runs against both real daemons, and catches a real escape (Rust without a sandbox)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from construct import Container

from fuseproto import daemons
from fuseproto.client import Client
from fuseproto.fuzz import canaries, sequences, virtiofsd
from fuseproto.fuzz.canaries import CANARY_DIR, CANARY_FILE, Canaries
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.forensics import outcome_signature
from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.fuzz.seeds import INIT_FLAGS
from fuseproto.fuzz.sequences import Step
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode as O

INNER = os.path.join(CANARY_DIR, CANARY_FILE)


@pytest.fixture
def planted():
    base = tempfile.mkdtemp(prefix="fuseproto-canary-test-")
    shared = os.path.join(base, "shared")
    os.mkdir(shared)
    try:
        yield Canaries.plant(base, shared)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _kinds(c: Canaries) -> set[tuple[str, str]]:
    out = {(b.kind, b.canary) for b in c.check()}
    c.rearm()
    return out


def test_each_canary_check_fires_and_our_own_checks_touch_nothing(planted):
    c, base = planted, planted.base
    assert c.atime_works  # this machine's ext4 (relatime) moves an aged atime on a read
    assert os.readlink(os.path.join(c.shared, "escape")) == "../" + CANARY_FILE
    assert os.readlink(os.path.join(c.shared, "escape-abs")) == os.path.join(base, CANARY_FILE)
    # Checking (contents and listings read with O_NOATIME) and re-arming change nothing.
    for _ in range(3):
        assert c.check() == []
        c.rearm()
    with open(os.path.join(base, CANARY_FILE), "rb") as f:
        f.read(1)
    assert _kinds(c) == {("read", CANARY_FILE)}
    os.listdir(os.path.join(base, CANARY_DIR))
    assert _kinds(c) == {("read", CANARY_DIR)}
    with open(os.path.join(base, INNER), "ab") as f:
        f.write(b"x")
    assert _kinds(c) == {("written", INNER)}
    os.truncate(os.path.join(base, CANARY_FILE), 0)
    assert ("written", CANARY_FILE) in _kinds(c)
    os.link(os.path.join(base, INNER), os.path.join(base, CANARY_DIR, "hard"))
    assert {("linked", INNER), ("created", os.path.join(CANARY_DIR, "hard")),
            ("written", CANARY_DIR)} <= _kinds(c)
    open(os.path.join(base, "dropped"), "w").close()
    assert _kinds(c) == {("created", "dropped")}
    os.rename(os.path.join(base, CANARY_FILE), os.path.join(base, "moved"))
    assert _kinds(c) == {("renamed", CANARY_FILE)}
    os.unlink(os.path.join(base, INNER))
    assert ("deleted", INNER) in _kinds(c)
    assert c.check() == []


def test_replies_are_scanned_for_tokens(planted):
    c = planted
    tok = c.tokens[CANARY_FILE]
    # A read at any offset of at least two tokens' worth of the file carries a whole one.
    content = Path(c.base, CANARY_FILE).read_bytes()
    for off in (0, 1, 17, len(tok)):
        hit = c.scan(b"\x10\0\0\0" + content[off:off + 2 * (len(tok) + 1)])
        assert hit is not None and hit.kind == "reply" and hit.canary == CANARY_FILE
    assert c.scan(bytes(range(256)) * 256) is None
    assert c.normalize(c.base.encode() + b"/canary") == b"$BASE/canary"


def test_escape_attempts_in_programs():
    """Programs try `..`, absolute names, names with `/`, the symlinks out, and handles or
    node ids of other files (an older pool entry: -2, -3) or guessed ones."""
    rng = random.Random(11)
    steps = [s for _ in range(300) for s in sequences.random_program(rng)]
    names = {bytes(s.fields.get("name")) for s in steps if isinstance(s.fields.get("name"), bytes)}
    assert {b"..", b"escape", b"escape-dir", b"escape-abs"} <= names
    assert any(n.startswith(b"/") for n in names) and any(b"/" in n[1:] for n in names)
    assert {bytes(s.fields["link"]) for s in steps if s.op == O.FUSE_SYMLINK} & set(
        canaries.SYMLINK_TARGETS)
    foreign = [s for s in steps if s.op in (O.FUSE_READ, O.FUSE_WRITE)
               and isinstance(s.fields.get("fh"), int) and s.fields["fh"] <= -2]
    assert foreign
    ops = {s.op for s in steps}
    assert {O.FUSE_RENAME, O.FUSE_LINK, O.FUSE_UNLINK, O.FUSE_MKDIR, O.FUSE_READLINK} <= ops


def _req(h: DaemonHarness, op: int, body, nodeid: int) -> bytes:
    h.unique += 2
    return codec.encode_request(op, body, unique=h.unique, nodeid=nodeid, uid=0, gid=0,
                                pid=1, minor=h.minor, flags=h.flags)


@pytest.mark.daemon
def test_a_daemon_reading_a_canary_is_reported(daemon_installations):
    """Planted: canaries *inside* the share (canaries="inside", tests only), so a daemon
    can reach them: reading one through it is caught twice, by the reply's token and by
    the access time."""
    for kind, inst in daemon_installations.items():
        with DaemonHarness(inst, canaries="inside") as h:
            node = h.client.lookup(1, CANARY_FILE).nodeid
            fh = h.client.open(node, os.O_RDONLY).fh
            out = h.send(_req(h, O.FUSE_READ, Container(fh=fh, offset=5, size=4096,
                                                        read_flags=0, lock_owner=0, flags=0),
                              node))
            assert out.finding == "escape", (kind, out)
            assert outcome_signature(kind, out) == f"escape:{kind}:reply:{CANARY_FILE}"
            assert {(o.evidence["breach"], o.evidence["canary"])
                    for o in h.check_canaries("FUSE_READ")} == {("read", CANARY_FILE)}
            assert h.check_canaries() == []  # reported once


@pytest.mark.daemon
def test_loops_report_a_canary_touched_between_inputs(daemon_installations, tmp_path):
    """Planted from the test: the canary beside the share is touched while a program or
    the single-request loop runs; the sequence runner and the loop both report it."""
    inst = daemon_installations["c"]

    def touch(h: DaemonHarness, data: bytes) -> None:
        with open(os.path.join(h.canaries.base, CANARY_FILE), "ab") as f:
            f.write(b"!")

    with DaemonHarness(inst, setup=False, on_send=touch) as h:
        init = sequences.init_step(random.Random(0))
        init.fields.minor = 46
        res = sequences.run_program(h, [init, Step(O.FUSE_STATFS, Container(), node=1)])
        assert [(o.finding, o.evidence["breach"]) for o in res.escapes] == [("escape", "written")]
    store = FindingStore(tmp_path)
    st = virtiofsd.fuzz_daemon(inst, seconds=30, store=store, max_requests=5, on_send=touch)
    assert f"escape:c:written:{CANARY_FILE}" in [f.signature for f in st.findings]


@pytest.mark.daemon
def test_clean_bounded_runs_leave_the_canaries_alone(daemon_installations, tmp_path):
    """Fixed-seed sequence programs (with their escape attempts) and single requests on
    both daemons: no canary breach."""
    for kind, inst in daemon_installations.items():
        store = FindingStore(tmp_path / kind)
        sq = sequences.fuzz_sequences(inst, seconds=60, store=store, seed=3, max_programs=40)
        one = virtiofsd.fuzz_daemon(inst, seconds=60, store=store, seed=3, max_requests=300)
        assert sq.sequences["programs"] == 40 and one.requests >= 300
        escapes = [f.signature for f in store if f.kind == "escape"]
        assert escapes == [], (kind, escapes)


@pytest.mark.daemon
def test_rust_without_a_sandbox_creates_and_deletes_outside_the_share(daemon_installations):
    """Finding, kept as a test: virtiofsd 1.13.2 started with ``--sandbox none`` (not how
    the fuzzer runs it) takes an absolute name in MKNOD / MKDIR / UNLINK as a host path:
    it makes entries beside the share and deletes the canary in canary-dir (while it
    answers ENOENT to the MKNOD and MKDIR). The C daemon refuses every such name (EINVAL).
    The canaries see it; only names inside this test's own directory are used."""
    seen = {}
    for kind, inst in daemon_installations.items():
        base = tempfile.mkdtemp(prefix="fuseproto-nosandbox-")
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        # fuseproto.daemons.Daemon runs the Rust daemon with --sandbox none (the C one
        # chroots itself); the fuzzer's SandboxedDaemon makes it chroot.
        d = daemons.Daemon(inst, shared, os.path.join(base, "vhost.sock"))
        assert kind != "rust" or "none" in d.argv()
        try:
            can = Canaries.plant(base, shared)
            d.start()
            t = VhostUserTransport(d.socket_path, daemon=d, timeout=5.0)
            try:
                c = Client(t, timeout=5.0, uid=0, gid=0, pid=1)
                c.init(flags=INIT_FLAGS)
                can.rearm()
                errs = []
                for op, body in (
                        (O.FUSE_MKNOD, Container(mode=0o100644, rdev=0, umask=0o22,
                                                 name=f"{base}/mknod-out".encode())),
                        (O.FUSE_MKDIR, Container(mode=0o755, umask=0o22,
                                                 name=f"{base}/mkdir-out".encode())),
                        (O.FUSE_UNLINK, Container(name=f"{base}/{INNER}".encode()))):
                    try:
                        c.call(op, body, nodeid=1)
                        errs.append(0)
                    except OSError as e:
                        errs.append(e.errno)
                seen[kind] = (errs, {(b.kind, b.canary) for b in can.check()})
            finally:
                t.close()
        finally:
            d.stop()
            shutil.rmtree(base, ignore_errors=True)
    assert seen["c"] == ([22, 22, 22], set())
    errs, breaches = seen["rust"]
    assert {("created", "mknod-out"), ("created", "mkdir-out"), ("deleted", INNER)} <= breaches
    assert errs[2] == 0


@pytest.mark.daemon
def test_control_plane_and_chain_targets_check_the_canaries(daemon_installations, tmp_path):
    """The vhost-user targets' daemons (rawfront.LiveDaemon) have canaries too: a canary
    touched during a control-plane program is that program's finding, and a chain
    session's escapes() sees one touched between inputs."""
    from fuseproto.fuzz import chains, control_plane
    from fuseproto.fuzz.rawfront import standard_program

    inst = daemon_installations["c"]

    def touch(i: int, live) -> None:
        if i == 3:
            with open(os.path.join(live.canaries.base, INNER), "ab") as f:
                f.write(b"!")

    res = control_plane.run_control_program(standard_program(), inst, workdir=str(tmp_path),
                                            before_step=touch)
    assert res.finding is not None and res.finding.finding == "escape"
    assert res.finding.evidence["canary"] == INNER
    clean = control_plane.run_control_program(standard_program(), inst,
                                              workdir=str(tmp_path))
    assert clean.finding is None
    s = chains.ChainSession(inst, str(tmp_path))
    try:
        assert s.live.escapes("x") == []
        os.rename(os.path.join(s.live.canaries.base, CANARY_FILE),
                  os.path.join(s.live.canaries.base, "gone"))
        assert [o.evidence["breach"] for o in s.live.escapes("x")] == ["renamed"]
        tok = s.live.canaries.tokens[INNER]
        assert [o.evidence["breach"] for o in s.live.escapes("x", b"..." + tok)] == ["reply"]
    finally:
        s.stop()

"""The differential target: comparison rules, the allow-list, a bounded fixed-seed run of
the real C daemon against the real Rust one, a forced divergence, replaying a finding,
and the campaign's report."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from construct import Container, ListContainer

from fuseproto.fuzz import diff, report, sequences
from fuseproto.fuzz.campaign import diff_pair, run_campaign
from fuseproto.fuzz.diff import SideAnswer, compare
from fuseproto.fuzz.diff_allow import ALLOW, RUST_MAX_BUFFER, RUST_MAX_REQUEST, WHENS, explain
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.forensics import Outcome
from fuseproto.fuzz.harness import DaemonHarness
from fuseproto.fuzz.sequences import ProgramResult, Step
from fuseproto.wire import codec
from fuseproto.wire.constants import fuse_opcode as O


def _attr(**kw):
    a = dict(ino=7, size=11, blocks=8, atime=1, mtime=2, ctime=3, atimensec=0, mtimensec=0,
             ctimensec=0, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0, blksize=4096, flags=0)
    a.update(kw)
    return Container(**a)


def _entry(**kw) -> SideAnswer:
    body = Container(nodeid=kw.pop("nodeid", 5), generation=0, entry_valid=1, attr_valid=1,
                     entry_valid_nsec=0, attr_valid_nsec=0, attr=_attr(**kw))
    return SideAnswer(0, None, codec.encode_reply(O.FUSE_LOOKUP, body, unique=2), 46)


def _err(e: int) -> SideAnswer:
    return SideAnswer(-e, None, codec.encode_reply(O.FUSE_LOOKUP, None, unique=2, error=-e), 46)


def _data(b: bytes, base: str = "") -> SideAnswer:
    return SideAnswer(0, None, codec.encode_reply(O.FUSE_READLINK, Container(link=b),
                                                  unique=2), 46, base)


def test_compare_rules():
    kinds = lambda a, b, op=O.FUSE_LOOKUP: [k for k, _ in compare(op, a, b)]  # noqa: E731
    assert kinds(_entry(), _entry(ino=99, nodeid=8, mtime=5)) == []  # ids and times: not compared
    assert kinds(_entry(), _err(errno.ENOENT)) == ["accepted-vs-refused"]
    assert kinds(_err(errno.EINVAL), _err(errno.ENOENT)) == ["errno"]
    assert kinds(_err(errno.ENOENT), _err(errno.ENOTDIR)) == []  # one class: not found
    assert kinds(_entry(), _entry(size=12)) == ["attr.size"]
    assert kinds(_entry(), _entry(mode=0o120777)) == ["attr.type"]
    assert kinds(_entry(), _entry(mode=0o100600, nlink=2)) == ["attr.perm", "attr.nlink"]
    assert kinds(_entry(), _entry(uid=1)) == ["attr.owner"]
    # A directory's size and link count are the file system's business.
    assert kinds(_entry(mode=0o40755, size=4096, nlink=2),
                 _entry(mode=0o40755, size=60, nlink=3)) == []
    assert kinds(_entry(mode=0o120777, size=30), _entry(mode=0o120777, size=31)) == []
    # Data: each share's own absolute path reads $BASE.
    assert kinds(_data(b"/tmp/a/canary", "/tmp/a"), _data(b"/tmp/b/canary", "/tmp/b"),
                 O.FUSE_READLINK) == []
    assert kinds(_data(b"x"), _data(b"y"), O.FUSE_READLINK) == ["data"]
    # Directory entries: the same names and types in any order agree.
    def rd(names):
        ents = [Container(ino=i + 1, off=i + 1, namelen=len(n), type=8, name=n)
                for i, n in enumerate(names)]
        return SideAnswer(0, None, codec.encode_reply(O.FUSE_READDIR, Container(entries=ents),
                                                      unique=2), 46)
    assert kinds(rd([b"a", b"b"]), rd([b"b", b"a"]), O.FUSE_READDIR) == []
    assert kinds(rd([b"a"]), rd([b"a", b"c"]), O.FUSE_READDIR) == ["entries"]
    # A finding on either side is the daemon's own finding, not a divergence.
    assert compare(O.FUSE_LOOKUP, SideAnswer(None, "crash", b"", 46), _entry()) == []
    assert kinds(SideAnswer(None, None, b"", 46), _err(errno.EAGAIN),
                 O.FUSE_INTERRUPT) == ["reply-vs-none"]
    assert diff.errno_class(-errno.ENAMETOOLONG) == diff.errno_class(errno.EINVAL) == "invalid"
    assert diff.errno_class(-errno.EBADF) == "EBADF"


def test_allow_list_entries_have_reasons_and_match():
    assert ALLOW and all(len(e.reason) > 40 for e in ALLOW)
    assert all(e.when in (None, *WHENS) for e in ALLOW)
    allowed = explain
    assert allowed("FUSE_INIT", "accepted-vs-refused", (-errno.EPROTO, 0), set())
    assert allowed("FUSE_OPEN", "errno", (-errno.EIO, -errno.EBADF), {"before-init"})
    assert not allowed("FUSE_OPEN", "errno", (-errno.EIO, -errno.EBADF), set())
    # Before INIT, the Rust daemon *accepting* what the C one refuses is not explained.
    assert not allowed("FUSE_OPEN", "accepted-vs-refused", (-errno.EIO, 0), {"before-init"})
    assert allowed("FUSE_UNLINK", "errno", (-errno.EINVAL, -errno.ENOENT), {"bad-name"})
    assert not allowed("FUSE_LOOKUP", "accepted-vs-refused", (-errno.EINVAL, 0), {"bad-name"})
    assert not allowed("FUSE_READ", "data", (0, 0), {"before-init", "bad-name"})
    assert allowed("FUSE_LOOKUP", "errno", (-errno.ENOENT, -errno.EBADF), {"guessed-id"})
    assert not allowed("FUSE_LOOKUP", "errno", (-errno.ENOENT, -errno.EBADF), set())
    assert allowed("FUSE_RELEASE", "accepted-vs-refused", (0, -errno.EBADF), set())
    assert not allowed("FUSE_RELEASE", "accepted-vs-refused", (0, -errno.ENOMEM), set())
    assert allowed("FUSE_RENAME", "errno", (-errno.EIO, -errno.ENOTDIR), set())


def test_new_allow_entries_match_only_their_divergence():
    """Each entry explains what the campaign saw, and only with its state / errnos / kind."""
    def why(op, kind, errnos, state=frozenset()):
        e = explain(op, kind, errnos, set(state))
        return e and (e.op, e.when)
    over, forgot = {"over-rust-limit"}, {"forgotten-id"}
    enomem = -errno.ENOMEM
    # Rust's size limits: any op, any kind, Rust ENOMEM; only over a limit.
    for op, kind, errnos in (("FUSE_OPEN", "accepted-vs-refused", (0, enomem)),
                             ("FUSE_OPENDIR", "errno", (-errno.EBADF, enomem)),
                             ("FUSE_SYMLINK", "accepted-vs-refused", (0, enomem)),
                             ("FUSE_INIT", "errno", (-errno.EPROTO, enomem)),
                             ("FUSE_GETXATTR", "errno", (-errno.ENODATA, enomem)),
                             ("FUSE_BATCH_FORGET", "reply-vs-none", (None, enomem))):
        assert why(op, kind, errnos, over) == (None, "over-rust-limit")
        assert not why(op, kind, errnos)
    assert not why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EBADF), over)
    # UNLINK / RMDIR: C's EIO (lookup_name found no inode), any kind, any Rust errno.
    for op in ("FUSE_UNLINK", "FUSE_RMDIR"):
        assert why(op, "errno", (-errno.EIO, -errno.ENAMETOOLONG)) == (op, None)
        assert why(op, "errno", (-errno.EIO, -errno.ENOENT)) == (op, None)
        assert why(op, "accepted-vs-refused", (-errno.EIO, 0)) == (op, None)
        assert not why(op, "errno", (-errno.ENOENT, -errno.ENAMETOOLONG))
    assert not why("FUSE_LINK", "errno", (-errno.EIO, -errno.ENOENT))
    # DESTROY: Rust never answers; C's answer, whatever it is.
    assert why("FUSE_DESTROY", "reply-vs-none", (0, None)) == ("FUSE_DESTROY", None)
    assert why("FUSE_DESTROY", "reply-vs-none", (-errno.EIO, None)) == ("FUSE_DESTROY", None)
    assert not why("FUSE_DESTROY", "errno", (-errno.EIO, -errno.EINVAL))
    assert not why("FUSE_LOOKUP", "reply-vs-none", (0, None))
    # OPENDIR with flags no kernel sends: any divergence, only in that state.
    odd = {"dir-open-flags"}
    for kind, errnos in (("accepted-vs-refused", (0, -errno.EISDIR)),
                         ("accepted-vs-refused", (0, -errno.EINVAL)),
                         ("reply-vs-none", (None, -errno.EISDIR))):
        assert why("FUSE_OPENDIR", kind, errnos, odd) == ("FUSE_OPENDIR", "dir-open-flags")
        assert not why("FUSE_OPENDIR", kind, errnos)
    assert not why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EISDIR), odd)
    assert not why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EISDIR))
    # A forgotten node id: Rust's EBADF, accepted by C or refused; only in that state.
    assert why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EBADF), forgot) == \
        (None, "forgotten-id")
    assert why("FUSE_GETATTR", "errno", (-errno.ENOENT, -errno.EBADF), forgot)
    assert not why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EBADF))
    assert not why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.EBADF), {"guessed-id"})
    # Whatever each answers to a forgotten id (C: another file's, or EBADF with its inode
    # gone; Rust: EBADF, or what goes by the handle alone).
    assert why("FUSE_OPEN", "accepted-vs-refused", (0, -errno.ENOENT), forgot)
    assert why("FUSE_FLUSH", "accepted-vs-refused", (-errno.EBADF, 0), forgot)
    assert not why("FUSE_FLUSH", "accepted-vs-refused", (-errno.EBADF, 0))


class _Fake:
    """Stands in for a harness: :func:`diff.run_pair` on a fabricated program result."""

    canaries = None
    minor = 46

    def __init__(self, answers: list[int | None], stale: set[int]):
        outs = [Outcome("FUSE_X:noreply") if e is None else
                Outcome(f"FUSE_X:{e}" + (":<=16" if e == 0 else "")) for e in answers]
        self.result = ProgramResult(outs, steps=list(range(len(outs))),
                                    stale=[i in stale for i in range(len(outs))])


def _pair(monkeypatch, prog, a, b, stale_a=(), stale_b=()):
    """The divergences ``run_pair`` finds in fabricated answers (errno per step, None: no
    reply), with the states it computes from the program and the stale flags."""
    monkeypatch.setattr(diff, "run_program", lambda h, p: h.result)
    return diff.run_pair(_Fake(a, set(stale_a)), _Fake(b, set(stale_b)), prog).divergences


def test_run_pair_computes_the_new_states(monkeypatch):
    enomem, ebadf = -errno.ENOMEM, -errno.EBADF
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)

    def open_(length=None, node=-1):
        return Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=node,
                    length=length)

    def when(prog, a, b, **kw):
        (d,) = _pair(monkeypatch, prog, a, b, **kw)
        return d.allowed and d.allowed.when
    # over-rust-limit: a forced header length above 1 MiB + 4 KiB; the same OPEN without
    # one (or at the limit) is a finding.
    for length in (0xFFFF_FFFF, RUST_MAX_REQUEST + 1):
        assert when([_init(), lookup, open_(length)], [0, 0, 0], [0, 0, enomem]) == \
            "over-rust-limit"
    for length in (None, RUST_MAX_REQUEST):
        assert when([_init(), lookup, open_(length)], [0, 0, 0], [0, 0, enomem]) is None

    def xattr(size):
        return Step(O.FUSE_GETXATTR, Container(size=size, padding=0, name=b"user.x"), node=-1)
    for size, want in ((2430032944, "over-rust-limit"), (RUST_MAX_BUFFER + 1, "over-rust-limit"),
                       (RUST_MAX_BUFFER, None), (256, None)):
        assert when([_init(), xattr(size)], [0, -errno.ENODATA], [0, enomem]) == want
    # A READ's size is not one Rust checks.
    read = Step(O.FUSE_READ, Container(fh=-1, offset=0, size=1 << 30, read_flags=0,
                                       lock_owner=0, flags=0), node=-1)
    assert when([_init(), read], [0, 0], [0, enomem]) is None

    def forget(count, n=1):
        return Step(O.FUSE_BATCH_FORGET, Container(count=count, dummy=0, entries=ListContainer(
            Container(nodeid=-1, nlookup=1) for _ in range(n))), node=0)
    for step, want in ((forget(RUST_MAX_BUFFER // 16 + 1), "over-rust-limit"),
                       (forget(None, RUST_MAX_BUFFER // 16 + 1), "over-rust-limit"),
                       (forget(RUST_MAX_BUFFER // 16), None), (forget(None, 2), None)):
        assert when([_init(), step], [0, None], [0, enomem]) == want
    # forgotten-id: the OPEN's node id was forgotten on either side (run_program's flags).
    prog = [_init(), lookup, open_(), forget(None), lookup, open_(node=-2)]
    a, b = [0, 0, 0, None, 0, 0], [0, 0, 0, None, 0, ebadf]
    assert when(prog, a, b, stale_b={5}) == "forgotten-id"
    assert when(prog, a, b, stale_a={5}) == "forgotten-id"
    assert when(prog, a, b) is None  # the same divergence, no forget of that id: a finding
    assert when(prog, a, b, stale_a={4}, stale_b={4}) is None  # another step's flag

    # dir-open-flags: an OPENDIR with a bit no kernel sends; the kernel's own flags are not.
    def opendir(flags):
        return Step(O.FUSE_OPENDIR, Container(flags=flags, open_flags=0), node=1)
    for flags, want in ((os.O_RDWR, "dir-open-flags"), (0x1FFF, "dir-open-flags"),
                        (os.O_CREAT, "dir-open-flags"),
                        (os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC, None)):
        assert when([_init(), opendir(flags)], [0, 0], [0, -errno.EINVAL]) == want



def test_a_racy_step_one_daemon_took_stops_the_comparison(monkeypatch):
    """Diff-run finding: a LOOKUP sharing its kick with an INTERRUPT (not compared) that
    only one daemon took (Rust's ENOMEM for a forced length): the newest node ids differ
    from then on, so a later OPENDIR's ENOTDIR vs 0 is not a divergence; with both taking
    it the later step is compared."""
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"empty"), node=1, group=5)
    interrupt = Step(O.FUSE_INTERRUPT, Container(unique=-1), node=0, group=5)
    opendir = Step(O.FUSE_OPENDIR, Container(flags=0, open_flags=0), node=-1)
    prog = [_init(), lookup, interrupt, opendir]
    assert _pair(monkeypatch, prog, [0, 0, None, -errno.ENOTDIR],
                 [0, -errno.ENOMEM, None, 0]) == []
    (d,) = _pair(monkeypatch, prog, [0, 0, None, -errno.ENOTDIR], [0, 0, None, 0])
    assert (d.op, d.step) == ("FUSE_OPENDIR", 3) and d.allowed is None


@pytest.mark.daemon
def test_a_refused_second_init_is_explained(daemon_installations):
    """Diff-run finding: an INIT of major 6 while a session is up. The C daemon tears the
    session down first ('reinit') and then refuses it: EIO to everything after; the Rust
    one refuses it and serves on (GETATTR: C EIO, Rust 0), state ``reinit-refused`` until
    an INIT both accept."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)
    getattr_ = Step(O.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), node=1)
    old = _init()
    old.fields.major = 6
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, [_init(), lookup, old, getattr_])
        assert pr.a.outcomes[2].cls == pr.b.outcomes[2].cls == "FUSE_INIT:-71"
        (d,) = pr.divergences
        assert (d.op, d.kind, d.errnos) == ("FUSE_GETATTR", "accepted-vs-refused",
                                            (-errno.EIO, 0)), d
        assert d.allowed is not None and d.allowed.when == "reinit-refused"
        pr = diff.run_pair(ha, hb, [_init(), lookup, old, _init(), getattr_])
        assert not pr.divergences  # a new INIT both accept: one session again


def test_a_destroy_the_rust_daemon_does_not_answer_is_compared_past(monkeypatch):
    """Rust never answers DESTROY (allowed); the C daemon accepted it, so both tore the
    session down: what follows is compared, before-init again until a new INIT (C EIO,
    Rust EBADF: allowed), then as usual (a divergence there is a finding)."""
    eio, ebadf = -errno.EIO, -errno.EBADF
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)
    getattr_ = Step(O.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), node=1)
    prog = [_init(), lookup, Step(O.FUSE_DESTROY, Container(), node=0), getattr_, lookup,
            _init(), lookup, getattr_]
    ds = _pair(monkeypatch, prog, [0, 0, 0, eio, eio, 0, 0, 0],
               [0, 0, None, ebadf, ebadf, 0, 0, -errno.ENOENT])
    assert [(d.step, d.kind) for d in ds] == [(2, "reply-vs-none"), (3, "errno"),
                                              (4, "errno"), (7, "accepted-vs-refused")]
    assert [d.allowed is not None for d in ds] == [True, True, True, False]
    assert ds[1].allowed.when == "before-init"
    # A DESTROY sharing its kick with an INTERRUPT is not compared (timing), but it
    # happened: what follows is before-init again all the same.
    racy = [_init(), lookup, Step(O.FUSE_DESTROY, Container(), node=0, group=5),
            Step(O.FUSE_INTERRUPT, Container(unique=-1), node=0, group=5), getattr_]
    ds = _pair(monkeypatch, racy, [0, 0, 0, None, eio], [0, 0, None, None, ebadf])
    assert [(d.step, d.allowed is not None) for d in ds] == [(4, True)]
    assert ds[0].allowed.when == "before-init"
    # A DESTROY the C daemon refused ends the comparison there, as any reply-vs-none does.
    ds = _pair(monkeypatch, prog, [0, 0, eio, eio, eio, 0, 0, 0],
               [0, 0, None, ebadf, ebadf, 0, 0, -errno.ENOENT])
    assert [d.step for d in ds] == [2]


def _init() -> Step:
    s = sequences.init_step(random.Random(0))
    s.fields.minor = 46
    return s


def _baseline() -> list[Step]:
    return [
        _init(),
        Step(O.FUSE_LOOKUP, Container(name=b"small"), node=1),
        Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=-1),
        Step(O.FUSE_READ, Container(fh=-1, offset=0, size=4096, read_flags=0, lock_owner=0,
                                    flags=0), node=-1),
        Step(O.FUSE_GETATTR, Container(getattr_flags=0, fh=0, dummy=0), node=-1),
        Step(O.FUSE_LOOKUP, Container(name=b"escape"), node=1),
        Step(O.FUSE_READLINK, Container(), node=-1),
        Step(O.FUSE_LOOKUP, Container(name=b"escape-abs"), node=1),
        Step(O.FUSE_READLINK, Container(), node=-1),
        Step(O.FUSE_LOOKUP, Container(name=b"dir"), node=1),
        Step(O.FUSE_OPENDIR, Container(flags=0, open_flags=0), node=-1),
        Step(O.FUSE_READDIRPLUS, Container(fh=-1, offset=0, size=4096, read_flags=0,
                                           lock_owner=0, flags=0), node=-1),
    ]


class _Skewed(DaemonHarness):
    """A harness whose share differs from the standard one (a forced divergence)."""

    def start(self) -> DaemonHarness:
        super().start()
        assert self.daemon is not None
        with open(os.path.join(self.daemon.shared_dir, "small"), "ab") as f:
            f.write(b", skewed")
        return self


@pytest.mark.daemon
def test_identical_shares_agree_and_a_skewed_one_is_reported(daemon_installations, tmp_path):
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        same = diff.run_pair(ha, hb, _baseline())
    assert same.divergences == [] and same.compared == len(_baseline())
    store = FindingStore(tmp_path)
    st = diff.fuzz_diff(c, rust, seconds=60, store=store, programs=[_baseline()],
                        max_programs=1,
                        harnesses=(DaemonHarness(c, setup=False), _Skewed(rust, setup=False)))
    sigs = {f.signature for f in st.findings}
    assert {"diff:c-vs-rust:FUSE_LOOKUP:attr.size:0/0", "diff:c-vs-rust:FUSE_READ:data:0/0",
            "diff:c-vs-rust:FUSE_GETATTR:attr.size:0/0"} <= sigs
    f = next(f for f in store if f.signature.endswith("FUSE_READ:data:0/0"))
    doc = json.loads(Path(f.reproducer).read_text())
    assert doc["target"] == "diff" and doc["finding"]["step"] == 3
    assert b"skewed" in bytes.fromhex(doc["replies"][1])
    assert "11 vs 19 bytes" in f.summary


@pytest.mark.daemon
def test_bounded_fixed_seed_run_c_vs_rust(daemon_installations, tmp_path):
    """30 fixed programs: every divergence is either explained by the allow-list or a
    finding with a reproducer (and the store holds exactly those)."""
    rng = random.Random(0)
    progs = [sequences.random_program(rng) for _ in range(30)]
    store = FindingStore(tmp_path)
    st = diff.fuzz_diff(daemon_installations["c"], daemon_installations["rust"], seconds=300,
                        store=store, programs=progs, max_programs=30)
    assert st.programs == 30 and st.compared > 100 and st.canary_checks == 60
    assert st.divergences, "the two daemons never differ? (the INIT floor alone should)"
    unexplained = {s for s, d in st.divergences.items() if not d["allowed"]}
    assert unexplained == {f.signature for f in st.findings}
    assert unexplained == {f.signature for f in store if f.target == "diff"}
    for f in st.findings:
        assert Path(f.reproducer).exists() and f.replay.endswith("--target diff")
    assert not [f for f in store if f.kind == "escape"]
    for sig, d in sorted(st.divergences.items()):
        print(f"{sig} x{d['count']}: {d['allowed'] or 'FINDING'}")


@pytest.mark.daemon
def test_a_divergence_replays(daemon_installations, tmp_path):
    """Finding, kept as a test: the Rust daemon resolves a LOOKUP of "dir/inner" (a name
    with '/'), the C one refuses it (EINVAL). Its reproducer replays with ``fuseproto fuzz
    replay`` and with its standalone script."""
    prog = [_init(), Step(O.FUSE_LOOKUP, Container(name=b"dir/inner"), node=1)]
    store = FindingStore(tmp_path)
    st = diff.fuzz_diff(daemon_installations["c"], daemon_installations["rust"], seconds=60,
                        store=store, programs=[prog], max_programs=1)
    (f,) = st.findings
    assert f.signature == "diff:c-vs-rust:FUSE_LOOKUP:accepted-vs-refused:-22/0"
    # Its pcap: each daemon's exchange after an annotation naming it, every reply paired.
    from fuseproto.capture import decode_capture

    recs = list(decode_capture(f.pcap))
    notes = [m.raw.decode() for m in recs if m.kind == "annotation"]
    assert notes[:2] == ["daemon c: the program's exchange",
                         "daemon rust: the program's exchange"]
    lookups = [m for m in recs if m.kind == "reply" and m.opcode == O.FUSE_LOOKUP]
    assert len(lookups) == 2 and all(m.paired for m in lookups)
    assert sorted(m.message.error for m in lookups) == [-22, 0]
    out = subprocess.run([sys.executable, "-m", "fuseproto", "fuzz", "replay", f.reproducer,
                          "--json"], capture_output=True, text=True, timeout=120)
    verdict = json.loads(out.stdout)
    assert out.returncode == 1 and verdict["reproduced"] and verdict["target"] == "diff"
    script = subprocess.run([sys.executable, f.script], capture_output=True, text=True,
                            timeout=120)
    assert script.returncode == 1 and script.stdout.startswith("reproduced"), script


@pytest.mark.daemon
def test_a_forgotten_node_id_divergence_is_allowed(daemon_installations):
    """Campaign finding: FORGET a file's node id, LOOKUP another file, OPEN the forgotten
    id (all three on one kick, so the OPEN is built before the LOOKUP's reply). The C
    daemon gave the freed id to the new file and opens it; the Rust one refuses (EBADF)."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    forget = Step(O.FUSE_BATCH_FORGET, Container(count=None, dummy=0, entries=ListContainer(
        [Container(nodeid=-1, nlookup=1)])), node=0, group=7)
    prog = [_init(), Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1),
            Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=-1), forget,
            Step(O.FUSE_LOOKUP, Container(name=b"empty"), node=1, group=7),
            Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=-1, group=7)]
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, prog)
    assert pr.a.stale == pr.b.stale == [False] * 5 + [True]
    (d,) = pr.divergences
    assert (d.op, d.kind, d.errnos, d.step) == ("FUSE_OPEN", "accepted-vs-refused",
                                                (0, -errno.EBADF), 5)
    assert d.allowed is not None and d.allowed.when == "forgotten-id"
    # The reason holds: C's LOOKUP of "empty" got the id it had freed, Rust's a new one.
    ids = [[codec.decode_reply(r.outcomes[i].reply, O.FUSE_LOOKUP, 46).body.nodeid
            for i in (1, 4)] for r in (pr.a, pr.b)]
    assert ids[0][0] == ids[0][1] and ids[1][0] != ids[1][1]
    # A forgotten id in LINK's body (oldnodeid) marks the step too, not only the header's.
    prog = [_init(), Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1),
            Step(O.FUSE_FORGET, Container(nlookup=1), node=-1),
            Step(O.FUSE_LINK, Container(oldnodeid=-1, name=b"again"), node=1),
            Step(O.FUSE_LINK, Container(oldnodeid=1, name=b"again2"), node=1)]
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, prog)
    assert pr.a.stale == pr.b.stale == [False, False, False, True, False]


@pytest.mark.daemon
def test_a_header_length_over_rusts_limit_is_allowed(daemon_installations):
    """Campaign finding: an OPEN whose fuse_in_header.len says 0xFFFFFFFF: the C daemon
    serves it, the Rust one refuses it (ENOMEM). Its replay is no longer a finding."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    prog = [_init(), Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1),
            Step(O.FUSE_OPEN, Container(flags=os.O_RDWR, open_flags=0), node=-1,
                 length=0xFFFF_FFFF)]
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, prog)
    (d,) = pr.divergences
    assert (d.op, d.kind, d.errnos) == ("FUSE_OPEN", "accepted-vs-refused", (0, -errno.ENOMEM))
    assert d.allowed is not None and d.allowed.when == "over-rust-limit"
    sig = "diff:c-vs-rust:FUSE_OPEN:accepted-vs-refused:0/-12"
    v = diff.diff_verdict({"daemons": ["c", "rust"], "program": sequences.program_to_json(prog),
                           "finding": {"signature": sig}})
    assert not v["reproduced"] and v["seen"] == [f"{sig} (allowed)"]
    assert v["allowed"] == d.allowed.reason



def test_handle_tags_say_what_an_fh_is():
    """A request's fh against the handles the program was given: a literal (or a
    reference with none given yet), another kind's handle, another node's; only on the
    requests served through their fh (GETATTR / SETATTR only with their fh flag)."""
    from fuseproto.fuzz.sequences import handle_tags

    def read(fh):
        return Step(O.FUSE_READ, Container(fh=fh, offset=0, size=1, read_flags=0,
                                           lock_owner=0, flags=0), node=-1)

    def tags(step, node, origins, fh=None):
        body = dict(step.fields)
        if fh is not None:
            body["fh"] = fh
        return set(handle_tags(step, node, body, origins))

    file5, dir1 = (5, "file"), (1, "dir")
    assert tags(read(-1), 5, [file5], fh=10) == set()
    assert tags(read(-1), 5, [dir1, file5], fh=10) == set()  # -1: the newest, file5
    assert tags(read(-2), 1, [dir1, file5], fh=10) == {"fh-other-kind"}
    assert tags(read(-1), 6, [file5], fh=10) == {"fh-other-node"}
    assert tags(read(-2), 5, [dir1, file5], fh=10) == {"fh-other-kind", "fh-other-node"}
    assert tags(read(0), 5, [file5]) == {"guessed-fh"} == tags(read(-1), 5, [], fh=0)
    readdir = Step(O.FUSE_READDIR, Container(fh=-1, offset=0, size=4096, read_flags=0,
                                             lock_owner=0, flags=0), node=1)
    assert tags(readdir, 1, [dir1], fh=3) == set()
    assert tags(readdir, 1, [(1, "file")], fh=3) == {"fh-other-kind"}
    plain = Step(O.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), node=1)
    with_fh = Step(O.FUSE_GETATTR, Container(getattr_flags=1, dummy=0, fh=0), node=1)
    assert tags(plain, 1, [file5]) == set() and tags(with_fh, 1, [file5]) == {"guessed-fh"}
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"x"), node=1)
    assert tags(lookup, 1, [file5]) == set()


def test_handle_allow_entries_match_only_their_state():
    def why(op, kind, errnos, state=frozenset()):
        e = explain(op, kind, errnos, set(state))
        return e and e.when
    ebadf, eisdir = -errno.EBADF, -errno.EISDIR
    assert why("FUSE_READ", "errno", (ebadf, eisdir), {"fh-other-kind"}) == "fh-other-kind"
    assert why("FUSE_READDIR", "accepted-vs-refused", (ebadf, 0), {"fh-other-kind"})
    assert why("FUSE_READ", "accepted-vs-refused", (ebadf, 0), {"guessed-fh"}) == "guessed-fh"
    assert why("FUSE_READ", "errno", (eisdir, ebadf), {"fh-other-node"}) == "fh-other-node"
    assert not why("FUSE_READ", "errno", (ebadf, eisdir), {"fh-other-node"})  # Rust not EBADF
    for errnos in ((ebadf, eisdir), (eisdir, ebadf)):
        assert not why("FUSE_READ", "errno", errnos)
    assert not why("FUSE_READ", "accepted-vs-refused", (ebadf, 0))
    assert why("FUSE_WRITE", "accepted-vs-refused", (ebadf, 0), {"zero-length"}) == "zero-length"
    assert not why("FUSE_WRITE", "accepted-vs-refused", (0, ebadf), {"zero-length"})
    assert not why("FUSE_FLUSH", "accepted-vs-refused", (ebadf, 0), {"zero-length"})
    assert why("FUSE_OPENDIR", "errno", (-errno.ENOTDIR, ebadf)) is None  # (no state needed)
    assert why("FUSE_GETATTR", "accepted-vs-refused", (-errno.EIO, 0), {"reinit-refused"})
    assert not why("FUSE_GETATTR", "accepted-vs-refused", (-errno.EIO, 0), {"before-init"})
    assert not why("FUSE_GETATTR", "accepted-vs-refused", (0, -errno.EIO), {"reinit-refused"})
    assert explain("FUSE_OPENDIR", "errno", (-errno.ENOTDIR, ebadf), set())
    assert not explain("FUSE_OPEN", "errno", (-errno.ENOTDIR, ebadf), set())


@pytest.mark.daemon
def test_handle_divergences_are_explained(daemon_installations):
    """Diff-run findings: a READ through a directory's handle (C EBADF, Rust EISDIR), a
    READ of size 0 through a guessed fh 0 after an OPENDIR (C EBADF, Rust 0), and a READ
    of a file through the handle of the root opened as a file (C EISDIR, Rust EBADF):
    each with its state and allowed; a READ through the file's own handle agrees."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]

    def read(node, fh, size):
        return Step(O.FUSE_READ, Container(fh=fh, offset=0, size=size, read_flags=0,
                                           lock_owner=0, flags=0), node=node)

    opendir = Step(O.FUSE_OPENDIR, Container(flags=0, open_flags=0), node=1)
    open_root = Step(O.FUSE_OPEN, Container(flags=0, open_flags=0), node=1)
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)
    open_file = Step(O.FUSE_OPEN, Container(flags=0, open_flags=0), node=-1)
    cases = [([_init(), opendir, read(1, -1, 100)], ("errno", (-errno.EBADF, -errno.EISDIR)),
              "fh-other-kind"),
             ([_init(), opendir, read(1, 0, 0)], ("accepted-vs-refused", (-errno.EBADF, 0)),
              "guessed-fh"),
             ([_init(), open_root, lookup, read(-1, -1, 100)],
              ("errno", (-errno.EISDIR, -errno.EBADF)), "fh-other-node")]
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        for prog, (kind, errnos), when in cases:
            pr = diff.run_pair(ha, hb, prog)
            assert pr.a.handles[-1] == pr.b.handles[-1] == {when}
            (d,) = pr.divergences
            assert (d.op, d.kind, d.errnos) == ("FUSE_READ", kind, errnos), d
            assert d.allowed is not None and d.allowed.when == when
        pr = diff.run_pair(ha, hb, [_init(), lookup, open_file, read(-1, -1, 100)])
        assert not pr.divergences and pr.a.handles[-1] == frozenset()
        assert pr.a.outcomes[-1].cls.startswith("FUSE_READ:0")



@pytest.mark.daemon
def test_a_write_without_its_handles_append_is_explained(daemon_installations):
    """Diff-run finding: OPEN with O_APPEND, then a WRITE whose flags lack it (a kernel
    copies the file's flags into each WRITE): C appends (the fd keeps O_APPEND), Rust
    writes at the offset (it clears O_APPEND at OPEN, appends per WRITE flag); the file's
    size differs from then on, allowed as ``append-differs``. With the flag in the WRITE
    both append and agree."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)
    open_ = Step(O.FUSE_OPEN, Container(flags=os.O_WRONLY | os.O_APPEND, open_flags=0), node=-1)
    getattr_ = Step(O.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), node=-1)

    def write(flags):
        return Step(O.FUSE_WRITE, Container(fh=-1, offset=0, size=None, write_flags=0,
                                            lock_owner=0, flags=flags, data=b"w" * 100),
                    node=-1)

    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, [_init(), lookup, open_, write(os.O_WRONLY), getattr_])
        assert "append-differs" in pr.a.handles[3] and "append-differs" in pr.b.handles[3]
        (d,) = pr.divergences
        assert (d.op, d.kind, d.step) == ("FUSE_GETATTR", "attr.size", 4), d
        assert d.allowed is not None and d.allowed.when == "append-differs"
        sizes = [codec.decode_reply(r.outcomes[4].reply, O.FUSE_GETATTR, 46).body.attr.size
                 for r in (pr.a, pr.b)]
        orig = codec.decode_reply(pr.a.outcomes[1].reply, O.FUSE_LOOKUP, 46).body.attr.size
        assert sizes == [orig + 100, max(orig, 100)]  # C appended; Rust wrote at offset 0
        pr = diff.run_pair(ha, hb, [_init(), lookup, open_,
                                    write(os.O_WRONLY | os.O_APPEND), getattr_])
        assert not pr.divergences and "append-differs" not in pr.a.handles[3]



@pytest.mark.daemon
def test_zero_length_io_and_opendir_of_a_symlink_are_explained(daemon_installations):
    """Diff-run findings, each traced to both daemons' sources: a WRITE of no data through
    a read-only handle and a READ of size 0 through a write-only one (C EBADF, Rust 0: it
    makes no call for 0 bytes), OPENDIR of a symlink (C ENOTDIR, Rust EBADF). With a
    length, the same handles are refused by both."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)

    def open_(flags):
        return Step(O.FUSE_OPEN, Container(flags=flags, open_flags=0), node=-1)

    def write(data):
        return Step(O.FUSE_WRITE, Container(fh=-1, offset=0, size=None, write_flags=0,
                                            lock_owner=0, flags=0, data=data), node=-1)

    def read(size):
        return Step(O.FUSE_READ, Container(fh=-1, offset=0, size=size, read_flags=0,
                                           lock_owner=0, flags=0), node=-1)

    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        for io, flags in ((write(b""), os.O_RDONLY), (read(0), os.O_WRONLY)):
            pr = diff.run_pair(ha, hb, [_init(), lookup, open_(flags), io])
            (d,) = pr.divergences
            assert (d.kind, d.errnos) == ("accepted-vs-refused", (-errno.EBADF, 0)), d
            assert d.allowed is not None and d.allowed.when == "zero-length"
        for io, flags in ((write(b"x"), os.O_RDONLY), (read(1), os.O_WRONLY)):
            pr = diff.run_pair(ha, hb, [_init(), lookup, open_(flags), io])
            assert not pr.divergences
            assert pr.a.outcomes[-1].cls == pr.b.outcomes[-1].cls == f"{_op(io)}:-9"
        link = Step(O.FUSE_LOOKUP, Container(name=b"link"), node=1)
        opendir = Step(O.FUSE_OPENDIR, Container(flags=0, open_flags=0), node=-1)
        pr = diff.run_pair(ha, hb, [_init(), link, opendir])
        (d,) = pr.divergences
        assert (d.op, d.errnos) == ("FUSE_OPENDIR", (-errno.ENOTDIR, -errno.EBADF))
        assert d.allowed is not None and d.allowed.when is None
        pr = diff.run_pair(ha, hb, [_init(), lookup, opendir])  # a regular file: agree
        assert not pr.divergences and pr.a.outcomes[-1].cls == "FUSE_OPENDIR:-20"


def _op(step: Step) -> str:
    return O(step.op).name


@pytest.mark.daemon
def test_campaign_runs_the_diff_and_reports_it(daemon_installations, tmp_path):
    assert diff_pair(["c", "rust"]) == ("c", "rust")
    assert diff_pair(["c"]) is None
    res = run_campaign(tmp_path, seconds=10, daemons=["c", "rust"],
                       target_names=["wire_decode"], engine_name="inprocess",
                       shrink_share=0)
    (r,) = [r for r in res.results if r.target == "diff"]
    assert r.daemon == "c-vs-rust" and r.diff["programs"] > 0 and not r.error
    md = (tmp_path / "report.md").read_text()
    for section in report.SECTIONS:
        assert section in md
    assert "| c-vs-rust |" in md
    j = json.loads((tmp_path / "report.json").read_text())
    assert j["diff"]["c-vs-rust"]["programs"] == r.diff["programs"]
    assert "`virtiofsd` on `c`: " in md and "`diff` on `c-vs-rust`: " in md


@pytest.mark.daemon
def test_a_forgotten_root_then_a_second_init_is_explained(daemon_installations):
    """Campaign finding: the root forgotten (both its lookups) and then a second INIT --
    the Rust daemon opens the root again, the C one does not (LOOKUP under it: C ENOENT,
    Rust 0). A second INIT alone makes no divergence: both drop the ids they gave out."""
    c, rust = daemon_installations["c"], daemon_installations["rust"]
    lookup = Step(O.FUSE_LOOKUP, Container(name=b"file"), node=1)
    forget = Step(O.FUSE_FORGET, Container(nlookup=2), node=1)
    with DaemonHarness(c, setup=False) as ha, DaemonHarness(rust, setup=False) as hb:
        pr = diff.run_pair(ha, hb, [_init(), forget, _init(), lookup])
        assert pr.a.stale == pr.b.stale == [False, False, False, True]
        (d,) = pr.divergences
        assert (d.op, d.errnos) == ("FUSE_LOOKUP", (-errno.ENOENT, 0))
        assert d.allowed is not None and d.allowed.when == "forgotten-id"
        # One lookup of the root forgotten: both still hold it, nothing is stale.
        half = Step(O.FUSE_FORGET, Container(nlookup=1), node=1)
        pr = diff.run_pair(ha, hb, [_init(), half, _init(), lookup])
        assert pr.a.stale == [False] * 4 and not pr.divergences
        getattr_ = Step(O.FUSE_GETATTR, Container(getattr_flags=0, dummy=0, fh=0), node=-1)
        pr = diff.run_pair(ha, hb, [_init(), lookup, _init(), getattr_])
        assert not pr.divergences
        assert [o.cls for o in pr.a.outcomes][3] == [o.cls for o in pr.b.outcomes][3] == \
            "FUSE_GETATTR:-9"

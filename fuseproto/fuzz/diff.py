"""The differential target: the same sequence programs against the C and the Rust
virtiofsd on identical shares; every behavioural divergence is a finding unless the
allow-list (:mod:`.diff_allow`) explains it.

Each program (:mod:`.sequences`: random, then mutated) runs on a fresh daemon of each kind
(:func:`.sequences.run_program`: the same populated share, the same canaries beside it,
node ids and handles resolved from each daemon's *own* replies), then the two answer
lists are compared step by step (:func:`compare`):

* **reply-vs-none** -- one daemon answered, the other did not (and had to);
* **accepted-vs-refused** -- one answered 0, the other an errno;
* **errno** -- both refused, with errnos of different classes (:data:`ERRNO_CLASSES`:
  ENOENT and ENOTDIR are both "not found", EINVAL and ENAMETOOLONG "invalid", ...; two
  errnos of one class are not a divergence);
* both accepted: **data** (READ, READLINK -- each share's absolute path read as ``$BASE``
  --, GETXATTR, LISTXATTR bytes), **entries** (READDIR names and types), **size**
  (WRITE, COPY_FILE_RANGE), **offset** (LSEEK), and the attributes that must agree for
  the same file: **attr.type** (mode's type bits), **attr.perm**, **attr.owner**
  (uid/gid), **attr.size** and **attr.nlink** (not for directories: their size and link
  count are the file system's business; a symlink's size is its READLINK), in LOOKUP / CREATE / MKDIR / MKNOD / SYMLINK /
  LINK / TMPFILE / GETATTR / SETATTR replies and in READDIRPLUS entries a daemon looked
  up (node id not 0). Never compared: node ids, generations, inode numbers, times,
  timeouts, file handles, ``open_flags``, INIT's and STATFS's bodies.

Comparison of a program stops at the first finding of either daemon (crash, hang,
protocol, escape: those are filed as the daemon's own findings, target ``virtiofsd``) and
after a divergence that leaves the two shares or pools different (one accepted what the
other refused, or a write-like request answered differently); INTERRUPT and the requests
on its kick are not compared (whether the target is still in flight is timing).
Divergences are deduplicated by (opcode, kind, errno pair): the signature is
``diff:<a>-vs-<b>:<opcode>:<kind>:<errno a>/<errno b>``; the reproducer holds the program,
the step, both replies and both request lists, and ``fuseproto fuzz replay FILE`` (or its
``.repro.py`` script) runs it on two fresh daemons again (:func:`diff_verdict`).
"""

from __future__ import annotations

import errno as E
import random
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from .. import daemons
from ..capture.frames import Direction
from ..errors import DaemonError, DecodeError, TransportError
from ..wire import codec
from ..wire.constants import FUSE_KERNEL_VERSION
from ..wire.constants import fuse_opcode as O
from .corpus import Corpus
from .diff_allow import (
    DIR_OPEN_REFUSED,
    RUST_FORGET_ONE,
    RUST_MAX_BUFFER,
    RUST_MAX_REQUEST,
    RUST_SIZE_CHECKED,
    AllowEntry,
    explain,
)
from .findings import Finding, FindingStore
from .forensics import Outcome
from .harness import DaemonHarness
from .sequences import (
    ProgramResult,
    Step,
    mutate_program,
    program_from_json,
    program_to_json,
    random_program,
    run_program,
)
from .virtiofsd import DaemonStats, record_finding

__all__ = ["Divergence", "DiffStats", "SideAnswer", "compare", "fuzz_diff", "diff_verdict",
           "run_pair", "diff_label", "ERRNO_CLASSES", "errno_class"]

#: What a refusal means, whichever errno says it: two daemons refusing with errnos of one
#: class agree. An errno not listed is a class of its own.
ERRNO_CLASSES: dict[int, str] = {
    **dict.fromkeys((E.ENOENT, E.ENOTDIR, E.ENXIO, E.ESTALE), "not-found"),
    **dict.fromkeys((E.EINVAL, E.ENAMETOOLONG, E.ERANGE, E.EOVERFLOW, E.EFAULT), "invalid"),
    **dict.fromkeys((E.EPERM, E.EACCES, E.EROFS), "permission"),
    **dict.fromkeys((E.EEXIST, E.ENOTEMPTY), "exists"),
    **dict.fromkeys((E.ENOSYS, E.EOPNOTSUPP, E.ENOTTY, E.ENODATA), "unsupported"),
    **dict.fromkeys((E.ENOMEM, E.ENOSPC, E.EMFILE, E.ENFILE, E.EFBIG, E.E2BIG), "resource"),
    **dict.fromkeys((E.EAGAIN, E.EINTR), "again"),
}


def errno_class(err: int) -> str:
    """The class of a (negative or positive) errno: :data:`ERRNO_CLASSES`, else its name."""
    n = abs(err)
    return ERRNO_CLASSES.get(n) or E.errorcode.get(n, str(n))

_ENTRY_OPS = (O.FUSE_LOOKUP, O.FUSE_CREATE, O.FUSE_MKDIR, O.FUSE_MKNOD, O.FUSE_SYMLINK,
              O.FUSE_LINK, O.FUSE_TMPFILE)
_ATTR_OPS = (O.FUSE_GETATTR, O.FUSE_SETATTR)
_DATA_OPS = (O.FUSE_READ, O.FUSE_READLINK, O.FUSE_GETXATTR, O.FUSE_LISTXATTR)
# Requests whose header node id means nothing (a literal 0 there is not a guess).
_NO_NODE = (O.FUSE_INIT, O.FUSE_DESTROY, O.FUSE_INTERRUPT, O.FUSE_BATCH_FORGET,
            O.FUSE_NOTIFY_REPLY, O.FUSE_SYNCFS)
# Both accepted but answered differently: the two shares differ afterwards.
_WRITE_LIKE = (O.FUSE_WRITE, O.FUSE_SETATTR, O.FUSE_FALLOCATE, O.FUSE_COPY_FILE_RANGE,
               O.FUSE_COPY_FILE_RANGE_64, O.FUSE_SETXATTR, O.FUSE_REMOVEXATTR, O.FUSE_INIT,
               O.FUSE_DESTROY)


@dataclass
class SideAnswer:
    """One daemon's answer to one step: an errno (0: accepted), no reply (``None``), or a
    finding; ``reply`` its bytes; ``minor`` the minor its replies decode at."""

    errno: int | None
    finding: str | None
    reply: bytes
    minor: int
    base: str = ""  # the share's parent (its absolute path in replies reads $BASE)

    @classmethod
    def of(cls, out: Outcome, minor: int, base: str = "") -> SideAnswer:
        parts = out.cls.split(":")
        err: int | None = None
        if out.finding is None and len(parts) > 1:
            try:
                err = int(parts[1])
            except ValueError:
                err = None
        return cls(err, out.finding, out.reply, minor, base)


@dataclass
class Divergence:
    op: str  # opcode name
    kind: str
    errnos: tuple[int | None, int | None]
    detail: str
    step: int = -1
    allowed: AllowEntry | None = None

    def signature(self, label: str) -> str:
        a, b = ("-" if e is None else str(e) for e in self.errnos)
        return f"diff:{label}:{self.op}:{self.kind}:{a}/{b}"


def diff_label(label_a: str, label_b: str) -> str:
    """How findings and reports name a pair: ``c-vs-rust``."""
    return f"{label_a}-vs-{label_b}"


# -- comparing one step -----------------------------------------------------------------------


def _body(ans: SideAnswer, op: int) -> Any:
    try:
        return codec.decode_reply(ans.reply, op, ans.minor).body
    except (DecodeError, ValueError, KeyError):
        return None


def _attr_diffs(a: Any, b: Any, where: str = "") -> list[tuple[str, str]]:
    """(kind, detail) for each attribute two ``fuse_attr`` disagree on."""
    if a is None or b is None:
        return []
    out = []
    ta, tb = stat.S_IFMT(a.mode), stat.S_IFMT(b.mode)
    if ta != tb:
        return [("attr.type", f"{where}mode type {ta:o} vs {tb:o}")]
    if stat.S_IMODE(a.mode) != stat.S_IMODE(b.mode):
        out.append(("attr.perm", f"{where}permissions {stat.S_IMODE(a.mode):o} vs "
                                 f"{stat.S_IMODE(b.mode):o}"))
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append(("attr.owner", f"{where}uid/gid {a.uid}/{a.gid} vs {b.uid}/{b.gid}"))
    if not stat.S_ISDIR(a.mode):
        # A symlink's size is its target's length: compared as READLINK data instead
        # (escape-abs points into each share's own parent, read as $BASE).
        if a.size != b.size and not stat.S_ISLNK(a.mode):
            out.append(("attr.size", f"{where}size {a.size} vs {b.size}"))
        if a.nlink != b.nlink:
            out.append(("attr.nlink", f"{where}nlink {a.nlink} vs {b.nlink}"))
    return out


def _data(ans: SideAnswer) -> bytes:
    data = ans.reply[16:]
    return data.replace(ans.base.encode(), b"$BASE") if ans.base else data


def _dirents(body: Any) -> list[tuple[bytes, int, Any]]:
    out = []
    for e in (body or {}).get("entries") or []:
        d = e.get("dirent", e)
        entry = e.get("entry_out")
        attr = entry.attr if entry is not None and entry.get("nodeid") else None
        out.append((bytes(d.name), int(d.type), attr))
    return out


def _both_accepted(op: int, a: SideAnswer, b: SideAnswer) -> list[tuple[str, str]]:
    if op in _ENTRY_OPS:
        ba, bb = _body(a, op), _body(b, op)
        return _attr_diffs(ba.get("attr") if ba else None, bb.get("attr") if bb else None)
    if op in _ATTR_OPS:
        ba, bb = _body(a, op), _body(b, op)
        return _attr_diffs(ba.get("attr") if ba else None, bb.get("attr") if bb else None)
    if op in _DATA_OPS:
        da, db = _data(a), _data(b)
        if da != db:
            at = next((i for i, (x, y) in enumerate(zip(da, db, strict=False)) if x != y),
                      min(len(da), len(db)))
            return [("data", f"{len(da)} vs {len(db)} bytes, first difference at {at}: "
                             f"{da[at:at + 24]!r} vs {db[at:at + 24]!r}")]
        return []
    if op in (O.FUSE_WRITE, O.FUSE_COPY_FILE_RANGE, O.FUSE_LSEEK):
        key = "offset" if op == O.FUSE_LSEEK else "size"
        ba, bb = _body(a, op), _body(b, op)
        va, vb = (ba or {}).get(key), (bb or {}).get(key)
        return [(key, f"{key} {va} vs {vb}")] if va != vb else []
    if op in (O.FUSE_READDIR, O.FUSE_READDIRPLUS):
        ea, eb = _dirents(_body(a, op)), _dirents(_body(b, op))
        na, nb = [(n, t) for n, t, _ in ea], [(n, t) for n, t, _ in eb]
        if sorted(na) != sorted(nb):
            only_a = sorted(set(na) - set(nb))[:4]
            only_b = sorted(set(nb) - set(na))[:4]
            return [("entries", f"{len(na)} vs {len(nb)} entries; only a: {only_a}; "
                                f"only b: {only_b}")]
        attrs = {n: x for n, _, x in eb}
        out: list[tuple[str, str]] = []
        for n, _, x in ea:
            if x is not None and attrs.get(n) is not None:
                out += _attr_diffs(x, attrs[n], f"{n!r}: ")
        return out
    return []


def compare(op: int, a: SideAnswer, b: SideAnswer) -> list[tuple[str, str]]:
    """The (kind, detail) divergences between two daemons' answers to one request
    (see the module docstring); empty when they agree or either is a finding."""
    if a.finding or b.finding:
        return []
    if a.errno is None and b.errno is None:
        return []
    if a.errno is None or b.errno is None:
        return [("reply-vs-none", f"answers {a.errno} vs {b.errno} (None: no reply)")]
    if a.errno != b.errno:
        if 0 in (a.errno, b.errno):
            return [("accepted-vs-refused", f"errno {a.errno} vs {b.errno}")]
        ca, cb = errno_class(a.errno), errno_class(b.errno)
        if ca != cb:
            return [("errno", f"errno {a.errno} ({ca}) vs {b.errno} ({cb})")]
        return []
    if a.errno == 0:
        return _both_accepted(op, a, b)
    return []


def _op_name(op: int) -> str:
    try:
        return O(op).name
    except ValueError:
        return f"opcode_{op}"


@dataclass
class PairResult:
    """One program on both daemons, compared."""

    a: ProgramResult
    b: ProgramResult
    divergences: list[Divergence] = field(default_factory=list)
    compared: int = 0  # steps compared
    uncompared: int = 0  # steps both answered but not compared (after a divergence, racy)


def _racy(prog: list[Step]) -> set[int]:
    """Steps whose answers depend on timing: INTERRUPTs and what shares their kick."""
    out: set[int] = set()
    for i, s in enumerate(prog):
        if s.op == O.FUSE_INTERRUPT:
            out.add(i)
            if s.group:
                out.update(j for j, t in enumerate(prog) if t.group == s.group)
    return out


def run_pair(ha: DaemonHarness, hb: DaemonHarness, prog: list[Step]) -> PairResult:
    """Run ``prog`` on both harnesses (fresh daemons) and compare the answers."""
    ra = run_program(ha, prog)
    base_a, minor_a = _base(ha), ha.minor
    rb = run_program(hb, prog)
    base_b, minor_b = _base(hb), hb.minor
    res = PairResult(ra, rb)
    by_a = dict(zip(ra.steps, ra.outcomes, strict=False))
    by_b = dict(zip(rb.steps, rb.outcomes, strict=False))
    stale = {i for r in (ra, rb) for i, f in zip(r.steps, r.stale, strict=False) if f}
    handles: dict[int, set[str]] = {}  # step -> what its fh is, on either daemon
    for r in (ra, rb):
        for i, tags in zip(r.steps, r.handles, strict=False):
            handles.setdefault(i, set()).update(tags)
    racy = _racy(prog)
    state: set[str] = {"before-init"}
    stopped = False
    for i, step in enumerate(prog):
        if i not in by_a or i not in by_b:
            continue
        oa, ob = by_a[i], by_b[i]
        if stopped or i in racy:
            res.uncompared += 1
            if not stopped:  # not compared, but it happened: an INIT or DESTROY counts
                ra_, rb_ = SideAnswer.of(oa, minor_a), SideAnswer.of(ob, minor_b)
                _advance(state, step, ra_, rb_)
                # One daemon took it and the other refused it: what the program learnt
                # (node ids, handles) may differ from here on, so later steps are not
                # compared. (No reply is not a refusal: Rust never answers a DESTROY.)
                stopped = None not in (ra_.errno, rb_.errno) and \
                    (ra_.errno == 0) != (rb_.errno == 0)
            continue
        if oa.finding or ob.finding:
            stopped = True  # filed as the daemon's own finding; state unknown afterwards
            res.uncompared += 1
            continue
        sa, sb = SideAnswer.of(oa, minor_a, base_a), SideAnswer.of(ob, minor_b, base_b)
        res.compared += 1
        name = _op_name(step.op)
        here = state | ({"bad-name"} if _bad_name(step) else set()) | (
            {"guessed-id"} if step.node not in (1,) and step.node >= 0
            and step.op not in _NO_NODE else set()) | (
            {"over-rust-limit"} if _over_rust_limit(step) else set()) | (
            {"forgotten-id"} if i in stale and step.op not in _NO_NODE else set()) | (
            {"dir-open-flags"} if _odd_dir_flags(step) else set()) | handles.get(i, set()) | (
            {"zero-length"} if _zero_length(step) else set())
        for kind, detail in compare(step.op, sa, sb):
            errnos = (sa.errno, sb.errno)
            d = Divergence(name, kind, errnos, detail, i, explain(name, kind, errnos, here))
            res.divergences.append(d)
            if _destroyed_both(step, sa, sb, d):
                continue  # both tore the session down: compare what follows
            if kind in ("accepted-vs-refused", "reply-vs-none") or step.op in _WRITE_LIKE:
                stopped = True
        _advance(state, step, sa, sb)
        if "append-differs" in handles.get(i, ()) and sa.errno == 0 == sb.errno:
            state.add("append-differs")  # the file's size and data may differ from here on
    return res


def _advance(state: set[str], step: Step, a: SideAnswer, b: SideAnswer) -> None:
    """The program's state after ``step`` (compared or not: a racy one happened too)."""
    if step.op == O.FUSE_INIT and a.errno == 0 and b.errno == 0 and \
            isinstance(step.fields, dict) and step.fields.get("major") == FUSE_KERNEL_VERSION:
        state.discard("before-init")  # another major: the reply asks for a new INIT
        state.discard("reinit-refused")
    elif step.op == O.FUSE_INIT and "before-init" not in state and a.errno not in (0, None):
        # An INIT while a session is up: the C daemon tears the session down first
        # (fuse_lowlevel.c fuse_session_process_buf_int, "reinit") and then refused this
        # one, so it answers EIO until a new INIT; the Rust one keeps the session it had.
        state |= {"before-init", "reinit-refused"}
    if step.op == O.FUSE_DESTROY and a.errno == 0 and b.errno in (0, None):
        # The C daemon wants a new INIT after a DESTROY (do_destroy clears got_init):
        # until one, it is before-init again (the Rust one never answers a DESTROY).
        state |= {"after-destroy", "before-init"}


def _destroyed_both(step: Step, a: SideAnswer, b: SideAnswer, d: Divergence) -> bool:
    """A DESTROY the first daemon accepted and the second, which never answers one,
    carried out silently (its allowed ``reply-vs-none``): both are in the same state, so
    the program is compared on (``after-destroy``) instead of stopping there."""
    return (step.op == O.FUSE_DESTROY and d.kind == "reply-vs-none" and d.allowed is not None
            and a.errno == 0 and b.errno is None)


def _zero_length(step: Step) -> bool:
    """A READ of ``size`` 0, or a WRITE with no data (its ``size`` 0 or derived)."""
    f = step.fields if isinstance(step.fields, dict) else {}
    if step.op == O.FUSE_READ:
        return f.get("size") == 0
    if step.op == O.FUSE_WRITE:
        data = f.get("data")
        return f.get("size") == 0 or (f.get("size") is None and isinstance(
            data, bytes | bytearray) and not data)
    return False


def _bad_name(step: Step) -> bool:
    """A name or newname that is not one path component (``/`` in it, ``.``, ``..``)."""
    f = step.fields if isinstance(step.fields, dict) else {}
    for key in ("name", "newname"):
        v = f.get(key)
        if isinstance(v, bytes | bytearray) and (b"/" in v or bytes(v) in (b".", b"..")):
            return True
    return False


def _odd_dir_flags(step: Step) -> bool:
    """An OPENDIR whose flags have a bit no kernel sends (:data:`.diff_allow.
    DIR_OPEN_REFUSED`)."""
    flags = step.fields.get("flags") if isinstance(step.fields, dict) else None
    return step.op == O.FUSE_OPENDIR and isinstance(flags, int) and \
        bool(flags & DIR_OPEN_REFUSED)


def _over_rust_limit(step: Step) -> bool:
    """Over one of the Rust daemon's size limits (:data:`.diff_allow.RUST_MAX_REQUEST`,
    :data:`.diff_allow.RUST_MAX_BUFFER`): a forced header length, a ``size`` of the
    requests it checks, or a BATCH_FORGET's entries (its forced ``count``, else how many)."""
    if step.length is not None and step.length > RUST_MAX_REQUEST:
        return True
    f = step.fields if isinstance(step.fields, dict) else {}
    if _op_name(step.op) in RUST_SIZE_CHECKED:
        size = f.get("size")
        return isinstance(size, int) and size > RUST_MAX_BUFFER
    if step.op == O.FUSE_BATCH_FORGET:
        count = f.get("count")
        if not isinstance(count, int):
            count = len(f.get("entries") or [])
        return count * RUST_FORGET_ONE > RUST_MAX_BUFFER
    return False


def _base(h: DaemonHarness) -> str:
    return h.canaries.base if h.canaries is not None else ""


# -- the loop --------------------------------------------------------------------------------


@dataclass
class DiffStats:
    daemons: tuple[str, str]
    versions: tuple[str, str] = ("", "")
    programs: int = 0
    requests: int = 0
    compared: int = 0
    uncompared: int = 0
    seconds: float = 0.0
    starts: int = 0
    corpus_size: int = 0
    outcome_classes: int = 0  # distinct (outcome class, daemon) pairs seen
    # signature -> {count, op, kind, errnos, detail, allowed (reason) or None}
    divergences: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)  # divergences not allowed
    daemon_findings: list[Finding] = field(default_factory=list)  # crashes etc. of either
    canary_checks: int = 0
    error: str | None = None

    @property
    def per_second(self) -> float:
        return self.programs / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {"daemons": list(self.daemons), "versions": list(self.versions),
                "programs": self.programs, "requests": self.requests,
                "compared": self.compared, "uncompared": self.uncompared,
                "seconds": round(self.seconds, 1), "canary_checks": self.canary_checks,
                "outcome_classes": self.outcome_classes,
                "divergences": dict(sorted(self.divergences.items())),
                "findings": [f.signature for f in self.findings],
                "daemon_findings": [f.signature for f in self.daemon_findings]}


def _reproducer(label: str, labels: tuple[str, str], hs: tuple[DaemonHarness, DaemonHarness],
                prog: list[Step], d: Divergence, pr: PairResult) -> dict[str, Any]:
    by = [dict(zip(r.steps, r.outcomes, strict=False)) for r in (pr.a, pr.b)]
    return {
        "target": "diff", "pair": label, "daemons": list(labels),
        "daemon_kinds": [h.installation.kind for h in hs],
        "daemon_binaries": [h.installation.binary for h in hs],
        "finding": {"kind": "divergence", "signature": d.signature(label),
                    "detail": d.detail, "step": d.step},
        "program": program_to_json(prog),
        "replies": [o[d.step].reply.hex() if d.step in o else None for o in by],
        "requests": [list(h.history) for h in hs],
        "setup": "none: a sequence program (fuseproto.fuzz.sequences) on each daemon, fresh "
                 "identical shares (fuseproto.fuzz.harness), INIT is its first request",
    }


def pair_exchange(names: tuple[str, ...] | list[str],
                  hs: tuple[DaemonHarness, DaemonHarness]) -> list[tuple[int, int, bytes, int]]:
    """Both daemons' exchanges for one pcap: the first daemon's messages, then the
    second's, each after an annotation naming the daemon (the programs are the same, so
    are the uniques: one daemon after the other keeps every reply paired)."""
    out: list[tuple[int, int, bytes, int]] = []
    for name, h in zip(names, hs, strict=True):
        ex = list(h.exchange)
        ts = ex[0][3] if ex else time.time_ns()
        out.append((Direction.ANNOTATION, 0, f"daemon {name}: the program's exchange"
                    .encode(), ts))
        out += ex
    return out


def _record(stats: DiffStats, store: FindingStore, label: str, pr: PairResult,
            prog: list[Step], hs: tuple[DaemonHarness, DaemonHarness]) -> int:
    """Count the divergences; file the ones not allowed. Returns how many signatures were
    new to this run."""
    new = 0
    for d in pr.divergences:
        sig = d.signature(label)
        slot = stats.divergences.get(sig)
        if slot is None:
            new += 1
            slot = stats.divergences[sig] = {
                "count": 0, "op": d.op, "kind": d.kind, "errnos": list(d.errnos),
                "detail": d.detail, "allowed": d.allowed.reason if d.allowed else None}
        slot["count"] += 1
        if d.allowed is None:
            f = Finding("diff", "divergence", sig, f"{d.op}: {d.kind}: {d.detail}"[:300],
                        daemon=label, evidence={"op": d.op, "kind": d.kind,
                                                "errnos": list(d.errnos), "step": d.step})
            f = store.add(f, _reproducer(label, stats.daemons, hs, prog, d, pr), ".json",
                          exchange=pair_exchange(stats.daemons, hs))
            if all(x.signature != f.signature for x in stats.findings):
                stats.findings.append(f)
    return new


def fuzz_diff(inst_a: daemons.Installation, inst_b: daemons.Installation, *, seconds: float,
              store: FindingStore, seed: int = 0, hang_timeout: float = 0.5,
              labels: tuple[str, str] | None = None, max_programs: int | None = None,
              programs: list[list[Step]] | None = None,
              harnesses: tuple[DaemonHarness, DaemonHarness] | None = None) -> DiffStats:
    """Run programs on ``inst_a`` and ``inst_b`` (the C-kind daemon first: the allow-list's
    errno pairs are (C, Rust)) for ``seconds`` or ``max_programs``; unexplained
    divergences and either daemon's own findings go to ``store``. ``programs``: run these
    first (then random and mutated ones). ``harnesses``: two unstarted
    :class:`DaemonHarness` (``setup=False``) to use instead of plain ones (closed at the
    end)."""
    la, lb = labels or (inst_a.kind, inst_b.kind)
    label = diff_label(la, lb)
    rng = random.Random(seed ^ 0xD1FF)
    stats = DiffStats((la, lb))
    side = (DaemonStats(la), DaemonStats(lb))
    corpus: Corpus[list[Step]] = Corpus(2000)
    pending = list(programs or []) + [random_program(rng) for _ in range(8)]
    seen_classes: set[tuple[str, str]] = set()
    t0 = time.monotonic()
    deadline = t0 + seconds
    try:
        ha0, hb0 = harnesses or (
            DaemonHarness(inst_a, hang_timeout=hang_timeout, setup=False, history=100_000),
            DaemonHarness(inst_b, hang_timeout=hang_timeout, setup=False, history=100_000))
        with ha0 as ha, hb0 as hb:
            stats.versions = (ha.version(), hb.version())
            side[0].version, side[1].version = stats.versions
            while time.monotonic() < deadline and (max_programs is None
                                                   or stats.programs < max_programs):
                if pending:
                    prog = pending.pop(0)
                elif rng.random() < 0.25 or not len(corpus):
                    prog = random_program(rng)
                else:
                    prog = mutate_program(corpus.choose(rng), rng)
                try:
                    pr = run_pair(ha, hb, prog)
                except (DaemonError, TransportError) as e:
                    stats.error = f"program aborted: {e}"
                    break
                stats.programs += 1
                stats.canary_checks += 2
                stats.requests += len(pr.a.outcomes) + len(pr.b.outcomes)
                stats.compared += pr.compared
                stats.uncompared += pr.uncompared
                new = _record(stats, store, label, pr, prog, (ha, hb))
                for k, (h, r, lab) in enumerate(((ha, pr.a, la), (hb, pr.b, lb))):
                    for out in [*r.outcomes, *r.escapes]:
                        if out.finding is not None:
                            record_finding(side[k], store, h, lab, out, program_to_json(prog))
                    for out in r.outcomes:
                        if (out.cls, lab) not in seen_classes:
                            seen_classes.add((out.cls, lab))
                            new += 1
                if new:
                    corpus.add(prog, 1 + min(new, 8))
            stats.starts = ha.starts + hb.starts
    finally:
        stats.seconds = time.monotonic() - t0
    stats.corpus_size = len(corpus)
    stats.outcome_classes = len(seen_classes)
    stats.daemon_findings = side[0].findings + side[1].findings
    return stats


def _doc_installations(doc: dict[str, Any], specs: tuple[str | None, str | None]
                       ) -> tuple[daemons.Installation, daemons.Installation]:
    """The two daemons of a diff reproducer: ``specs`` when given, else each by its label
    (a kind or variant), or by its recorded binary and kind for a path's label."""
    from .harness import resolve_installation

    labels = list(doc.get("daemons") or ["c", "rust"])
    binaries = list(doc.get("daemon_binaries") or [None, None])
    kinds = list(doc.get("daemon_kinds") or [None, None])
    out = []
    for k in range(2):
        spec = specs[k]
        kind = None
        if spec is None:
            spec = labels[k]
            if spec not in daemons.KINDS and spec not in daemons.VARIANTS and binaries[k]:
                spec, kind = binaries[k], kinds[k]
        out.append(resolve_installation(spec, kind))
    return out[0], out[1]


def diff_verdict(doc: dict[str, Any], specs: tuple[str | None, str | None] = (None, None),
                 hang_timeout: float = 0.5) -> dict[str, Any]:
    """Run a diff reproducer's program on two fresh daemons (``specs``, default the pair
    it was found on); the verdict says whether the same divergence signature came back
    unexplained (``reproduced``) and which ones did (``seen``, the allow-listed ones marked
    ``(allowed)``). One the allow-list now explains is not reproduced: ``allowed`` gives
    its reason."""
    inst_a, inst_b = _doc_installations(doc, specs)
    prog = program_from_json(doc["program"])
    label = doc.get("pair") or diff_label(inst_a.kind, inst_b.kind)
    with DaemonHarness(inst_a, hang_timeout=hang_timeout, setup=False) as ha, \
            DaemonHarness(inst_b, hang_timeout=hang_timeout, setup=False) as hb:
        pr = run_pair(ha, hb, prog)
    expected = (doc.get("finding") or {}).get("signature")
    seen = sorted({d.signature(label) + (" (allowed)" if d.allowed else "")
                   for d in pr.divergences})
    same = [d for d in pr.divergences if d.signature(label) == expected]
    hit = next((d for d in same if d.allowed is None), None)
    verdict: dict[str, Any] = {"target": "diff", "daemons": [inst_a.binary, inst_b.binary],
                               "reproduced": hit is not None, "expected": expected,
                               "seen": seen}
    if hit is None and same and same[0].allowed is not None:
        verdict["allowed"] = same[0].allowed.reason
    if hit is not None:
        verdict.update(kind="divergence", signature=expected,
                       summary=f"{hit.op}: {hit.kind}: {hit.detail}", step=hit.step)
    return verdict

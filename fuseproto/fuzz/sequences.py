"""Stateful sequences for the virtiofsd target: short programs, not single requests.

A single hostile request rarely gets past LOOKUP: its node id and file handle are
whatever the mutator guessed. A *program* is a list of steps run against a fresh daemon
(no harness setup): INIT first (offering, or not, FUSE_MAP_ALIGNMENT / FUSE_INIT_EXT,
sometimes at an old minor), then LOOKUP/CREATE/OPEN of files in the daemon's scratch
directory, READ/WRITE, SETUPMAPPING/REMOVEMAPPING (aligned, misaligned, overlapping,
beyond any window, 0..300 entries with a ``count`` that lies), FORGET/BATCH_FORGET with
an ``nlookup`` above the lookups, INTERRUPT of a request in flight or long finished,
several requests in flight on one kick, DESTROY and requests after it.

References are resolved at run time from earlier replies, so the requests are deep:
``Step.node`` and any *negative* body value for ``fh``, INTERRUPT's ``unique`` or a
BATCH_FORGET entry's ``nodeid`` index the pools the program has filled so far (-1: the
newest node id a LOOKUP/CREATE returned, the newest fh an OPEN/CREATE/OPENDIR returned,
the newest unique sent), and so do LINK's ``oldnodeid`` and RENAME's ``newdir``;
non-negative values are sent as they are. Steps with the same non-zero ``group`` that
follow each other go in flight together on one kick. One random step in ten is an escape
attempt (:func:`.canaries.escape_request`: ``..``, absolute names, names with ``/``,
symlinks out, another file's handle or node id), judged by the escape canaries.

Every request is built by :func:`fuseproto.wire.codec.encode_request` (``length=`` and
``count`` forced where a step lies) and sent through :meth:`DaemonHarness.send_many`, so
:func:`~fuseproto.fuzz.sanitizer.sanitize` and the daemon sandbox apply to each one.
Each program runs on a daemon of its own, taken from the harness's warm spares
(:mod:`.spare`: started, connected, not yet INITed, made in the background while the
previous program runs; its own edge map). Programs are mutated structurally (:func:`mutate_program`: insert / delete / swap /
duplicate / regroup steps, or one step's fields through :func:`.mutate.mutate_body`).

:func:`fuzz_sequences` keeps a program that lit new daemon edges (an instrumented daemon,
:class:`~fuseproto.fuzz.virtiofsd.EdgeFeedback`; each program's fresh daemon start is
absorbed, not credited) with energy in proportion to them, and one that reached a new
outcome class or depth; programs with new edges are saved to ``corpus_dir`` as JSON and
read back at the next start.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from construct import Container, ListContainer

from .. import daemons
from ..dax.invariants import Violation
from ..dax.virtiofsd import check_backend_record
from ..errors import DaemonError, EncodeError, TransportError
from ..transport.window import PAGE
from ..wire import codec
from ..wire.constants import FATTR, FUSE_KERNEL_VERSION, GetattrFlags, InitFlags
from ..wire.constants import fuse_opcode as O
from . import mutate, seeds
from .canaries import escape_request
from .configs import ConfigChooser
from .corpus import Corpus, energy_for
from .coverage import CoverageMap
from .dax_programs import accepted_but_invalid, dax_program, fd_access_violations, mapping_kind
from .findings import FindingStore
from .forensics import FATAL, Outcome
from .harness import DAX_WINDOW, DaemonHarness
from .steer import Steer
from .steps import C as _C
from .steps import Step
from .virtiofsd import DaemonStats, EdgeFeedback, record_finding

__all__ = ["Step", "ProgramResult", "random_program", "mutate_program", "run_program",
           "handle_tags", "DIR_FH_OPS", "FH_OPS",
           "fuzz_sequences", "program_to_json", "program_from_json", "DEPTHS"]

# How deep a program got into the daemon's state (the report's "deepest state").
DEPTHS = ("none", "initialized", "looked-up", "opened", "io-done", "mapping-sent",
          "mapping-accepted", "destroyed-then-served")
_MAP_OPS = (O.FUSE_SETUPMAPPING, O.FUSE_REMOVEMAPPING)
_FILES = (b"file", b"small", b"empty", b"dir", b"link", b"dir/inner", b"nope")
_MIB2 = 2 << 20
_INIT_CHOICES = (
    seeds.INIT_FLAGS,
    seeds.INIT_FLAGS & ~int(InitFlags.FUSE_MAP_ALIGNMENT),
    seeds.INIT_FLAGS & ~int(InitFlags.FUSE_INIT_EXT),
    seeds.INIT_FLAGS | int(InitFlags.FUSE_HAS_INODE_DAX),
    0,
    (1 << 64) - 1,
)


def _mapping_values(rng: random.Random) -> tuple[int, int, int]:
    """(foffset, len, moffset): aligned, misaligned, overlapping or out of any window."""
    kind = rng.random()
    if kind < 0.1:  # at the end of the fuzzer's DAX window: just inside, at, one page past
        ln = rng.choice((4096, _MIB2))
        return 0, ln, DAX_WINDOW - ln + rng.choice((-4096, 0, 0, 4096))
    if kind < 0.4:  # aligned 2 MiB chunks (virtio-fs's DAX granule)
        return (rng.randrange(4) * _MIB2, _MIB2 * rng.choice((1, 1, 2)), rng.randrange(8) * _MIB2)
    if kind < 0.6:  # page aligned, small
        return rng.randrange(16) * 4096, 4096 * rng.choice((1, 2, 16)), rng.randrange(64) * 4096
    if kind < 0.8:  # misaligned
        return rng.randrange(1, 4096), rng.choice((0, 1, 4095, 4097)), rng.randrange(1, 4096)
    return (rng.choice(mutate.INTERESTING_INTS), rng.choice(mutate.INTERESTING_INTS),
            rng.choice(((1 << 64) - _MIB2, 1 << 40, (1 << 64) - 1, 1 << 34)))


def _entries(rng: random.Random) -> list[Container]:
    n = rng.choice((0, 1, 2, 3, 16, *mutate.AT_REMOVEMAPPING_MAX, 300))
    out: list[Container] = []
    for i in range(n):
        if i and rng.random() < 0.3:
            out.append(Container(out[-1]))  # the same range again (overlap)
        else:
            _, ln, mo = _mapping_values(rng)
            out.append(_C(moffset=mo, len=ln))
    entries: list[Container] = ListContainer(out)
    return entries


def random_step(rng: random.Random) -> Step:
    """One step from the templates (weights favour the deep paths); one in ten an escape
    attempt (:func:`.canaries.escape_request`)."""
    r = rng.random()
    if r < 0.1:
        op, body, node = escape_request(rng)
        return Step(op, body, node=node)
    r = rng.random()
    if r < 0.12:
        return Step(O.FUSE_LOOKUP, _C(name=rng.choice(_FILES)), node=1)
    if r < 0.18:
        flags = rng.choice((0o2 | 0o100, 0o2 | 0o100 | 0o1000, 0o2 | 0o100 | 0o200, 0o2))
        return Step(O.FUSE_CREATE, _C(flags=flags, mode=rng.choice((0o644, 0o100644, 0)),
                                      umask=0o022, open_flags=0,
                                      name=b"new%d" % rng.randrange(4)), node=1)
    if r < 0.28:
        return Step(O.FUSE_OPEN, _C(flags=rng.choice((0, 1, 2, 0o2 | 0o1000, 0o40002)),
                                    open_flags=0), node=-1)
    if r < 0.31:
        return Step(O.FUSE_OPENDIR, _C(flags=0, open_flags=0), node=-1)
    if r < 0.39:
        return Step(O.FUSE_READ, _C(fh=-1, offset=rng.choice((0, 100, 4096, 65535, 1 << 40)),
                                    size=rng.choice((0, 1, 100, 4096, 65536, 1 << 20)),
                                    read_flags=0, lock_owner=0, flags=0), node=-1,
                    variant=rng.randrange(5) if rng.random() < 0.3 else 0)
    if r < 0.45:
        return Step(O.FUSE_WRITE, _C(fh=-1, offset=rng.choice((0, 4096, 1 << 20)), size=None,
                                     write_flags=0, lock_owner=0, flags=0,
                                     data=b"w" * rng.choice((0, 1, 100, 4096))), node=-1)
    if r < 0.60:
        fo, ln, mo = _mapping_values(rng)
        return Step(O.FUSE_SETUPMAPPING, _C(fh=-1, foffset=fo, len=ln,
                                            flags=rng.choice((0, 1, 2, 3, 0xFFFF_FFFF_FFFF_FFFF)),
                                            moffset=mo), node=-1)
    if r < 0.70:
        entries = _entries(rng)
        count = None if rng.random() < 0.5 else rng.choice((
            0, 1, *mutate.AT_REMOVEMAPPING_MAX, 300, len(entries) + 1, 0xFFFF_FFFF))
        return Step(O.FUSE_REMOVEMAPPING, _C(count=count, entries=entries), node=-1)
    if r < 0.75:
        return Step(O.FUSE_FORGET, _C(nlookup=rng.choice((1, 2, 1000, (1 << 64) - 1))), node=-1)
    if r < 0.79:
        entries = ListContainer(_C(nodeid=-rng.randrange(1, 3),
                                   nlookup=rng.choice((1, 5, (1 << 64) - 1)))
                                for _ in range(rng.choice((1, 2, 3))))
        return Step(O.FUSE_BATCH_FORGET, _C(count=None, dummy=0, entries=entries), node=0)
    if r < 0.86:
        return Step(O.FUSE_INTERRUPT, _C(unique=-rng.randrange(1, 4)), node=0)
    if r < 0.90:
        return Step(O.FUSE_RELEASE, _C(fh=-1, flags=0, release_flags=0, lock_owner=0), node=-1)
    if r < 0.94:
        return Step(O.FUSE_GETATTR, _C(getattr_flags=0, fh=0), node=-1)
    if r < 0.97:
        return Step(O.FUSE_FLUSH, _C(fh=-1, unused=0, padding=0, lock_owner=0), node=-1)
    return Step(O.FUSE_DESTROY, _C(), node=0)


def init_step(rng: random.Random) -> Step:
    flags, flags2 = InitFlags(rng.choice(_INIT_CHOICES)).words()
    # 7.27 is below what the C daemon accepts (EPROTO, then EIO for everything): rare.
    minor = rng.choice((46, 46, 46, 46, 46, 38, 31, 27))
    return Step(O.FUSE_INIT, _C(major=FUSE_KERNEL_VERSION, minor=minor, max_readahead=131072,
                                flags=flags, flags2=flags2, unused=[0] * 11), node=0)


def random_program(rng: random.Random, max_steps: int = 16) -> list[Step]:
    """INIT, then a deep path (LOOKUP -> OPEN -> I/O and mappings) with random steps."""
    prog = [init_step(rng)]
    name = rng.choice((b"file", b"file", b"small", b"empty"))
    prog.append(Step(O.FUSE_LOOKUP, _C(name=name), node=1))
    if rng.random() < 0.8:
        prog.append(Step(O.FUSE_OPEN, _C(flags=2, open_flags=0), node=-1))
    for _ in range(rng.randrange(1, max_steps - len(prog))):
        prog.append(random_step(rng))
    if rng.random() < 0.3:
        _regroup(prog, rng)
    if rng.random() < 0.15:
        prog.insert(rng.randrange(2, len(prog) + 1), Step(O.FUSE_DESTROY, _C(), node=0))
    return prog


def _regroup(prog: list[Step], rng: random.Random) -> None:
    """Put a run of 2..4 consecutive steps in flight together."""
    if len(prog) < 3:
        return
    i = rng.randrange(1, len(prog) - 1)
    g = rng.randrange(1, 1 << 16)
    for s in prog[i:i + rng.randint(2, 4)]:
        s.group = g


def mutate_program(prog: list[Step], rng: random.Random, max_steps: int = 32) -> list[Step]:
    """A structural change: insert / delete / swap / duplicate / regroup steps, or change
    one step's fields through the codec's body shapes (:func:`.mutate.mutate_body`),
    its node reference, reply area or forced header length."""
    p = copy.deepcopy(prog)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        if (r < 0.2 or not p) and len(p) < max_steps:
            p.insert(rng.randrange(len(p) + 1), random_step(rng))
        elif r < 0.32 and len(p) > 1:
            del p[rng.randrange(len(p))]
        elif r < 0.42 and len(p) > 1:
            i, j = rng.randrange(len(p)), rng.randrange(len(p))
            p[i], p[j] = p[j], p[i]
        elif r < 0.52 and len(p) < max_steps:
            i = rng.randrange(len(p))
            p.insert(i + 1, copy.deepcopy(p[i]))
        elif r < 0.6:
            _regroup(p, rng)
        elif r < 0.85:
            s = p[rng.randrange(len(p))]
            s.fields = mutate.mutate_body(s.fields, rng)
        elif r < 0.92:
            s = p[rng.randrange(len(p))]
            s.node = rng.choice((-1, -2, 0, 1, 2, 1 << 40, (1 << 64) - 1))
        elif r < 0.96:
            p[rng.randrange(len(p))].variant = rng.randrange(5)
        else:
            s = p[rng.randrange(len(p))]
            s.length = rng.choice((0, 1, 39, 40, 41, 64, 4096, 0xFFFF_FFFF))
    return p


# -- running ---------------------------------------------------------------------------------


@dataclass
class ProgramResult:
    outcomes: list[Outcome] = field(default_factory=list)  # one per request sent
    depth: int = 0  # index into DEPTHS
    mappings: list[tuple[str, str, str]] = field(default_factory=list)  # (op, kind, answer)
    fatal: Outcome | None = None  # the crash/exit/hang outcome that ended it, if any
    skipped: int = 0  # steps the codec would not encode
    # With a DAX daemon: what its backend-channel record and its answers break (the DAX
    # invariants on what it actually mapped, and mapping requests it should have refused).
    dax_violations: list[Violation] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # the program step each outcome answers
    # Escape canary breaches seen after the program (harness.check_canaries).
    escapes: list[Outcome] = field(default_factory=list)
    # Per outcome: a node id sent (the header's, LINK's oldnodeid, RENAME's newdir) had
    # been named by an earlier FORGET or BATCH_FORGET of the program (the root's 1 once
    # they forgot ROOT_COUNT lookups of it; a kernel never sends such an id).
    stale: list[bool] = field(default_factory=list)
    # Per outcome: what the request's ``fh`` is (:func:`handle_tags`): "guessed-fh",
    # "fh-other-kind", "fh-other-node" (empty: a handle opened for this node, of its kind);
    # and "append-differs" for a WRITE whose O_APPEND is not its handle's (_append_differs).
    handles: list[frozenset[str]] = field(default_factory=list)


#: Requests whose ``fh`` is a directory handle (OPENDIR's); any other ``fh`` is a file's.
DIR_FH_OPS = (O.FUSE_READDIR, O.FUSE_READDIRPLUS, O.FUSE_RELEASEDIR, O.FUSE_FSYNCDIR)
#: Requests the daemons serve through their ``fh`` (GETATTR with FUSE_GETATTR_FH and
#: SETATTR with FATTR_FH too; elsewhere an ``fh`` field is not looked at).
FH_OPS = (*DIR_FH_OPS, O.FUSE_READ, O.FUSE_WRITE, O.FUSE_FLUSH, O.FUSE_FSYNC, O.FUSE_RELEASE,
          O.FUSE_LSEEK, O.FUSE_FALLOCATE, O.FUSE_COPY_FILE_RANGE, O.FUSE_SETUPMAPPING,
          O.FUSE_GETLK, O.FUSE_SETLK, O.FUSE_SETLKW, O.FUSE_IOCTL, O.FUSE_POLL)


def _uses_fh(op: int, body: dict[str, Any]) -> bool:
    if op == O.FUSE_GETATTR:
        return bool(int(body.get("getattr_flags") or 0) & GetattrFlags.FUSE_GETATTR_FH)
    if op == O.FUSE_SETATTR:
        return bool(int(body.get("valid") or 0) & FATTR.FATTR_FH)
    return op in FH_OPS


def handle_tags(step: Step, nodeid: int, body: Any, origins: list[tuple[int, str]]
                ) -> frozenset[str]:
    """What the ``fh`` a request of :data:`FH_OPS` carries is, against ``origins`` (per
    handle the program was given so far, in the order of its pool: the node it was opened
    for and "file" or "dir"): "guessed-fh" for a literal (or a reference before any handle
    was given), "fh-other-kind" for a directory's handle on a file request or a file's on
    a directory request, "fh-other-node" for a handle opened for another node id."""
    raw = step.fields.get("fh") if isinstance(step.fields, dict) else None
    if not isinstance(raw, int) or not isinstance(body, dict) or "fh" not in body \
            or not _uses_fh(step.op, body):
        return frozenset()
    if raw >= 0 or not origins:
        return frozenset({"guessed-fh"})
    node, kind = origins[raw % len(origins)]
    tags = set()
    if kind != ("dir" if step.op in DIR_FH_OPS else "file"):
        tags.add("fh-other-kind")
    if node != nodeid:
        tags.add("fh-other-node")
    return frozenset(tags)


def _append_differs(op: int, body: Any, appending: set[int]) -> bool:
    """A WRITE whose ``flags`` say O_APPEND where its handle was opened without it, or
    the other way round (a kernel copies the file's flags into every WRITE)."""
    if op != O.FUSE_WRITE or not isinstance(body, dict) or not isinstance(body.get("fh"), int):
        return False
    return bool(int(body.get("flags") or 0) & os.O_APPEND) != (body["fh"] in appending)


def _pick(pool: list[int], ref: int) -> int:
    return pool[ref % len(pool)] if pool else 0


def _resolve(step: Step, nodes: list[int], fhs: list[int], uniques: list[int]) -> tuple[int, Any]:
    body = mutate.copy_body(step.fields) if isinstance(step.fields, dict) else step.fields
    nodeid = _pick(nodes, step.node) if step.node < 0 else step.node
    if isinstance(body, dict):
        if isinstance(body.get("fh"), int) and body["fh"] < 0:
            body["fh"] = _pick(fhs, body["fh"])
        if step.op == O.FUSE_INTERRUPT and isinstance(body.get("unique"), int) \
                and body["unique"] < 0:
            body["unique"] = _pick(uniques, body["unique"])
        for e in body.get("entries") or []:
            if isinstance(e, dict) and isinstance(e.get("nodeid"), int) and e["nodeid"] < 0:
                e["nodeid"] = _pick(nodes, e["nodeid"])
        for key in ("oldnodeid", "newdir"):  # LINK's source, RENAME's target directory
            if isinstance(body.get(key), int) and body[key] < 0:
                body[key] = _pick(nodes, body[key])
    return nodeid, body


#: The lookup count both daemons give the root at start (passthrough_ll.c: root->nlookup
#: = 2; the Rust passthrough's root InodeData: refcount 2).
ROOT_COUNT = 2


def _named_nodes(body: Any) -> set[int]:
    """The node ids a request's body names (LINK's ``oldnodeid``, RENAME's ``newdir``)."""
    if not isinstance(body, dict):
        return set()
    return {v for k in ("oldnodeid", "newdir") if isinstance(v := body.get(k), int)}


def _forgets(op: int, nodeid: int, body: Any) -> list[tuple[int, int]]:
    """(node id, nlookup) of each forget a FORGET (its header's) or a BATCH_FORGET (its
    entries') carries."""
    def count(x: Any) -> int:
        return x if isinstance(x, int) else 0
    if op == O.FUSE_FORGET:
        return [(nodeid, count(body.get("nlookup") if isinstance(body, dict) else 0))]
    if op == O.FUSE_BATCH_FORGET and isinstance(body, dict):
        return [(e["nodeid"], count(e.get("nlookup"))) for e in body.get("entries") or []
                if isinstance(e, dict) and isinstance(e.get("nodeid"), int)]
    return []


def _config_init(body: Any, demanded: int) -> Any:
    """An INIT body with the flags its daemon's config demands ORed in (a daemon with ACLs
    or security labels refuses an INIT without them; :mod:`fuseproto.daemons.options`)."""
    if not demanded or not isinstance(body, dict) or not isinstance(body.get("flags"), int):
        return body
    lo, hi = InitFlags(demanded).words()
    body["flags"] = (body["flags"] | lo) & 0xFFFFFFFF
    if isinstance(body.get("flags2"), int):
        body["flags2"] = (body["flags2"] | hi) & 0xFFFFFFFF
    return body


def run_program(h: DaemonHarness, prog: list[Step]) -> ProgramResult:
    """Run ``prog`` on ``h`` (a :class:`DaemonHarness` with ``setup=False``), restarted
    fresh first. Stops at the first crash, exit or hang."""
    h.start()
    res = ProgramResult()
    nodes: list[int] = [1]
    fhs: list[int] = []
    origins: list[tuple[int, str]] = []  # per fh in fhs: the node it was opened for, its kind
    fh_mode: dict[int, int] = {}  # fh -> O_ACCMODE it was opened with
    appending: set[int] = set()  # fhs opened with O_APPEND
    uniques: list[int] = []
    forgotten: set[int] = set()  # node ids a FORGET / BATCH_FORGET sent so far named
    root_forgot = 0  # lookups of the root those forgot (both daemons start it at ROOT_COUNT)
    destroyed = False
    i = 0
    batch = 0
    while i < len(prog):
        j = i + 1
        if prog[i].group:
            while j < len(prog) and prog[j].group == prog[i].group:
                j += 1
        group = prog[i:j]
        first, i = i, j
        items: list[tuple[bytes, int]] = []
        built: list[Step] = []
        bodies: list[Any] = []
        idxs: list[int] = []
        stale: list[bool] = []
        handles: list[frozenset[str]] = []
        sent_to: list[int] = []  # the node id of each request built
        for n, step in enumerate(group, first):
            h.unique += 2
            nodeid, body = _resolve(step, nodes, fhs, uniques)
            if step.op == O.FUSE_INIT and h.config is not None:
                body = _config_init(body, h.config.init_flags)
            try:
                data = codec.encode_request(step.op, body, unique=h.unique, nodeid=nodeid,
                                            uid=0, gid=0, pid=1, minor=h.minor, flags=h.flags,
                                            length=step.length)
            except (EncodeError, ValueError, TypeError, OverflowError):
                res.skipped += 1
                continue
            uniques.append(h.unique)
            items.append((data, step.variant))
            built.append(step)
            bodies.append(body)
            idxs.append(n)
            stale.append(bool(({nodeid} | _named_nodes(body)) & forgotten))
            handles.append(handle_tags(step, nodeid, body, origins) | (
                {"append-differs"} if _append_differs(step.op, body, appending) else set()))
            sent_to.append(nodeid)
            for node, n in _forgets(step.op, nodeid, body):
                if node != 1:
                    forgotten.add(node)
                else:
                    root_forgot += n
                    if root_forgot >= ROOT_COUNT:  # gone from both daemons' tables
                        forgotten.add(1)
        if not items:
            continue
        batch += 1
        seen = len(h.dax.events) if h.dax is not None else 0
        outs = h.send_many(items, batch=batch)
        res.outcomes += outs
        res.steps += idxs[:len(outs)]
        res.stale += stale[:len(outs)]
        res.handles += handles[:len(outs)]
        for k, (step, out) in enumerate(zip(built, outs, strict=False)):
            err = _errno(out)
            if step.op in _MAP_OPS:
                kind = mapping_kind(step, DAX_WINDOW) + ("" if res.depth else ", no INIT accepted")
                res.mappings.append((O(step.op).name, kind, _answer(out, err, h.kind)))
                res.depth = max(res.depth, 6 if err == 0 else 5 if fhs else res.depth)
                if h.dax is not None and h.window is not None:
                    if err == 0:
                        res.dax_violations += accepted_but_invalid(
                            step, bodies[k], fh_mode, h.window, last=k == len(built) - 1)
                    if step.op == O.FUSE_SETUPMAPPING and len(built) == 1:
                        res.dax_violations += fd_access_violations(
                            list(h.dax.events)[seen:], bodies[k].get("fh"), fh_mode)
            if out.finding is None and err == 0:
                had, had_nodes = len(fhs), len(nodes)
                _learn(step, out, h, nodes, fhs, res, destroyed)
                if len(fhs) > had:  # (CREATE: the handle is the new node's, learnt with it)
                    created = step.op == O.FUSE_CREATE and len(nodes) > had_nodes
                    origins.append((nodes[-1] if created else sent_to[k],
                                    "dir" if step.op == O.FUSE_OPENDIR else "file"))
                if len(fhs) > had and step.op in (O.FUSE_OPEN, O.FUSE_CREATE):
                    fh_mode[fhs[-1]] = int(step.fields.get("flags") or 0) & 3
                    if int(step.fields.get("flags") or 0) & os.O_APPEND:
                        appending.add(fhs[-1])
                    else:
                        appending.discard(fhs[-1])  # (C reuses a released number)
                if step.op == O.FUSE_DESTROY:
                    destroyed = True
            if out.finding in FATAL:
                res.fatal = out
                res.escapes = h.check_canaries("program")
                return res
    if h.dax is not None and h.window is not None:
        res.dax_violations += check_backend_record(
            list(h.dax.events), DAX_WINDOW, mapped_bytes=h.window.mapped_pages() * PAGE)
    res.escapes = h.check_canaries("program")
    return res


def _answer(out: Outcome, err: int | None, kind: str) -> str:
    """A mapping request's answer: the errno, or the finding it ran into (crash site)."""
    if out.finding:
        site = out.evidence.get("site") or out.evidence.get("signal") or ""
        return f"{out.finding} ({site[:60]})" if site else out.finding
    return str(err) if err is not None else out.cls.split(":", 1)[-1]


def _errno(out: Outcome) -> int | None:
    parts = out.cls.split(":")
    if len(parts) > 1:
        try:
            return int(parts[1])
        except ValueError:
            return None
    return None


def _learn(step: Step, out: Outcome, h: DaemonHarness, nodes: list[int], fhs: list[int], res: ProgramResult,
           destroyed: bool) -> None:
    op = step.op
    if op == O.FUSE_INIT:
        res.depth = max(res.depth, 1)
        return
    if destroyed:
        res.depth = max(res.depth, 7)
    if op in (O.FUSE_LOOKUP, O.FUSE_CREATE, O.FUSE_OPEN, O.FUSE_OPENDIR):
        try:
            body = codec.decode_reply(out.reply, op, h.minor).body
        except Exception:  # noqa: BLE001 -- the harness already judged the reply
            return
        if body is None:
            return
        if op in (O.FUSE_LOOKUP, O.FUSE_CREATE) and body.get("nodeid"):
            nodes.append(body["nodeid"])
            res.depth = max(res.depth, 2)
        fh = body.get("fh") if op != O.FUSE_CREATE else (body.get("open") or {}).get("fh",
                                                                                      body.get("fh"))
        if fh is not None and op != O.FUSE_LOOKUP:
            fhs.append(fh)
            res.depth = max(res.depth, 3)
    elif op in (O.FUSE_READ, O.FUSE_WRITE) and fhs:
        res.depth = max(res.depth, 4)


# -- (de)serialising programs (reproducers keep the program next to its bytes) ---------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return {"hex": bytes(v).hex()}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _from_jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"hex"}:
            return bytes.fromhex(v["hex"])
        return Container((k, _from_jsonable(x)) for k, x in v.items())
    if isinstance(v, list):
        return ListContainer(_from_jsonable(x) for x in v)
    return v


def program_to_json(prog: list[Step]) -> list[dict[str, Any]]:
    out = []
    for s in prog:
        name: str | int
        try:
            name = O(s.op).name
        except ValueError:
            name = s.op
        out.append({"op": name, "fields": _jsonable(s.fields), "node": s.node,
                    "length": s.length, "variant": s.variant, "group": s.group})
    return out


def program_from_json(doc: list[dict[str, Any]]) -> list[Step]:
    return [Step(O[d["op"]] if isinstance(d["op"], str) else d["op"],
                 _from_jsonable(d["fields"]), d.get("node", 0), d.get("length"),
                 d.get("variant", 0), d.get("group", 0)) for d in doc]


# -- the loop ----------------------------------------------------------------------------------


def fuzz_sequences(installation: daemons.Installation, *, seconds: float, store: FindingStore, seed: int = 0,
                   hang_timeout: float = 0.5, label: str | None = None,
                   max_programs: int | None = None, coverage: CoverageMap | None = None,
                   feedback: str = "auto", corpus_dir: str | Path | None = None,
                   spare: bool = True, configs: bool = False) -> DaemonStats:
    """Fuzz one daemon with programs for ``seconds``; findings go to ``store``. Returns a
    :class:`~fuseproto.fuzz.virtiofsd.DaemonStats` whose ``sequences`` says how many
    programs ran, the deepest state reached and every mapping request's answer, and whose
    ``edges`` the daemon's edges over time (instrumented daemons). ``coverage``,
    ``feedback`` and ``corpus_dir`` as for :func:`~fuseproto.fuzz.virtiofsd.fuzz_daemon`
    (saved programs are JSON). ``spare``: each program takes a daemon made in the
    background (:mod:`.spare`: a warm spare, DAX daemons included), so a program does
    not wait for a start. ``configs``: each program's daemon gets options of its own
    (:mod:`.configs`, credited with what its program gained; its INIT offers the flags
    the config demands). Parents are scheduled by :class:`.steer.Steer` (by new edges,
    or new outcome classes and depths with ``feedback="outcome"``)."""
    label = label or installation.kind
    rng = random.Random(seed ^ 0x5E0)
    stats = DaemonStats(label)
    depths: Counter[str] = Counter()
    mappings: Counter[str] = Counter()
    programs = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    cdir = Path(corpus_dir) if corpus_dir is not None else None
    corpus: Corpus[list[Step]] = Corpus(2000)
    # A DAX daemon gets mostly mapping-aware programs (dax_programs): random steps seldom
    # build the one request near a boundary that a daemon-side DAX bug needs.
    dax = daemons.has_dax(installation)

    def fresh() -> list[Step]:
        if rng.random() < (0.7 if dax else 0.05):
            return dax_program(rng, DAX_WINDOW)
        return random_program(rng)

    for _ in range(8):
        corpus.add(fresh())
    for raw in Corpus.load(cdir, ".json", limit=1000):
        try:
            if corpus.add(program_from_json(json.loads(raw))):
                stats.corpus_loaded += 1
        except (ValueError, KeyError, TypeError):
            continue  # a file from another version of the format
    pending = list(corpus)
    steer = Steer(corpus)
    chooser = ConfigChooser(installation.kind, seed) if configs else None
    seen_depth: set[tuple[int, str]] = set()
    fb = EdgeFeedback(installation, coverage, feedback)
    try:
        with DaemonHarness(installation, hang_timeout=hang_timeout, setup=False,
                           history=100_000, coverage=fb.map, spare=spare,
                           config=chooser) as h:
            fb.started()
            stats.version = h.version()
            while time.monotonic() < deadline and (max_programs is None
                                                   or programs < max_programs):
                if pending:
                    prog = pending.pop(0)
                elif rng.random() < (0.4 if dax else 0.2):
                    prog = fresh()
                else:
                    prog = mutate_program(steer.pick(rng), rng)
                before = fb.map.seen
                try:
                    res = run_program(h, prog)
                except (DaemonError, TransportError) as e:
                    stats.error = f"program aborted: {e}"
                    break
                programs += 1
                stats.requests += len(res.outcomes)
                depths[DEPTHS[res.depth]] += 1
                for op, kind, answer in res.mappings:
                    mappings[f"{op} {kind}: {answer}"] += 1
                new = False
                for out in res.outcomes:
                    if out.cls not in stats.classes:
                        new = True
                    stats.classes[out.cls] = stats.classes.get(out.cls, 0) + 1
                    if out.finding is not None:
                        record_finding(stats, store, h, label, out, program_to_json(prog))
                for out in res.escapes:  # a canary beside the share was touched
                    record_finding(stats, store, h, label, out, program_to_json(prog))
                for v in res.dax_violations:  # one finding per invariant (by signature)
                    out = Outcome(f"{v.invariant}:dax", "dax", f"{v.invariant}: {v.detail}",
                                  {"invariant": v.invariant})
                    record_finding(stats, store, h, label, out, program_to_json(prog))
                key = (res.depth, ",".join(sorted({k for _, k, _ in res.mappings})))
                if key not in seen_depth:
                    seen_depth.add(key)
                    new = True
                edges = fb.new_edges()
                gain = edges if fb.steering else int(new)
                steer.reward(gain)  # a fresh program was no pick: ignored
                if chooser is not None:
                    # Steering by edges, the config also gets the edges its daemon's
                    # start lit (absorbed: no program's, and no reply shows them).
                    start = fb.map.seen - before - edges if fb.steering else 0
                    chooser.credit(h.config, gain + start)
                if not pending and not stats.seed_edges:
                    stats.seed_edges = fb.map.seen if fb.measured else 0
                if fb.steering and edges:
                    doc = json.dumps(program_to_json(prog), sort_keys=True).encode()
                    if steer.add(prog, energy_for(edges)) and Corpus.save(cdir, doc, ".json"):
                        stats.corpus_saved += 1
                elif new:
                    steer.add(prog)
            stats.starts = h.starts
            stats.add_slow(h.slow)
            if chooser is not None:
                stats.configs = chooser.summary()
        stats.edges = fb.summary()
        if stats.edges:
            stats.edges["seed_edges"] = stats.seed_edges
    finally:
        fb.close()
    stats.seconds = time.monotonic() - t0
    stats.outcome_classes = len(stats.classes)
    stats.corpus_size = len(corpus)
    deepest = max((DEPTHS.index(d) for d in depths), default=0)
    stats.sequences = {"programs": programs, "requests": stats.requests,
                       "deepest": DEPTHS[deepest], "depths": dict(depths),
                       "mappings": dict(sorted(mappings.items())),
                       "findings": [f.signature for f in stats.findings]}
    return stats

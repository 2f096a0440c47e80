"""Mapping-aware programs for DAX daemons, and the oracles judged on each mapping answer.

Random steps (:func:`.sequences.random_step`) rarely build the request that exposes a
daemon-side DAX bug: one field misaligned and the others right, a range ending exactly one
page past the window, a REMOVEMAPPING of a range that *is* mapped, write access asked
through the read-only one of two handles. :func:`dax_program` keeps a model of what the
program has mapped and what each handle allows, and picks each mapping request from
shapes near the boundaries the protocol draws:

* SETUPMAPPING in the window (2 MiB chunks and 4 KiB pages), ending at the window's end,
  one alignment unit past it, or wrapping; exactly one of foffset / moffset / len off the
  map alignment; read or write access through a read-only or a read-write handle;
* REMOVEMAPPING of ranges mapped before (exact, a part, a superset), of nothing, with
  ``count`` equal to the entries or off by one, and batches above the 256-entry limit;
* READ/WRITE through the handles between them, and DESTROY at the end now and then.

The oracles (:func:`accepted_but_invalid`, :func:`fd_access_violations`) judge what a DAX
daemon answered 0 although the protocol says refuse, and what access the file descriptor
it handed the frontend carried; :func:`~fuseproto.dax.virtiofsd.check_backend_record`
judges the backend-channel record after the program.
"""

from __future__ import annotations

import os
import random
from typing import Any

from construct import ListContainer

from ..dax.forbidden import Request, refusal
from ..dax.invariants import Violation
from ..transport.backend import BackendEvent
from ..transport.vhost_user_proto import VhostUserBackendRequest
from ..transport.window import PAGE, Window
from ..wire.constants import FUSE_KERNEL_VERSION, InitFlags, SetupmappingFlags
from ..wire.constants import fuse_opcode as O
from . import seeds
from .mutate import AT_REMOVEMAPPING_MAX
from .steps import C, Step

__all__ = ["dax_program", "mapping_kind", "accepted_but_invalid", "fd_access_violations"]

MIB2 = 2 << 20
MAP_WRITE = int(SetupmappingFlags.FUSE_SETUPMAPPING_FLAG_WRITE)
MAP_READ = int(SetupmappingFlags.FUSE_SETUPMAPPING_FLAG_READ)
_RDONLY, _RDWR = os.O_RDONLY, os.O_RDWR


def _init() -> Step:
    flags, flags2 = InitFlags(seeds.INIT_FLAGS).words()
    return Step(O.FUSE_INIT, C(major=FUSE_KERNEL_VERSION, minor=46, max_readahead=131072,
                               flags=flags, flags2=flags2, unused=[0] * 11), node=0)


def _off(rng: random.Random) -> int:
    """A misalignment: a byte, half a page, a page and a byte."""
    return rng.choice((1, 512, PAGE // 2, PAGE - 1, PAGE + 1))


def dax_program(rng: random.Random, window: int, max_steps: int = 24) -> list[Step]:
    """INIT (offering FUSE_MAP_ALIGNMENT), LOOKUP of a file, one or two OPENs (read-only
    and/or read-write), then mapping requests chosen against a model of the window (see
    the module docstring). Handles are referenced as -1 (the last OPEN) and -2."""
    prog = [_init(), Step(O.FUSE_LOOKUP, C(name=rng.choice((b"file", b"file", b"small"))),
                          node=1)]
    modes = rng.choice(((_RDONLY, _RDWR), (_RDWR, _RDONLY), (_RDONLY,), (_RDWR,)))
    for m in modes:
        prog.append(Step(O.FUSE_OPEN, C(flags=m, open_flags=0), node=-1))
    mapped: list[tuple[int, int]] = []
    for _ in range(rng.randrange(2, max_steps - len(prog))):
        prog.append(_dax_step(rng, window, mapped, len(modes)))
    if rng.random() < 0.1:
        prog.append(Step(O.FUSE_DESTROY, C(), node=0))
    return prog


def _dax_step(rng: random.Random, window: int, mapped: list[tuple[int, int]],
              handles: int) -> Step:
    fh = -rng.randrange(1, handles + 1)
    r = rng.random()
    if r < 0.45:
        fo, ln, mo = _setup_values(rng, window)
        flags = rng.choice((MAP_READ, MAP_READ, MAP_READ | MAP_WRITE, MAP_WRITE, 0))
        if mo + ln <= window and not (fo | ln | mo) % PAGE:
            mapped.append((mo, ln))
        return Step(O.FUSE_SETUPMAPPING, C(fh=fh, foffset=fo, len=ln, flags=flags, moffset=mo),
                    node=-1)
    if r < 0.8:
        entries = _remove_entries(rng, window, mapped)
        count: int | None = None
        if rng.random() < 0.3:
            count = len(entries) + rng.choice((-1, 1))
        return Step(O.FUSE_REMOVEMAPPING, C(count=count, entries=ListContainer(entries)),
                    node=-1)
    if r < 0.9:
        return Step(O.FUSE_READ, C(fh=fh, offset=rng.choice((0, PAGE, MIB2)),
                                   size=rng.choice((1, PAGE, 65536)), read_flags=0,
                                   lock_owner=0, flags=0), node=-1)
    return Step(O.FUSE_WRITE, C(fh=fh, offset=rng.choice((0, PAGE)), size=None,
                                write_flags=0, lock_owner=0, flags=0,
                                data=b"d" * rng.choice((1, 100, PAGE))), node=-1)


def _setup_values(rng: random.Random, window: int) -> tuple[int, int, int]:
    """(foffset, len, moffset) near the boundaries (see the module docstring)."""
    r = rng.random()
    unit = rng.choice((PAGE, MIB2)) if window >= MIB2 else PAGE
    slots = max(1, window // unit)
    fo = rng.randrange(4) * unit
    ln = unit * rng.choice((1, 1, 1, 2))
    mo = rng.randrange(slots) * unit
    if r < 0.4:  # in the window
        return fo, ln, min(mo, window - ln) if ln <= window else 0
    if r < 0.65:  # at the window's end: inside, one unit past, one page past
        ln = rng.choice((PAGE, unit))
        return fo, ln, window - ln + rng.choice((0, PAGE, unit))
    if r < 0.9:  # exactly one field off the alignment
        which = rng.randrange(3)
        mo = min(mo, window - ln) if ln <= window else 0
        return (fo + _off(rng) if which == 0 else fo,
                ln + _off(rng) if which == 1 else ln,
                mo + _off(rng) if which == 2 else mo)
    return fo, rng.choice((PAGE, unit)), rng.choice(((1 << 64) - PAGE, 1 << 40, window * 2))


def _remove_entries(rng: random.Random, window: int,
                    mapped: list[tuple[int, int]]) -> list[Any]:
    r = rng.random()
    if r < 0.6 and mapped:  # ranges mapped before: exact, first page, a superset
        out = []
        for mo, ln in rng.sample(mapped, min(len(mapped), rng.choice((1, 1, 2, 3)))):
            shape = rng.random()
            if shape < 0.7:
                out.append(C(moffset=mo, len=ln))
            elif shape < 0.85:
                out.append(C(moffset=mo, len=PAGE))
            else:
                out.append(C(moffset=max(0, mo - PAGE), len=min(ln + 2 * PAGE, window)))
        for e in out:
            if (e.moffset, e.len) in mapped:
                mapped.remove((e.moffset, e.len))
        return out
    if r < 0.8:  # nothing mapped there (or anything), in the window
        n = rng.choice((1, 2, 16))
        return [C(moffset=rng.randrange(max(1, window // PAGE)) * PAGE, len=PAGE)
                for _ in range(n)]
    n = rng.choice((*AT_REMOVEMAPPING_MAX, 300))  # about the entry limit
    return [C(moffset=(i * PAGE) % window, len=PAGE) for i in range(n)]


def mapping_kind(step: Step, window: int) -> str:
    """The shape of a mapping request, for the report (accepted and refused per shape)."""
    f = step.fields
    if step.op == O.FUSE_SETUPMAPPING:
        fo, ln, mo = (int(f.get(k, 0) or 0) for k in ("foffset", "len", "moffset"))
        wr = "rw" if int(f.get("flags") or 0) & MAP_WRITE else "ro"
        if not ln:
            return f"len 0 ({wr})"
        bad = [n for n, v in (("foffset", fo), ("len", ln), ("moffset", mo)) if v % PAGE]
        if bad:
            return f"misaligned {'+'.join(bad)} ({wr})"
        if mo + ln > window:
            past = mo + ln - window
            where = "one page" if past == PAGE else "2M" if past == MIB2 else "far"
            return f"past the window end by {where} ({wr})"
        size = "2M" if ln % MIB2 == 0 and mo % MIB2 == 0 else "4K"
        end = ", at the window end" if mo + ln == window else ""
        return f"aligned-{size} in window{end} ({wr})"
    entries = f.get("entries") or []
    count = f.get("count")
    n = len(entries)
    lie = count is not None and count != n
    return f"{'0' if n == 0 else '1' if n == 1 else '2-256' if n <= 256 else '>256'} entries" + (
        ", lying count" if lie else "")


def accepted_but_invalid(step: Step, body: Any, fh_mode: dict[int, int], window: Window,
                         *, last: bool) -> list[Violation]:
    """A mapping request a DAX daemon answered 0 although the protocol says refuse (a row
    of :data:`fuseproto.dax.forbidden.FORBIDDEN`, for the 4 KiB map alignment c-dax
    announces: misaligned fields, past the window or the largest file offset, unknown
    flags, write access through a handle opened read-only, a count that is not the number
    of entries or is 0 or above 256, bad entries), or whose effect is not in the real
    window: a REMOVEMAPPING (the last request of its kick, so nothing remapped since) that
    left one of its ranges mapped."""
    f = step.fields
    size = window.size
    fh = body.get("fh") if hasattr(body, "get") else None
    read_only = isinstance(fh, int) and fh_mode.get(fh) == _RDONLY
    row = refusal(Request.of(step.op, f, size, PAGE, read_only))
    if row is not None:
        return [Violation(row.violation, f"{row.name}: {_describe(step.op, f)} answered 0")]
    if step.op == O.FUSE_REMOVEMAPPING and last:
        for e in f.get("entries") or []:
            mo, ln = int(e.get("moffset") or 0), int(e.get("len") or 0)
            if any(window.is_mapped(p, PAGE) for p in range(mo, mo + ln, PAGE)):
                return [Violation("accepted_unmap_left_mapped",
                                  f"REMOVEMAPPING of [{mo:#x}, {mo + ln:#x}) answered 0, "
                                  "the window still maps part of it")]
    return []


def _describe(op: int, f: Any) -> str:
    if op == O.FUSE_SETUPMAPPING:
        return "SETUPMAPPING " + " ".join(f"{k}={int(f.get(k) or 0):#x}" for k in
                                          ("foffset", "len", "moffset", "flags"))
    entries = f.get("entries") or []
    return (f"REMOVEMAPPING count={f.get('count')} with {len(entries)} entries "
            + " ".join(f"({int(e.get('moffset') or 0):#x}, {int(e.get('len') or 0):#x})"
                       for e in entries[:4]))


def fd_access_violations(events: list[BackendEvent], fh: Any,
                         fh_mode: dict[int, int]) -> list[Violation]:
    """The daemon never hands the frontend more access than the handle allows: every FS_MAP
    a SETUPMAPPING through a read-only ``fh`` caused (``events``) must carry a read-only
    file descriptor, or the VMM could map the file writable."""
    if not isinstance(fh, int) or fh_mode.get(fh) != _RDONLY:
        return []
    out = []
    for ev in events:
        if ev.request == VhostUserBackendRequest.FS_MAP and ev.fd_access not in (None, _RDONLY):
            out.append(Violation("handle_access", f"SETUPMAPPING through fh {fh} (opened "
                                 f"O_RDONLY) sent FS_MAP with an fd of access mode "
                                 f"{ev.fd_access}"))
    return out

"""The DAX mapping requests a daemon must refuse: one table, read by the fuzzers' probes
and by the oracle that judges what a daemon accepted.

Each row of :data:`FORBIDDEN` is one shape the protocol forbids (the rules c-dax carries
out, ``fuseproto/daemons/csrc/dax/0001-dax.patch``, and the model window devices of
:mod:`.device` too): its name, what accepting it is called (the ``accepted_*``
violation), the errno c-dax answers, and two halves that must agree (a test checks that
each row's request is classified as that row):

* ``build(where)`` -- a request of that shape for a geometry (:class:`Where`: the map
  alignment, the window, an aligned window offset, a node and a read-only handle), or
  None when the geometry cannot express it (no alignment to break, a window of less than
  two units). ``fuseproto.fuzz.dax_run``'s ``probe`` operation sends these;
* ``applies(request)`` -- whether a request (:class:`Request`, the fields as sent) has
  the shape. :func:`refusal` returns the first row that applies;
  ``fuseproto.fuzz.dax_programs.accepted_but_invalid`` reports a row a daemon answered 0.

Rows marked ``handles`` need a handle opened read-only (a live daemon; the model has no
handles).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .device import FILE_OFFSET_MAX
from .messages import (
    FLAG_READ,
    FLAG_WRITE,
    FUSE_REMOVEMAPPING,
    FUSE_SETUPMAPPING,
    REMOVEMAPPING_MAX_ENTRY,
    DaxMessage,
    removemapping,
    setupmapping,
)

__all__ = ["FORBIDDEN", "FILE_OFFSET_MAX", "Forbidden", "Request", "Where", "refusal"]

_FLAGS = FLAG_READ | FLAG_WRITE  # every other SETUPMAPPING flag is refused


class Where(NamedTuple):
    """The geometry a row's request is built for."""

    alignment: int  # bytes (2**map_alignment)
    window: int  # bytes
    at: int  # an aligned window offset with at + 2 * alignment <= window
    nodeid: int
    fh: int  # a handle opened read-only (the model: 0)


class Request(NamedTuple):
    """A mapping request's fields as sent (what :meth:`Forbidden.applies` judges).
    ``announced`` None: the count field says the number of entries (the field is not
    called ``count``: a tuple has a method of that name)."""

    opcode: int
    foffset: int = 0
    length: int = 0
    moffset: int = 0
    flags: int = 0
    announced: int | None = None
    entries: tuple[tuple[int, int], ...] = ()
    window: int = 0
    alignment: int = 1
    read_only: bool = False  # sent through a handle opened read-only

    @classmethod
    def of(cls, opcode: int, fields: Mapping[str, Any], window: int, alignment: int,
           read_only: bool = False) -> Request:
        """From a request's fields (a Container or a dict; missing fields are 0)."""
        def num(v: Any) -> int:
            return int(v or 0)

        if opcode == FUSE_SETUPMAPPING:
            return cls(opcode, num(fields.get("foffset")), num(fields.get("len")),
                       num(fields.get("moffset")), num(fields.get("flags")),
                       window=window, alignment=alignment, read_only=read_only)
        ents = tuple((num(e.get("moffset")), num(e.get("len")))
                     for e in fields.get("entries") or ())
        count = fields.get("count")
        return cls(opcode, announced=None if count is None else int(count), entries=ents,
                   window=window, alignment=alignment)

    @classmethod
    def of_message(cls, msg: DaxMessage, window: int, alignment: int,
                   read_only: bool = False) -> Request:
        return cls.of(msg.opcode, msg.body, window, alignment, read_only)

    @property
    def n(self) -> int:
        """The count the request announces."""
        return len(self.entries) if self.announced is None else self.announced


@dataclass(frozen=True)
class Forbidden:
    name: str
    opcode: int
    violation: str  # what a daemon accepting it is reported as
    errno: int  # what c-dax answers
    applies: Callable[[Request], bool]
    build: Callable[[Where], DaxMessage | None]
    handles: bool = False  # needs a read-only handle: live daemons only


def _bad(r: Request, off: int, n: int) -> bool:  # a window range off the alignment
    return bool(off % r.alignment or n % r.alignment)


def _setup(field: str, half: bool = False, **kw: int) -> Callable[[Where], DaxMessage | None]:
    """A one-unit read mapping at ``at`` with ``kw`` changed; ``field`` put off the
    alignment by half a unit when ``half``."""
    def build(w: Where) -> DaxMessage | None:
        if half and w.alignment == 1:
            return None  # no alignment to break
        args = dict(foffset=0, moffset=w.at, length=w.alignment, flags=FLAG_READ) | kw
        if half:
            args[field] += w.alignment // 2
        return setupmapping(w.nodeid, fh=w.fh, foffset=args["foffset"],
                            moffset=args["moffset"], length=args["length"],
                            flags=args["flags"])
    return build


def _remove(entries: Callable[[Where], list[tuple[int, int]]],
            count: Callable[[int], int] | None = None) -> Callable[[Where], DaxMessage]:
    def build(w: Where) -> DaxMessage:
        ents = entries(w)
        return removemapping(0, ents, count=None if count is None else count(len(ents)))
    return build


def _past_window(w: Where) -> DaxMessage:
    a = w.alignment  # the last whole unit, and one more
    return setupmapping(w.nodeid, fh=w.fh, foffset=0, moffset=(w.window // a - 1) * a,
                        length=2 * a, flags=FLAG_READ)


def _file_end(foffset: Callable[[int], int]) -> Callable[[Where], DaxMessage]:
    def build(w: Where) -> DaxMessage:
        return setupmapping(w.nodeid, fh=w.fh, foffset=foffset(w.alignment), moffset=w.at,
                            length=2 * w.alignment, flags=FLAG_READ)
    return build


S, R = FUSE_SETUPMAPPING, FUSE_REMOVEMAPPING
MISALIGNED, OUTSIDE, COUNT = "accepted_misaligned", "accepted_outside_window", \
    "accepted_count_mismatch"

FORBIDDEN: tuple[Forbidden, ...] = (
    # ---- SETUPMAPPING ------------------------------------------------------------------
    Forbidden("foffset misaligned", S, MISALIGNED, errno.EINVAL,
              lambda r: bool(r.foffset % r.alignment), _setup("foffset", True)),
    Forbidden("moffset misaligned", S, MISALIGNED, errno.EINVAL,
              lambda r: bool(r.moffset % r.alignment), _setup("moffset", True)),
    Forbidden("len misaligned", S, MISALIGNED, errno.EINVAL,
              lambda r: bool(r.length % r.alignment), _setup("length", True)),
    Forbidden("len zero", S, MISALIGNED, errno.EINVAL,
              lambda r: r.length == 0, _setup("length", length=0)),
    Forbidden("past the window's end", S, OUTSIDE, errno.EINVAL,
              lambda r: r.moffset + r.length > r.window, _past_window),
    Forbidden("file range wraps around", S, "accepted_file_range", errno.EINVAL,
              lambda r: r.foffset + r.length >= 1 << 64, _file_end(lambda a: (1 << 64) - a)),
    Forbidden("file range past the largest offset", S, "accepted_file_range", errno.EINVAL,
              lambda r: r.foffset + r.length > FILE_OFFSET_MAX,
              _file_end(lambda a: 1 << 63)),
    Forbidden("unknown flags", S, "accepted_unknown_flags", errno.EINVAL,
              lambda r: bool(r.flags & ~_FLAGS), _setup("flags", flags=FLAG_READ | 4)),
    Forbidden("write through a read-only handle", S, "accepted_write_on_read_only_handle",
              errno.EACCES, lambda r: bool(r.read_only and r.flags & FLAG_WRITE),
              _setup("flags", flags=FLAG_READ | FLAG_WRITE), handles=True),
    # ---- REMOVEMAPPING -----------------------------------------------------------------
    Forbidden("count 0", R, "accepted_count_out_of_range", errno.EINVAL,
              lambda r: r.n == 0, _remove(lambda w: [])),
    Forbidden("count more than the entries", R, COUNT, errno.EINVAL,
              lambda r: r.n > len(r.entries), _remove(lambda w: [(w.at, w.alignment)],
                                                       lambda n: n + 1)),
    Forbidden("count fewer than the entries", R, COUNT, errno.EINVAL,
              lambda r: r.n < len(r.entries),
              _remove(lambda w: [(w.at, w.alignment), (w.at + w.alignment, w.alignment)],
                      lambda n: n - 1)),
    Forbidden(f"{REMOVEMAPPING_MAX_ENTRY + 1} entries", R, "accepted_count_out_of_range",
              errno.EINVAL, lambda r: r.n > REMOVEMAPPING_MAX_ENTRY,
              _remove(lambda w: [(w.at, w.alignment)] * (REMOVEMAPPING_MAX_ENTRY + 1))),
    Forbidden("an entry misaligned", R, MISALIGNED, errno.EINVAL,
              lambda r: any(_bad(r, m, n) for m, n in r.entries),
              lambda w: None if w.alignment == 1 else removemapping(
                  0, [(w.at, w.alignment), (w.at + w.alignment // 2, w.alignment)])),
    Forbidden("an entry of len zero", R, MISALIGNED, errno.EINVAL,
              lambda r: any(n == 0 for _m, n in r.entries),
              _remove(lambda w: [(w.at, w.alignment), (w.at, 0)])),
    Forbidden("an entry past the window's end", R, OUTSIDE, errno.EINVAL,
              lambda r: any(m + n > r.window for m, n in r.entries),
              _remove(lambda w: [(w.at, w.alignment),
                                 (-(-w.window // w.alignment) * w.alignment, w.alignment)])),
)


def refusal(req: Request, rows: Sequence[Forbidden] = FORBIDDEN) -> Forbidden | None:
    """The first row ``req`` has the shape of (None: the protocol allows it)."""
    for row in rows:
        if row.opcode == req.opcode and row.applies(req):
            return row
    return None

"""The DAX fuzz target's input: a geometry, then operations; and the files it reads.

An input is a 9-byte header and 6-byte operation records (:data:`HEADER`, :data:`OP`,
built and parsed by ``construct``; a short tail is ignored). The header chooses, per
input, everything the old fixed setup hard-wired:

* the manager (OSv, OSv aggressive, Linux; ``FUSEPROTO_DAX_MANAGER`` overrides),
* ``map_alignment`` (2**12 .. 2**21, or not negotiated),
* the policy's unit: an OSv chunk of ``2**s`` or ``3 * 2**s`` bytes, a Linux range of
  ``2**s`` (s from the alignment up to 21, i.e. 2 MiB),
* the window: 1 to 402 units, plus a remainder smaller than a unit,
* 1 to 3 mounts on the one device, Linux's background reclaim on or off,
* each of the four files' size, relative to the unit and the window: empty, tiny, a unit
  multiple and off by one either way, the window's size and off by one, many windows.

An operation (:class:`Op`) is ``kind, sel, a, b``: ``sel`` picks the node (2..5), the
mount and a flag; ``a`` and ``b`` become offsets and sizes through :func:`position` and
:func:`length`, which favour unit boundaries, the bytes either side of them, end of file
and past it. Which operation ``kind`` names, and how each is judged, is in
:mod:`.dax_run`.

The model's files are :class:`PatternFile`\\s: their bytes come from one shared random
pool, so a file of many windows costs nothing until read, and writes keep their own pages.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from construct import Array, Byte, Int16ul, Struct

__all__ = [
    "CONFIGS",
    "Geometry",
    "HEADER",
    "NODES",
    "OP",
    "Op",
    "PatternFile",
    "PatternFiles",
    "Program",
    "decode_program",
    "encode_program",
    "length",
    "pattern_bytes",
    "position",
]

CONFIGS = ("osv", "osv-aggressive", "linux")
NODES = (2, 3, 4, 5)
ALIGNS = (12, 12, 12, 12, 13, 14, 16, 21)
MAX_OPS = 32
READ_MAX = 256 << 10  # one read's bytes, at most (bytes copied are what a step costs)
HEADER = Struct("config" / Byte, "align" / Byte, "unit" / Byte, "chunks" / Byte,
                "extra" / Byte, "sizes" / Array(4, Byte))
OP = Struct("kind" / Byte, "sel" / Byte, "a" / Int16ul, "b" / Int16ul)
HEADER_SIZE = HEADER.sizeof()
OP_SIZE = OP.sizeof()
_OP_STRUCT = struct.Struct("<BBHH")  # OP's layout, for decoding many at once
assert _OP_STRUCT.size == OP_SIZE


@dataclass(frozen=True)
class Geometry:
    config: int  # index into CONFIGS
    map_alignment: int | None
    unit: int  # OSv chunk_size / Linux range size
    chunks: int  # whole units in the window
    remainder: int  # window bytes past the last whole unit
    mounts: int
    background: str  # Linux: "after_op" | "off"
    size_codes: tuple[int, ...]

    @property
    def window_size(self) -> int:
        return self.chunks * self.unit + self.remainder

    @property
    def range_shift(self) -> int:
        return self.unit.bit_length() - 1

    def file_size(self, code: int) -> int:
        """A file size from a one-byte code: its low nibble the class, its high the
        multiplier ``k`` (see the module docstring)."""
        cls, k = code & 15, code >> 4
        u, w = self.unit, max(self.chunks * self.unit, 1)
        if cls <= 3:  # around a multiple of the unit (the class's value only: no table)
            return k + 1 if cls == 0 else (k + 1) * u + cls - 2
        if cls <= 6:  # the window, off by one either way
            return w + cls - 5
        if cls <= 8:
            return (k + 2) * w + cls - 7
        if cls <= 11:
            return (100 * w + k, (k + 1) * 4096 + k, 0)[cls - 9]
        return (k + 1) * u + (k * 37 % u)

    def clamp(self, max_window: int) -> Geometry:
        """This geometry with at most ``max_window`` bytes of window (live mode; a
        window of at least 6 MiB holds one unit of any geometry)."""
        chunks = max(1, min(self.chunks, (max_window - self.remainder) // self.unit))
        return Geometry(self.config, self.map_alignment, self.unit, chunks, self.remainder,
                        self.mounts, self.background, self.size_codes)


class Op(NamedTuple):
    kind: int
    node: int
    mount: int
    flag: bool
    a: int
    b: int


_new_op = tuple.__new__


@dataclass(frozen=True)
class Program:
    geometry: Geometry
    ops: list[Op]


class _Header(NamedTuple):
    config: int
    align: int
    unit: int
    chunks: int
    extra: int
    sizes: tuple[int, ...]


def _geometry(h: Any) -> Geometry:
    config = h.config % len(CONFIGS)
    ab = h.align
    align: int | None = None if ab >> 3 == 31 else ALIGNS[ab & 7]
    base = max(align or 12, 12)
    ub = h.unit
    shift = 21 if ub & 0x80 else min(21, base + (ub & 7))
    mult = 3 if ub & 0x40 and CONFIGS[config] != "linux" else 1
    unit = mult << shift
    cb = h.chunks
    chunks = 1 + cb % 24 if cb < 192 else 24 + (cb - 192) * 6
    extra = h.extra
    rem = (extra & 3) << (align or 12)
    return Geometry(config, align, unit, chunks, rem if rem < unit else 0,
                    1 + ((extra >> 2) & 3) % 3, "off" if extra & 0x10 else "after_op",
                    tuple(h.sizes))


def decode_program(data: bytes) -> Program | None:
    """The program an input describes (None: shorter than the header)."""
    if len(data) < HEADER_SIZE:
        return None
    h = data[:HEADER_SIZE]  # HEADER's fields, read directly (this runs for every input)
    geo = _geometry(_Header(h[0], h[1], h[2], h[3], h[4], tuple(h[5:9])))
    whole = min(len(data) - HEADER_SIZE, MAX_OPS * OP_SIZE) // OP_SIZE * OP_SIZE
    # OP's fields by a precompiled struct; each Op built as the tuple it is (a NamedTuple's
    # own constructor is a Python function: one call per operation of every input)
    ops = [_new_op(Op, (kind, NODES[sel & 3], (sel >> 2) & 3, bool(sel & 0x10), a, b))
           for kind, sel, a, b in _OP_STRUCT.iter_unpack(data[HEADER_SIZE:HEADER_SIZE + whole])]
    return Program(geo, ops)


def encode_program(header: dict[str, object], ops: list[dict[str, int]]) -> bytes:
    """An input from a header's fields and ops' ``kind, sel, a, b`` (seeds, tests)."""
    return bytes(HEADER.build(header)) + b"".join(bytes(OP.build(o)) for o in ops)


def position(code: int, size: int, unit: int) -> int:
    """A file offset from 16 bits: uniform in the file, on a unit boundary, one byte
    either side of one, near end of file or past it."""
    kind, v = code >> 13, code & 0x1FFF
    if kind <= 2:
        return (v * size) >> 13
    if kind <= 5:
        k = v % (size // unit + 2)
        return max(0, k * unit + (kind - 4))
    if kind == 6:
        return max(0, size - (v % 64))
    return size + v


def length(code: int, size: int, offset: int, unit: int) -> int:
    """A read / write size from 16 bits: small, within two units, whole units and off
    by one, to end of file, or zero."""
    kind, v = code >> 13, code & 0x1FFF
    if kind <= 1:
        n = 1 + v % 4096
    elif kind == 2:
        n = 1 + v % (2 * unit)
    elif kind <= 4:
        n = unit * (1 + v % 4) + (kind - 3) * ((v >> 2) % 3 - 1)
    elif kind == 5:
        n = size - offset + (v % 3)
    elif kind == 6:
        n = 1 + v * 8
    else:
        n = 0
    return max(0, min(n, READ_MAX))


# ---- files -------------------------------------------------------------------------------
_POOL_SIZE = 1_048_573  # prime: an offset wrong by a power-of-two amount reads other bytes
_POOL = random.Random(0x5EED).randbytes(_POOL_SIZE)
_POOL2 = _POOL + _POOL  # any piece up to the pool's size is one slice
PAGE = 4096


def pattern_bytes(key: int, offset: int, n: int) -> bytes:
    """``n`` bytes of the pattern stream ``key`` from ``offset``."""
    if n <= _POOL_SIZE:  # one slice (every read: READ_MAX is far below the pool's size)
        start = (offset + key) % _POOL_SIZE
        return _POOL2[start:start + max(n, 0)]
    parts = []
    while n > 0:
        start = (offset + key) % _POOL_SIZE
        take = min(n, _POOL_SIZE)
        parts.append(_POOL2[start:start + take])
        offset += take
        n -= take
    return parts[0] if len(parts) == 1 else b"".join(parts)


class PatternFile:
    """A host file of the model: ``size`` bytes of pattern ``key`` (zeros past the
    original size) with written pages kept apart. Slicing returns bytes; slice
    assignment writes (within the file); :meth:`write` may extend it."""

    __slots__ = ("size", "key", "base", "pages")

    def __init__(self, size: int, key: int) -> None:
        self.size, self.key, self.base = size, key, size
        self.pages: dict[int, bytearray] = {}

    def __len__(self) -> int:
        return self.size

    def _base(self, a: int, b: int) -> bytes:
        cut = min(b, self.base)
        head = pattern_bytes(self.key, a, cut - a) if cut > a else b""
        return head + bytes(b - max(a, cut)) if b > max(a, cut) else head

    def __getitem__(self, s: slice) -> bytes:
        a, b, _ = s.indices(self.size)
        if b <= a:
            return b""
        pages = self.pages
        if not pages:
            if b <= self.base:  # all original bytes: one slice of the pool
                return pattern_bytes(self.key, a, b - a)
            return self._base(a, b)
        parts = []
        pos = a
        while pos < b:
            pi = pos // PAGE
            pg = pages.get(pi)
            if pg is None:
                j = pi + 1
                while j * PAGE < b and j not in pages:
                    j += 1
                end = min(b, j * PAGE)
                parts.append(self._base(pos, end))
            else:
                end = min(b, (pi + 1) * PAGE)
                parts.append(bytes(pg[pos - pi * PAGE:end - pi * PAGE]))
            pos = end
        return b"".join(parts)

    def __setitem__(self, s: slice, data: bytes) -> None:
        a = s.start or 0
        self.write(a, bytes(data[: max(0, min(len(data), self.size - a))]))

    def write(self, offset: int, data: bytes) -> None:
        n = len(data)
        pos = 0
        while pos < n:
            at = offset + pos
            pi = at // PAGE
            pg = self.pages.get(pi)
            if pg is None:
                pg = self.pages[pi] = bytearray(self._base(pi * PAGE, (pi + 1) * PAGE))
            lo = at - pi * PAGE
            take = min(n - pos, PAGE - lo)
            pg[lo:lo + take] = data[pos:pos + take]
            pos += take
        self.size = max(self.size, offset + n)


class PatternFiles:
    """The model's host files by node id: a :class:`~fuseproto.dax.host.FuseBackend`
    and what :class:`~fuseproto.dax.device.ModelDevice` maps (``data(nodeid)``)."""

    def __init__(self) -> None:
        self._files: dict[int, PatternFile] = {}

    def add(self, nodeid: int, size: int, key: int) -> None:
        self._files[nodeid] = PatternFile(size, key)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._files

    def data(self, nodeid: int) -> PatternFile:
        try:
            return self._files[nodeid]
        except KeyError:
            raise FileNotFoundError(f"no host file for nodeid {nodeid}") from None

    def file_size(self, nodeid: int) -> int:
        f = self._files.get(nodeid)  # data(nodeid), without the call (every message asks)
        return f.size if f is not None else self.data(nodeid).size

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return self.data(nodeid)[offset:offset + size]

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        self.data(nodeid).write(offset, bytes(data))
        return len(data)

    def read(self, nodeid: int, offset: int, size: int) -> bytes:
        """The file's true bytes (the checker's oracle)."""
        return self.data(nodeid)[offset:offset + size]

    def matches(self, nodeid: int, offset: int, data: bytes) -> bool:
        """``data`` is the file's bytes at ``offset`` (``read(nodeid, offset, len(data)) ==
        data``). Bytes of the original pattern are compared in place, no copy; False also
        means "ask :meth:`read`" (written pages, past the original size, no such file)."""
        f = self._files.get(nodeid)
        if f is None or f.pages or not 0 <= offset <= f.base - len(data):
            return False
        # pattern_bytes(f.key, offset, len(data)) is this slice of the pool (one slice:
        # len(data) <= f.base; a file longer than the pool takes the oracle's way)
        return len(data) <= _POOL_SIZE and _POOL2.startswith(data, (offset + f.key) % _POOL_SIZE)

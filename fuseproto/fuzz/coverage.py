"""The daemon's edge map: AFL-style shared memory that an instrumented virtiofsd writes and
the live fuzzers read after each input.

The harness owns the map. :meth:`CoverageMap.create` makes a regular file under
``/dev/shm`` (``fuseproto-cov-pPID-<random>``: :mod:`fuseproto.scratch`) of
:data:`HEADER_SIZE` + ``map_size`` bytes,
writes the header, and :meth:`CoverageMap.env` names it to the daemon in
``FUSEPROTO_COV_MAP``. The daemon's coverage runtime (built into ``c-asan-cov``, see
``docs/CONTRACTS.md``) fills in the number of guards (edges in the binary) and its pid,
then increments one u8 counter per edge execution at ``HEADER_SIZE + (guard - 1) %
map_size`` (wrapping). Header, 64 bytes little-endian: magic ``FPCOVMAP``, u32 version 1,
u32 map_size, u32 guards, u32 pid, u64 hits, zeros.

Reading is on the per-input path (~1,000 inputs/s against an ASan build): with numpy
(when installed) one AND of the counters with an "unseen" mask and an ``any()`` over
8 Ki words, ~10 us for 64 Ki counters; without it, a byte translate and a compare with
the previous hit pattern (~100-250 us on the same machine).

Each map keeps a cumulative *seen* set of edges: :meth:`CoverageMap.update` folds the
counters into it and says how many edges were new (the fuzzer's feedback),
:meth:`CoverageMap.absorb` does the same without crediting anyone (the start-up code of a
fresh daemon is not new coverage). One daemon's file may outlive its restarts (every daemon
started with the same :meth:`~CoverageMap.env` opens it again; counters only grow, apart
from the u8 wrap), or each daemon gets its own file, so that two of them can run at once
(the harness's warm spares): :meth:`CoverageMap.spawn` makes a sibling map file that
shares the parent's seen set (:class:`SeenEdges`), so an edge is credited once across all
daemons, and :meth:`CoverageMap.follow` points the parent's reads (``update``, ``absorb``,
``guards``, ``snapshot`` ...) at the sibling of the daemon being fuzzed; a sibling is
unmapped and its file deleted by its :meth:`~CoverageMap.close`, as the harness retires
its daemon.
A plain daemon never writes the header: :attr:`CoverageMap.guards` stays 0 and nothing
is counted; garbled or short files read as empty, never as an error.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from .. import scratch

try:  # the fast path of update(); the module works without it
    import numpy as np
except ImportError:  # pragma: no cover -- numpy comes with matplotlib (the dev extra)
    np = None  # type: ignore[assignment]

__all__ = ["CoverageMap", "CoverageHeader", "SeenEdges", "ENV_VAR", "MAGIC", "VERSION", "HEADER_SIZE",
           "DEFAULT_MAP_SIZE", "TIMELINE_POINTS", "write_header"]

#: The environment variable that names the map file to the daemon.
ENV_VAR = "FUSEPROTO_COV_MAP"
MAGIC = b"FPCOVMAP"
VERSION = 1
HEADER_SIZE = 64
DEFAULT_MAP_SIZE = 1 << 16
#: magic, version, map_size, guards, pid, hits (the rest of the 64 bytes is zero).
_HEADER = struct.Struct("<8sIIIIQ")
_GUARDS_AT = 16  # offset of guards (and pid after it) in the header
#: At most this many (seconds, edges) points are kept for the report's plot.
TIMELINE_POINTS = 600
# bytes.translate table: any non-zero counter -> 1 (a hit), zero stays zero.
_HIT = bytes([0] + [1] * 255)


@dataclass(frozen=True)
class CoverageHeader:
    """The map file's header as read back (see the module docstring)."""

    magic: bytes
    version: int
    map_size: int
    guards: int
    pid: int
    hits: int

    @property
    def valid(self) -> bool:
        return self.magic == MAGIC and self.version == VERSION and self.map_size > 0


def write_header(map_size: int, guards: int = 0, pid: int = 0, hits: int = 0) -> bytes:
    """The 64 header bytes (the harness writes guards = pid = 0; the runtime, or a test's
    synthetic writer, fills them in)."""
    return _HEADER.pack(MAGIC, VERSION, map_size, guards, pid, hits).ljust(HEADER_SIZE, b"\0")


class SeenEdges:
    """The cumulative set of edges seen non-zero, shared by a map and its siblings
    (:meth:`CoverageMap.spawn`), with the (seconds, edges) timeline for the report."""

    def __init__(self, map_size: int):
        self.map_size = map_size
        self.edges = 0  # edges in the set
        self.guards = 0  # the guard count of the last map followed away from (summary())
        # Counter i seen non-zero: bit 8*i set (the 0/1 hit bytes read as one little-endian
        # int, so & | ~ over the whole map are single big-int operations); without numpy.
        self.bits = 0
        # numpy: the unseen mask (0xFF: counter never seen non-zero) and a scratch buffer,
        # in the word type CoverageMap.words uses for this size; None without numpy.
        self.unseen: Any = None
        self.scratch: Any = None
        if np is not None:
            dtype = _word_type(map_size)
            n = map_size // np.dtype(dtype).itemsize
            self.unseen = np.full(n, np.iinfo(dtype).max, dtype=dtype)
            self.scratch = np.empty(n, dtype=dtype)
        self.t0 = time.monotonic()
        #: (seconds since creation, edges seen) after each change, thinned to
        #: :data:`TIMELINE_POINTS` points.
        self.timeline: list[tuple[float, int]] = [(0.0, 0)]
        self.step = 0.0  # the smallest gap kept between timeline points (grows to thin)

    def fold_words(self, words: Any) -> int:
        """numpy: fold counters ``words`` in; how many edges were new."""
        np.bitwise_and(words, self.unseen, out=self.scratch)
        if not self.scratch.any():
            return 0
        fresh = self.scratch.view(np.uint8) != 0
        n = int(np.count_nonzero(fresh))
        self.unseen.view(np.uint8)[fresh] = 0
        return self._add(n)

    def fold_hits(self, hits: bytes) -> int:
        """Without numpy: fold a 0/1 hit pattern in; how many edges were new."""
        new = int.from_bytes(hits, "little") & ~self.bits
        if not new:
            return 0
        self.bits |= new
        return self._add(new.bit_count())

    def bitmap(self) -> bytes:
        """One byte per counter (1: seen)."""
        if self.unseen is not None:
            return bytes((self.unseen.view(np.uint8) == 0).astype(np.uint8).tobytes())
        return self.bits.to_bytes(self.map_size, "little")

    def sample(self) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 2), self.edges))

    def _add(self, n: int) -> int:
        self.edges += n
        t = time.monotonic() - self.t0
        if t - self.timeline[-1][0] < self.step:
            self.timeline[-1] = (self.timeline[-1][0], self.edges)
            return n
        self.timeline.append((round(t, 2), self.edges))
        if len(self.timeline) > TIMELINE_POINTS:
            # Keep every other point and double the spacing from now on.
            self.timeline = self.timeline[:1] + self.timeline[2:-1:2] + self.timeline[-1:]
            self.step = max(self.step * 2, t / TIMELINE_POINTS)
        return n


def _word_type(map_size: int) -> Any:
    return np.uint64 if map_size % 8 == 0 else np.uint8


class CoverageMap:
    """One map file, mapped shared (see the module docstring). Use as a context manager
    or call :meth:`close` (which unlinks the file). ``seen``: the seen set to fold into
    (a sibling's, see :meth:`spawn`); default: its own."""

    def __init__(self, path: str, map_size: int, seen: SeenEdges | None = None):
        if seen is not None and seen.map_size != map_size:
            raise ValueError(f"a seen set of {seen.map_size} counters for a map of {map_size}")
        self.path = path
        self.map_size = map_size
        self._fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(self._fd).st_size
            if size < HEADER_SIZE + map_size:
                raise ValueError(f"{path}: {size} bytes, a map of {map_size} counters needs "
                                 f"{HEADER_SIZE + map_size}")
            self.mm = mmap.mmap(self._fd, HEADER_SIZE + map_size)
        except BaseException:
            os.close(self._fd)
            raise
        self.seen_set = seen if seen is not None else SeenEdges(map_size)
        self.last_hits = b""  # the hit pattern of the last update (unchanged: nothing new)
        # The counters as numpy words (the type SeenEdges uses); None without numpy.
        self.words: Any = None
        if np is not None:
            dtype = _word_type(map_size)
            self.words = np.frombuffer(self.mm, dtype=dtype, offset=HEADER_SIZE,
                                       count=map_size // np.dtype(dtype).itemsize)
        self._active: CoverageMap | None = None  # follow(): whose counters are read

    @classmethod
    def create(cls, map_size: int = DEFAULT_MAP_SIZE, directory: str = "/dev/shm",
               seen: SeenEdges | None = None) -> CoverageMap:
        """A fresh zeroed map file with the header, owned (and deleted) by the caller."""
        if not 0 < map_size <= 1 << 24:
            raise ValueError(f"map_size {map_size} out of range (1 .. 16 MiB)")
        if not os.path.isdir(directory):
            directory = "/tmp"
        path = scratch.file_path("cov", directory)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, HEADER_SIZE + map_size)
            os.pwrite(fd, write_header(map_size), 0)
        finally:
            os.close(fd)
        try:
            return cls(path, map_size, seen)
        except BaseException:
            os.unlink(path)
            raise

    @classmethod
    def open(cls, path: str) -> CoverageMap:
        """An existing map file (its size from the header); ValueError when the file is
        too small for a header or for the counters it announces, or the header is not
        ours (magic, version)."""
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise ValueError(f"{path}: {len(head)} bytes, shorter than the {HEADER_SIZE}-byte "
                             "header")
        h = CoverageHeader(*_HEADER.unpack_from(head, 0))
        if not h.valid:
            raise ValueError(f"{path}: not a coverage map (magic {h.magic!r}, version "
                             f"{h.version}, map_size {h.map_size})")
        return cls(path, h.map_size)

    # -- one map per daemon -------------------------------------------------------------------
    def spawn(self) -> CoverageMap:
        """A fresh map file beside this one for another daemon, folding into this map's
        seen set: what that daemon lights is new only beyond what every map of the set has
        seen. The caller closes it (safe from any thread: it touches no shared state)."""
        return CoverageMap.create(self.map_size, os.path.dirname(self.path), self.seen_set)

    def follow(self, other: CoverageMap | None) -> None:
        """Read ``other``'s counters and header from now on (the daemon being fuzzed; a
        sibling from :meth:`spawn`); None: this map's own file again. Call with None before
        ``other`` is closed."""
        if other is not None and other.seen_set is not self.seen_set:
            raise ValueError("follow() takes a sibling map (spawn()), not one with its own "
                             "seen set")
        if self._active is not None and not self._active.closed:
            self.seen_set.guards = self._active.guards or self.seen_set.guards
        self._active = None if other is self else other

    @property
    def current(self) -> CoverageMap:
        """The map whose counters are read: the one followed, else this one."""
        a = self._active
        return a if a is not None and not a.closed else self

    # -- reading ----------------------------------------------------------------------------
    def header(self) -> CoverageHeader:
        """The header as it is now (the runtime may have rewritten guards and pid)."""
        return CoverageHeader(*_HEADER.unpack_from(self.current.mm, 0))

    @property
    def guards(self) -> int:
        """Edges in the daemon's binary as its runtime wrote them (0: no instrumented
        daemon has opened the map, or the header is not ours any more)."""
        h = self.header()
        return h.guards if h.valid and h.map_size == self.map_size else 0

    @property
    def pid(self) -> int:
        return int.from_bytes(self.current.mm[_GUARDS_AT + 4:_GUARDS_AT + 8], "little")

    @property
    def instrumented(self) -> bool:
        """A coverage runtime has written its guard count into this map."""
        return self.guards > 0

    def snapshot(self) -> bytes:
        """The counters as they are now (``map_size`` bytes)."""
        return self.current.mm[HEADER_SIZE:HEADER_SIZE + self.map_size]

    def edges(self) -> int:
        """Counters that are non-zero now (since the last :meth:`reset`; a counter that
        wrapped to 0 reads as not hit)."""
        snap = self.snapshot()
        return len(snap) - snap.count(0)

    @property
    def seen(self) -> int:
        """Edges seen non-zero at any :meth:`update` / :meth:`absorb` so far (of any map
        sharing the seen set)."""
        return self.seen_set.edges

    @property
    def timeline(self) -> list[tuple[float, int]]:
        """(seconds, edges seen) points of the seen set (see :class:`SeenEdges`)."""
        return self.seen_set.timeline

    def seen_bitmap(self) -> bytes:
        """The cumulative seen set as one byte per counter (1: seen)."""
        return self.seen_set.bitmap()

    def update(self) -> int:
        """Fold the counters into the seen set; the number of edges never seen before."""
        cur = self.current
        if cur.words is not None and self.seen_set.unseen is not None:
            return self.seen_set.fold_words(cur.words)
        # Without numpy: nothing new when the hit pattern is the last one (one memcmp).
        hits = cur.snapshot().translate(_HIT)
        if hits == cur.last_hits:
            return 0
        cur.last_hits = hits
        return self.seen_set.fold_hits(hits)

    def absorb(self) -> int:
        """Like :meth:`update`, for edges nobody should be credited with (a fresh daemon's
        start-up and setup); returns how many there were."""
        return self.update()

    def reset(self) -> None:
        """Zero the counters (the header and the seen set stay)."""
        cur = self.current
        cur.mm[HEADER_SIZE:HEADER_SIZE + self.map_size] = bytes(self.map_size)
        cur.last_hits = b""

    def sample(self) -> None:
        """Add the current (seconds, seen edges) point even if nothing changed (the end of
        a run, so a plot's line reaches the right edge)."""
        self.seen_set.sample()

    def summary(self) -> dict[str, Any]:
        """What the report keeps: guards (of the daemon followed now, else of the last one
        followed), edges seen, and the timeline."""
        return {"guards": self.guards or self.seen_set.guards, "edges": self.seen_set.edges,
                "map_size": self.map_size,
                "timeline": [list(p) for p in self.seen_set.timeline]}

    # -- lifecycle ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment entry that names this map to a daemon."""
        return {ENV_VAR: self.path}

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Unmap and delete the file (idempotent)."""
        if self._fd < 0:
            return
        self._active = None
        self.words = None  # a view of the map: released before it is unmapped
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> CoverageMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

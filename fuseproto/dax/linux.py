"""LinuxDaxManager: the DAX range policy of Linux ``fs/fuse/dax.c``, as a model.

Facts taken from fs/fuse/dax.c (torvalds/linux), described in our words:

* the window is cut into 2 MiB ranges (FUSE_DAX_SHIFT 21); each is free or busy;
* free ranges form a FIFO: allocation takes the head, a freed range goes to the tail
  (initially in window order);
* each inode keeps an index of its ranges by file chunk (an interval tree of one-chunk
  intervals); busy ranges are also on one connection-wide list in the order they were
  set up;
* a range is *in use* while an I/O or a DAX page holds a reference (``refcnt > 1``);
  no reclaim path ever takes a range in use;
* allocation kicks a background worker when free ranges fall below 20 % of all ranges
  (at least 1); one pass frees up to 10 ranges, taking busy ranges from the head of the
  busy list (skipping ranges in use; a picked range moves to the tail), and the worker
  requeues itself while still below the threshold;
* when no range is free, a read or write reclaims inline from the *same* inode: its
  lowest file chunk not in use, REMOVEMAPPING'd and reused directly;
* SETUPMAPPING carries fh = all ones, len = 2 MiB, foffset = chunk * 2 MiB, flags READ
  (| WRITE for a write); a write to a read-only range re-sends SETUPMAPPING for the same
  window offset with WRITE (the upgrade);
* no mapping is set up at or past end of file (a hole); reads stop at end of file and
  file-extending writes go as FUSE_WRITE, not through the window;
* a reclaimed range gets a one-entry REMOVEMAPPING; dropping an inode removes all its
  ranges with REMOVEMAPPINGs of at most FUSE_REMOVEMAPPING_MAX_ENTRY entries (in reverse
  file order, as the kernel's ``list_add`` builds the list) and frees them to the tail.

The model is single-threaded. The background worker runs when its work is queued, at the
end of each operation (``background="after_op"``, the default: the kernel's worker runs
with delay 0 between the application's calls) or never (``"off"``); when an allocation
would sleep waiting for a free range, the worker runs right then. If nothing can be freed
(every range in use) the kernel would wait; the model answers EAGAIN instead.
:meth:`pin` / :meth:`unpin` model references held by other threads (DAX mmaps, I/O in
flight).
"""

from __future__ import annotations

import bisect
import errno
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter

from .device import WindowDevice, WindowFault
from .host import FuseBackend
from .manager import Accounting, DaxManager, ReadResult, Segment, ViewEntry, WriteResult
from .messages import (
    FH_NONE,
    FLAG_READ,
    FLAG_WRITE,
    REMOVEMAPPING_MAX_ENTRY,
)

__all__ = ["FUSE_DAX_SHIFT", "LinuxDaxManager"]

_new_segment = tuple.__new__  # a Segment built as the tuple it is (one per range copied)
_REFCNT = attrgetter("refcnt")
_NODEID = attrgetter("nodeid")
_WINDOW_OFFSET = attrgetter("window_offset")

FUSE_DAX_SHIFT = 21
FUSE_DAX_RECLAIM_CHUNK = 10
FUSE_DAX_RECLAIM_THRESHOLD = 20  # percent


class _Range:
    """``struct fuse_dax_mapping``: one range of the window."""

    __slots__ = ("window_offset", "length", "nodeid", "start_idx", "writable", "refcnt")

    def __init__(self, window_offset: int, length: int) -> None:
        self.window_offset = window_offset
        self.length = length
        self.nodeid: int | None = None
        self.start_idx = 0
        self.writable = False
        self.refcnt = 1  # 1 = allocated object, >1 = in use

    def __repr__(self) -> str:
        return (
            f"_Range(moffset={self.window_offset:#x}, nodeid={self.nodeid}, "
            f"idx={self.start_idx}, w={self.writable}, ref={self.refcnt})"
        )


@dataclass(slots=True)
class _InodeDax:
    """``struct fuse_inode_dax``: file chunk -> range, and the chunks in order."""

    tree: dict[int, _Range] = field(default_factory=dict)
    keys: list[int] = field(default_factory=list)

    def insert(self, r: _Range) -> None:
        self.tree[r.start_idx] = r
        bisect.insort(self.keys, r.start_idx)

    def remove(self, r: _Range) -> None:
        del self.tree[r.start_idx]
        del self.keys[bisect.bisect_left(self.keys, r.start_idx)]


class LinuxDaxManager(DaxManager):
    """The policy of ``fs/fuse/dax.c`` (see the module docstring)."""

    name = "linux"
    supports_dax_write = True

    def __init__(
        self,
        device: WindowDevice,
        backend: FuseBackend,
        *,
        range_shift: int = FUSE_DAX_SHIFT,
        reclaim_threshold: int = FUSE_DAX_RECLAIM_THRESHOLD,
        reclaim_chunk: int = FUSE_DAX_RECLAIM_CHUNK,
        background: str = "after_op",
        sender: str = "",
    ) -> None:
        super().__init__(device, backend, sender=sender)
        align = device.map_alignment
        if align is not None and align > range_shift:
            # fuse_dax_check_alignment: map_alignment incompatible with the range size
            raise ValueError(f"map_alignment {align} > range shift {range_shift}")
        if background not in ("after_op", "off"):
            raise ValueError("background must be 'after_op' or 'off'")
        self.shift = range_shift
        self.range_size = 1 << range_shift
        self.reclaim_chunk = reclaim_chunk
        self.background = background
        nr = device.window_size >> range_shift
        self.nr_ranges = nr
        self.free_threshold = max(nr * reclaim_threshold // 100, 1)
        size = self.range_size
        self._ranges = list(map(_Range, range(0, nr * size, size), repeat(size, nr)))
        self._free: deque[_Range] = deque(self._ranges)
        self._busy: dict[int, _Range] = {}  # window offset -> range, in busy-list order
        self._inodes: dict[int, _InodeDax] = {}
        self._worker_queued = False
        self.worker_passes = 0
        self.warnings: list[str] = []

    # ---- lists ---------------------------------------------------------------------------------
    def free_list(self) -> list[int]:
        """Window offsets of the free ranges, head first."""
        return list(map(_WINDOW_OFFSET, self._free))

    def busy_list(self) -> list[int]:
        return list(self._busy)

    def _kick_worker(self) -> None:
        if len(self._free) < self.free_threshold:
            self._worker_queued = True

    def _reinit_add_to_free_pool(self, r: _Range) -> None:
        del self._busy[r.window_offset]
        r.nodeid, r.start_idx = None, 0
        self._free.append(r)

    # ---- messages ------------------------------------------------------------------------------
    def _setup_one_mapping(
        self, nodeid: int, start_idx: int, r: _Range, writable: bool, upgrade: bool
    ) -> int:
        err = self.send_setupmapping(
            nodeid,
            fh=FH_NONE,
            foffset=start_idx << self.shift,
            length=self.range_size,
            flags=FLAG_READ | (FLAG_WRITE if writable else 0),
            moffset=r.window_offset,
        )
        if err:
            return err
        r.writable = writable
        if not upgrade:
            r.nodeid, r.start_idx = nodeid, start_idx
            inode = self._inodes.get(nodeid)
            if inode is None:
                inode = self._inodes[nodeid] = _InodeDax()
            inode.insert(r)
            self._busy[r.window_offset] = r
        return 0

    def _removemapping_list(self, nodeid: int, ranges: list[_Range]) -> int:
        for i in range(0, len(ranges), REMOVEMAPPING_MAX_ENTRY):
            batch = ranges[i : i + REMOVEMAPPING_MAX_ENTRY]
            err = self.send_removemapping(nodeid, [(r.window_offset, r.length) for r in batch])
            if err:
                return err
        return 0

    def _reclaim_one_locked(self, nodeid: int, r: _Range) -> None:
        # (dmap_writeback_invalidate: the model has no page cache to write back)
        self._inodes[nodeid].remove(r)
        err = self.send_removemapping(nodeid, [(r.window_offset, r.length)])
        if err and err != errno.ENOTCONN:
            self.warnings.append(f"failed to remove mapping at {r.window_offset:#x}: errno {err}")

    # ---- reclaim -------------------------------------------------------------------------------
    def _inode_lookup_first(self, nodeid: int) -> _Range | None:
        inode = self._inodes.get(nodeid)
        if inode is None:
            return None
        for idx in inode.keys:
            r = inode.tree[idx]
            if r.refcnt == 1:
                return r
        return None

    def _inline_reclaim_one(self, nodeid: int) -> _Range | None:
        r = self._inode_lookup_first(nodeid)
        if r is None:
            return None
        self._reclaim_one_locked(nodeid, r)
        del self._busy[r.window_offset]  # not back to the free list: the caller reuses it
        r.nodeid, r.start_idx = None, 0
        return r

    def _lookup_and_reclaim(self, nodeid: int, start_idx: int) -> int:
        inode = self._inodes.get(nodeid)
        r = inode.tree.get(start_idx) if inode else None
        if r is None or r.refcnt > 1:  # already cleaned up, or in use
            return 0
        self._reclaim_one_locked(nodeid, r)
        self._reinit_add_to_free_pool(r)
        return 0

    def _try_to_free(self, nr_to_free: int) -> int:
        nr_freed = 0
        busy = self._busy
        while nr_freed < nr_to_free and busy:
            for pick in busy.values():  # the first range not in use
                if pick.refcnt == 1:
                    break
            else:
                break
            # move to the tail of the busy list, then reclaim
            del busy[pick.window_offset]
            busy[pick.window_offset] = pick
            assert pick.nodeid is not None
            if self._lookup_and_reclaim(pick.nodeid, pick.start_idx):
                break
            nr_freed += 1
        return nr_freed

    def run_worker(self, force: bool = False) -> int:
        """Run the background reclaim worker while it is queued (``force``: once even if
        not queued); returns the ranges it freed."""
        total = 0
        if force:
            self._worker_queued = True
        while self._worker_queued:
            self._worker_queued = False
            self.worker_passes += 1
            freed = self._try_to_free(self.reclaim_chunk)
            total += freed
            self._kick_worker()  # requeue while still below the threshold
            if not freed:
                break
        return total

    def _after_op(self) -> None:
        if self.background == "after_op" and self._worker_queued:
            self.run_worker()

    # ---- iomap_begin -------------------------------------------------------------------------
    def _fill(self, r: _Range, pos: int, length: int, i_size: int) -> tuple[int, int]:
        offset = pos - (r.start_idx << self.shift)
        n = min(length, r.length - offset)
        if pos + n > i_size:
            n = i_size - pos
        return r.window_offset + offset, n

    def _iomap_begin(
        self, nodeid: int, pos: int, length: int, write: bool, i_size: int
    ) -> tuple[int, _Range | None, int, int]:
        """Returns (errno, range, window offset, bytes); range None = hole."""
        start_idx = pos >> self.shift
        inode = self._inodes.get(nodeid)
        r = inode.tree.get(start_idx) if inode is not None else None
        if r is not None:
            if write and not r.writable:
                err = self._setup_one_mapping(nodeid, start_idx, r, True, True)  # upgrade
                if err:
                    return err, None, 0, 0
            moff, n = self._fill(r, pos, length, i_size)
            return (0, r, moff, n) if n > 0 else (0, None, 0, length)
        if pos >= i_size:
            return 0, None, 0, length  # hole
        free = self._free
        while True:
            # alloc_dax_mapping: the free list's head; the worker kicked below the threshold
            r = free.popleft() if free else None
            if len(free) < self.free_threshold:
                self._worker_queued = True
            if r is not None:
                break
            r = self._inline_reclaim_one(nodeid)
            if r is not None:
                break
            # The kernel waits here for the worker (it was kicked above).
            freed = self.run_worker(force=True)
            if not free and not freed:
                return errno.EAGAIN, None, 0, 0  # every range in use: the kernel would sleep
        err = self._setup_one_mapping(nodeid, start_idx, r, write, False)
        if err:
            free.append(r)  # dmap_add_to_free_pool
            return err, None, 0, 0
        moff, n = self._fill(r, pos, length, i_size)
        return 0, r, moff, n

    # ---- DaxManager ---------------------------------------------------------------------------
    def read(self, nodeid: int, offset: int, size: int, *, fh: int = 0) -> ReadResult:
        i_size = self.backend.file_size(nodeid)
        end = min(offset + max(size, 0), i_size)
        parts: list[bytes] = []
        segments: list[Segment] = []
        error = 0
        pos = offset
        before = self.stats.setupmapping
        iomap_begin, window_read = self._iomap_begin, self.window_read
        while pos < end:
            err, r, moff, n = iomap_begin(nodeid, pos, end - pos, False, i_size)
            if err or r is None:
                error = err
                break
            r.refcnt += 1  # fuse_fill_iomap takes a reference for the copy
            try:
                chunk = window_read(moff, n, nodeid, pos)
            except WindowFault as e:
                error = e.errno or errno.EFAULT
                break
            finally:
                r.refcnt -= 1
            parts.append(chunk)
            segments.append(_new_segment(Segment, (pos, n, moff)))
            pos += n
        res = ReadResult(parts[0] if len(parts) == 1 else b"".join(parts), segments, error,
                         setups=self.stats.setupmapping - before)
        self.finish_read(nodeid, offset, size, res)
        self._after_op()  # the worker runs after the copy (observers saw the read first)
        return res

    def write(self, nodeid: int, offset: int, data: bytes, *, fh: int = 0) -> WriteResult:
        i_size = self.backend.file_size(nodeid)
        if offset >= i_size or offset + len(data) > i_size:
            # file_extending_write: FUSE_WRITE, not the window
            n = self.backend.fuse_write(nodeid, fh, offset, bytes(data))
            return WriteResult(n, 0, "fuse_write")
        pos, end, done = offset, offset + len(data), 0
        err = 0
        while pos < end:
            err, r, moff, n = self._iomap_begin(nodeid, pos, end - pos, True, i_size)
            if err or r is None:
                break
            r.refcnt += 1
            try:
                self.device.write(moff, data[done : done + n])
            except WindowFault as e:
                err = e.errno or errno.EFAULT
                break
            finally:
                r.refcnt -= 1
            pos += n
            done += n
        self._after_op()
        return WriteResult(done, err, "dax")

    def forget(self, nodeid: int) -> None:
        """``fuse_dax_inode_cleanup``: REMOVEMAPPING every range of the inode (batches of
        at most 256, last chunk first) and free them to the tail."""
        inode = self._inodes.pop(nodeid, None)
        if inode is None:
            return
        to_remove: list[_Range] = []
        for idx in inode.keys:
            r = inode.tree[idx]
            if r.refcnt > 1:
                self.warnings.append(
                    f"inode {nodeid} dropped with range {r.window_offset:#x} in use"
                )
            to_remove.insert(0, r)  # list_add: at the head
        err = self._removemapping_list(nodeid, to_remove)
        if err and err != errno.ENOTCONN:
            self.warnings.append(f"failed to remove mappings of inode {nodeid}: errno {err}")
        for r in to_remove:
            self._reinit_add_to_free_pool(r)

    def unmount(self) -> None:
        for nodeid in list(self._inodes):
            self.forget(nodeid)
        self._worker_queued = False  # fuse_dax_cancel_work
        self.unmounted = True

    def pin(self, nodeid: int, offset: int) -> int | None:
        """Take a reference on the range mapping ``offset`` of ``nodeid`` (as a DAX mmap
        or another thread's I/O would); returns its window offset, or None if unmapped."""
        inode = self._inodes.get(nodeid)
        r = inode.tree.get(offset >> self.shift) if inode else None
        if r is None:
            return None
        r.refcnt += 1
        return r.window_offset

    def unpin(self, moffset: int) -> None:
        r = self._ranges[moffset >> self.shift]
        if r.refcnt <= 1:
            raise ValueError(f"range {moffset:#x} is not pinned")
        r.refcnt -= 1

    def pinned(self) -> list[tuple[int, int]]:
        ranges = self._ranges
        if max(map(_REFCNT, ranges), default=1) <= 1:  # every count looked at, in C
            return []
        return [(r.window_offset, r.length) for r in ranges if r.refcnt > 1]

    def pinned_in(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """:meth:`pinned` of the ranges under ``ranges`` only: a range's index is its window
        offset over the range size, so a few entries look at their own ranges (many: one
        walk of them all, as :meth:`pinned`)."""
        if len(ranges) > 4:
            return super().pinned_in(ranges)
        shift, all_ranges = self.shift, self._ranges
        hit: dict[int, _Range] | None = None
        for moffset, length in ranges:
            lo, hi = max(moffset, 0), moffset + length
            if hi <= lo:
                continue
            for r in all_ranges[lo >> shift:((hi - 1) >> shift) + 1]:
                if r.refcnt > 1:
                    if hit is None:
                        hit = {}
                    hit[r.window_offset] = r
        if hit is None:  # the common case: nothing in use there
            return []
        return [(r.window_offset, r.length) for _o, r in sorted(hit.items())]

    def view(self) -> list[ViewEntry]:
        return [
            ViewEntry(r.window_offset, r.length, r.nodeid, r.start_idx << self.shift, r.writable)
            for r in sorted(self._busy.values(), key=_WINDOW_OFFSET)
            if r.nodeid is not None
        ]

    def accounting(self) -> Accounting:
        sz = self.range_size
        return Accounting(len(self._busy) * sz, len(self._free) * sz, self.nr_ranges * sz)

    def check_valid(self) -> None:
        # Whole-window facts through map() (C loops: this runs at every full check, over
        # up to hundreds of ranges); Python loops only over the busy ranges.
        free, busy, inodes, ranges = self._free, self._busy, self._inodes, self._ranges
        free_ids = set(map(id, free))
        assert len(free_ids) == len(free), "a range twice on the free list"
        busy_ids = set(map(id, busy.values()))
        if not free_ids.isdisjoint(busy_ids) or free_ids | busy_ids != set(map(id, ranges)):
            bad = [r for r in ranges if (id(r) in free_ids) == (id(r) in busy_ids)]
            raise AssertionError(f"{bad[:1] or 'a foreign range'} must be on exactly one list")
        assert list(busy) == list(map(_WINDOW_OFFSET, busy.values())), "busy list keys"
        assert min(map(_REFCNT, ranges), default=1) >= 1, "a reference count below 1"
        if not set(map(_NODEID, free)) <= {None}:
            raise AssertionError(f"free range still owned: {[r for r in free if r.nodeid][:1]}")
        for r in busy.values():
            assert r.nodeid is not None and inodes[r.nodeid].tree.get(r.start_idx) is r
        for nodeid, inode in inodes.items():
            assert inode.keys == sorted(inode.tree), f"inode {nodeid} index out of order"
            for idx, r in inode.tree.items():
                assert r.nodeid == nodeid and r.start_idx == idx

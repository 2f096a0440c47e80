"""OsvDaxManager: the DAX window manager OSv committed in June 2020, ported to Python.

Source of every decision here: the seed, ``shared/seed/osv-virtiofs-dax-thread.txt``
(``fs/virtiofs/virtiofs_dax.{hh,cc}``, ``virtiofs_vfsops.cc`` and ``virtiofs_vnops.cc`` of
the committed v2 series). This is a port of the *behaviour*, branch for branch, not of the
code; the method names follow the C++ ones so a reader of the seed finds each branch:

* the window is split into ``chunk_size`` chunks (2 MiB default; a multiple of
  ``2**map_alignment``; the remainder of the window is never used);
* mappings form a stack in window order; a new mapping goes to the first empty chunk
  (right above the top) and is merged into the top mapping when that maps the same node
  and ends exactly where the new one starts in the file;
* when a read needs more chunks than are free, the most recently mapped chunks (the top
  of the stack) are evicted *without* a REMOVEMAPPING (``unmap(deep=False)``): the next
  SETUPMAPPING simply overwrites them on the host. ``unmap(deep=True)`` sends one
  REMOVEMAPPING with a single entry covering everything it drops;
* ``find`` returns the first mapping (lowest in the window) containing the file chunk;
  a hit serves only what that mapping covers (a short read);
* ``map`` answers ENOBUFS when the window is full and eviction is off; ``unmap`` answers
  ENODATA when there is nothing to drop;
* the aggressive mode maps the rest of the file instead of just the read;
* ``virtiofs_read`` falls back to FUSE_READ whenever the DAX path returns an error.

Seed defects are reachable through ``seed_defects`` (names below), the corrected
behaviour is the default:

``duplicate_mappings``
    ``read`` maps ``nchunks`` from the first missing chunk without looking at the chunks
    after it, so a chunk still mapped lower in the window (typically: a file re-read
    after its first chunk was evicted) is mapped a second time, and live data is evicted
    for the copy. Corrected: the new mapping stops before the first chunk of the range
    that is already mapped (the next read hits it).
``map_alignment_unset``
    the pre-manager code refused DAX with ENOTSUP when the device had negotiated no
    ``map_alignment`` (``get_map_alignment() < 0``); the manager's constructor instead
    evaluates ``1ull << get_map_alignment()`` in an assert: a shift by a negative count
    (undefined; x86 masks it to 63, so the assert fails and OSv aborts at mount).
    Corrected: the manager refuses DAX with ENOTSUP and every read falls back.
``unregistered_manager``
    (:class:`OsvVirtiofs`, the vfsops model) ``virtiofs_mount`` looks the device up in
    ``dax_managers`` but never inserts the manager it creates, so every mount of one
    device gets its own manager over the same window: both start at chunk 0 and
    overwrite each other's mappings, and a later hit reads the other mount's file.
``enodata_on_empty_window``
    ``map`` with eviction asks ``unmap`` for the missing chunks even when nothing is
    mapped; ``unmap`` answers ENODATA and ``map`` returns it. So a read needing more
    chunks than the whole window (always, in aggressive mode, for a file larger than the
    window) fails on an empty window and goes to FUSE_READ, which leaves the window
    empty: such a file never uses DAX until something else is mapped, while the same
    read on a non-empty window evicts everything and maps what fits. Corrected: with
    nothing to evict, map what fits.
``no_forget``
    (a gap rather than a defect: the seed has no FORGET path) mappings of a forgotten
    node stay findable, so a node id the daemon reuses reads the old file's bytes.
    Corrected: ``forget`` makes them unfindable; their chunks are reused when they reach
    the top of the stack.

Also noted in the seed, not modelled (no Python-visible effect): ``virtiofs_read_fallback``
takes ``u32 read_amt`` while ``virtiofs_read`` computes a 64-bit amount (a read of 4 GiB or
more is truncated modulo 2**32); the ENOMEM paths of ``virtiofs_mount`` return without
freeing ``m_data``; ``virtiofs_unmount``'s ``use_count() == 2`` test misses the last unmount
if a read on that mount still holds its copy of the shared_ptr.

Single-threaded: the C++ holds one mutex across each read; callers here serialise.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .device import WindowDevice, WindowFault
from .host import FuseBackend
from .manager import Accounting, DaxManager, ReadResult, Segment, ViewEntry

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "OSV_SEED_DEFECTS",
    "MappingPart",
    "OsvDaxManager",
    "OsvMount",
    "OsvVirtiofs",
]

DEFAULT_CHUNK_SIZE = 1 << 21  # dax_manager::DEFAULT_CHUNK_SIZE, 2 MiB
OSV_SEED_DEFECTS = frozenset(
    {
        "duplicate_mappings",
        "enodata_on_empty_window",
        "map_alignment_unset",
        "unregistered_manager",
        "no_forget",
    }
)


@dataclass(slots=True)
class _Mapping:
    """A run of ``nchunks`` window chunks from ``mstart`` mapping file chunks from
    ``fstart`` of ``nodeid`` (None once forgotten)."""

    nodeid: int | None
    nchunks: int
    fstart: int
    mstart: int


class MappingPart(NamedTuple):
    """``mapping_part`` of the seed: a run of chunks in the window."""

    nchunks: int
    mstart: int


def _check_defects(names: Iterable[str] | None) -> frozenset[str]:
    got = frozenset(names or ())
    unknown = got - OSV_SEED_DEFECTS
    if unknown:
        raise ValueError(
            f"unknown OSv seed defects {sorted(unknown)}; known: {sorted(OSV_SEED_DEFECTS)}"
        )
    return got


class OsvDaxManager(DaxManager):
    """The OSv ``dax_manager`` (see the module docstring)."""

    name = "osv"

    def __init__(
        self,
        device: WindowDevice,
        backend: FuseBackend,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        aggressive: bool = False,
        seed_defects: Iterable[str] | None = (),
        sender: str = "",
    ) -> None:
        super().__init__(device, backend, sender=sender)
        self.seed_defects = _check_defects(seed_defects)
        self.chunk_size = chunk_size
        self.aggressive = aggressive
        self.usable = True
        align = device.map_alignment
        if align is None or align < 0:
            if "map_alignment_unset" in self.seed_defects:
                # assert(_chunk_size % (1ull << get_map_alignment()) == 0) with -1: the
                # shift count is masked to 6 bits on x86, so the divisor is 2**63.
                shift = (-1 if align is None else align) & 63
                if chunk_size % (1 << shift):
                    raise AssertionError(
                        "dax_manager: assert(_chunk_size % (1ull << get_map_alignment()) == 0)"
                        " failed with map_alignment unset (seed defect map_alignment_unset)"
                    )
            else:
                self.usable = False  # as the pre-manager code: ENOTSUP, use FUSE_READ
        elif chunk_size <= 0 or chunk_size % (1 << align):
            raise ValueError(
                f"chunk_size {chunk_size} is not a multiple of 2**map_alignment ({1 << align})"
            )
        # NOTE (seed): the remainder of the window below one chunk is ignored.
        self.window_chunks = device.window_size // chunk_size if chunk_size > 0 else 0
        self._mappings: list[_Mapping] = []
        # Index for find(): (nodeid, file chunk) -> window chunks mapping it, ascending.
        # The C++ scans the vector; this answers the same first match in O(1).
        self._index: dict[tuple[int, int], list[int]] = {}
        self._owner: list[int] = [-1] * self.window_chunks  # window chunk -> mapping idx

    # ---- the seed's private methods --------------------------------------------------------
    @property
    def mappings(self) -> list[tuple[int | None, int, int, int]]:
        """``(nodeid, nchunks, fstart, mstart)`` of every mapping, bottom to top."""
        return [(m.nodeid, m.nchunks, m.fstart, m.mstart) for m in self._mappings]

    def first_empty(self) -> int:
        """The first empty chunk, or one past the last if the window is full."""
        if not self._mappings:
            return 0
        m = self._mappings[-1]
        return m.mstart + m.nchunks

    def find(self, nodeid: int, fstart: int) -> MappingPart | None:
        """The largest run mapping ``nodeid`` from file chunk ``fstart``, taken from the
        first mapping (in window order) that contains it."""
        where = self._index.get((nodeid, fstart))
        if not where:
            return None
        m = self._mappings[self._owner[where[0]]]
        excess = fstart - m.fstart
        return MappingPart(m.nchunks - excess, m.mstart + excess)

    def find_scan(self, nodeid: int, fstart: int) -> MappingPart | None:
        """``find`` exactly as the C++ does it (a scan); for differential tests."""
        for m in self._mappings:
            if m.nodeid == nodeid and m.fstart <= fstart < m.fstart + m.nchunks:
                excess = fstart - m.fstart
                return MappingPart(m.nchunks - excess, m.mstart + excess)
        return None

    def map(
        self, nodeid: int, fh: int, nchunks: int, fstart: int, evict: bool = False
    ) -> tuple[int, MappingPart | None]:
        """Map up to ``nchunks`` chunks of ``nodeid`` from file chunk ``fstart`` above all
        other mappings, evicting from the top if ``evict``. Returns (errno, mapped)."""
        mappings = self._mappings
        top = mappings[-1] if mappings else None
        empty = self.window_chunks - (top.mstart + top.nchunks if top is not None else 0)
        if (
            evict
            and empty < nchunks
            and (mappings or "enodata_on_empty_window" in self.seed_defects)
        ):
            error, unmapped = self.unmap(nchunks - empty, deep=False)
            if error:
                return error, None
            assert unmapped is not None
            empty += unmapped.nchunks
            top = mappings[-1] if mappings else None
        to_map = min(nchunks, empty)
        if to_map == 0:
            # The window is full and evict is false, or nchunks is 0
            part = MappingPart(0, self.window_chunks - empty)
            return (0 if nchunks == 0 else errno.ENOBUFS), part
        mstart = self.window_chunks - empty
        error = self.map_ll(nodeid, fh, to_map, fstart, mstart)
        if error:
            return error, None
        if top is not None and top.nodeid == nodeid and top.fstart + top.nchunks == fstart:
            top.nchunks += to_map  # extend the previous mapping
        else:
            mappings.append(_Mapping(nodeid, to_map, fstart, mstart))
        idx = len(mappings) - 1
        owner, index = self._owner, self._index
        for k in range(to_map):
            owner[mstart + k] = idx
            where = index.get((nodeid, fstart + k))
            if where is None:
                index[(nodeid, fstart + k)] = [mstart + k]
            else:
                where.append(mstart + k)
        return 0, MappingPart(to_map, mstart)

    def unmap(self, nchunks: int, deep: bool = False) -> tuple[int, MappingPart | None]:
        """Drop the ``nchunks`` top chunks; with ``deep`` also send one REMOVEMAPPING.
        Returns (errno, unmapped)."""
        mappings = self._mappings
        to_unmap = 0
        erase_first = len(mappings)
        from_last = 0
        for i in range(len(mappings) - 1, -1, -1):
            if to_unmap >= nchunks:
                break
            m = mappings[i]
            if m.nchunks <= nchunks - to_unmap:
                erase_first = i  # remove m whole
                to_unmap += m.nchunks
            else:
                from_last = nchunks - to_unmap  # shrink m from its top
                to_unmap = nchunks
        if to_unmap == 0:
            # The window is empty, or nchunks is 0
            return (0 if nchunks == 0 else errno.ENODATA), MappingPart(0, self.first_empty())
        top = mappings[-1].mstart + mappings[-1].nchunks  # first_empty()
        if deep:
            error = self.unmap_ll(to_unmap, top - to_unmap)
            if error:
                return error, None
        for p in range(top - 1, top - to_unmap - 1, -1):  # highest first: see _drop_chunk
            self._drop_chunk(p)
        del mappings[erase_first:]
        if from_last > 0:
            mappings[-1].nchunks -= from_last
        return 0, MappingPart(to_unmap, top - to_unmap)  # the new first empty chunk

    def _drop_chunk(self, p: int) -> None:
        idx = self._owner[p]
        self._owner[p] = -1
        m = self._mappings[idx]
        if m.nodeid is None:
            return
        key = (m.nodeid, m.fstart + (p - m.mstart))
        where = self._index.get(key)
        if where and where[-1] == p:  # the top chunk is the highest of its key
            where.pop()
            if not where:
                del self._index[key]

    def map_ll(self, nodeid: int, fh: int, nchunks: int, fstart: int, mstart: int) -> int:
        """One SETUPMAPPING, read-only (flags 0 as in the seed)."""
        assert mstart + nchunks <= self.window_chunks
        c = self.chunk_size
        return self.send_setupmapping(
            nodeid, fh=fh, foffset=fstart * c, length=nchunks * c, flags=0, moffset=mstart * c
        )

    def unmap_ll(self, nchunks: int, mstart: int) -> int:
        """One REMOVEMAPPING with one entry; the node id is irrelevant (0, as the seed)."""
        assert mstart + nchunks <= self.window_chunks
        c = self.chunk_size
        return self.send_removemapping(0, [(mstart * c, nchunks * c)])

    # ---- dax_manager::read -----------------------------------------------------------------
    def _clip_to_unmapped(self, nodeid: int, fstart: int, nchunks: int) -> int:
        for k in range(1, nchunks):
            if (nodeid, fstart + k) in self._index:
                return k
        return nchunks

    def dax_read(
        self,
        nodeid: int,
        fh: int,
        offset: int,
        read_amt: int,
        *,
        file_size: int,
        aggressive: bool | None = None,
    ) -> tuple[int, bytes, int | None, int]:
        """``dax_manager::read``: returns (errno, data, window offset, SETUPMAPPINGs)."""
        if not self.usable:
            return errno.ENOTSUP, b"", None, 0
        if aggressive is None:
            aggressive = self.aggressive
        c = self.chunk_size
        fstart, coffset = divmod(offset, c)
        setups = 0
        mp = self.find(nodeid, fstart)
        if mp is None:
            to_map = coffset + ((file_size - offset) if aggressive else read_amt)
            nchunks = -(-to_map // c)
            if nchunks > 1 and "duplicate_mappings" not in self.seed_defects:
                nchunks = self._clip_to_unmapped(nodeid, fstart, nchunks)
            before = self.stats.setupmapping
            error, mp = self.map(nodeid, fh, nchunks, fstart, evict=True)
            setups = self.stats.setupmapping - before
            if error:
                return error, b"", None, setups
            assert mp is not None
        n = min(read_amt, mp.nchunks * c - coffset)
        moffset = mp.mstart * c + coffset
        try:
            data = self.window_read(moffset, n, nodeid, offset)
        except WindowFault as e:  # uiomove failed
            return e.errno or errno.EFAULT, b"", None, setups
        return 0, data, moffset, setups

    # ---- DaxManager --------------------------------------------------------------------------
    def read(self, nodeid: int, offset: int, size: int, *, fh: int = 0) -> ReadResult:
        """``virtiofs_read``: DAX first, FUSE_READ when it fails."""
        file_size = self.backend.file_size(nodeid)
        if offset >= file_size or size <= 0:
            return self.finish_read(nodeid, offset, size, ReadResult(b""))
        # Total read amount is what they requested, or what is left
        read_amt = min(size, file_size - offset)
        error, data, moffset, setups = self.dax_read(
            nodeid, fh, offset, read_amt, file_size=file_size
        )
        if not error:
            res = ReadResult(data, [Segment(offset, len(data), moffset)], setups=setups)
        else:
            data, seg = self.fuse_read_segment(nodeid, fh, offset, read_amt)
            res = ReadResult(data, [seg], error=error, fell_back=True, setups=setups)
        return self.finish_read(nodeid, offset, size, res)

    def forget(self, nodeid: int) -> None:
        if "no_forget" in self.seed_defects:
            return
        for m in self._mappings:
            if m.nodeid == nodeid:
                for k in range(m.nchunks):
                    key = (nodeid, m.fstart + k)
                    where = self._index.get(key)
                    if where is not None:
                        where.remove(m.mstart + k)
                        if not where:
                            del self._index[key]
                m.nodeid = None

    def unmount(self) -> None:
        # virtiofs_unmount deletes the manager: nothing is sent to the device.
        self.unmounted = True
        self._mappings.clear()
        self._index.clear()
        self._owner = [-1] * self.window_chunks

    def view(self) -> list[ViewEntry]:
        c = self.chunk_size
        return [
            ViewEntry(m.mstart * c, m.nchunks * c, m.nodeid, m.fstart * c)
            for m in self._mappings
            if m.nodeid is not None
        ]

    def accounting(self) -> Accounting:
        c, used = self.chunk_size, self.first_empty()
        return Accounting(used * c, (self.window_chunks - used) * c, self.window_chunks * c)

    def check_valid(self) -> None:
        expect = 0
        owner = self._owner
        index: dict[tuple[int, int], list[int]] = {}
        # What find_scan answers for every key, in the same pass: the first mapping in
        # window order that contains the chunk (one scan of the stack, not one per key).
        scan: dict[tuple[int, int], MappingPart] = {}
        for i, m in enumerate(self._mappings):
            assert m.nchunks > 0, f"mapping {i} is empty: {m}"
            assert m.mstart == expect, f"mapping {i} not contiguous: {m}, expected {expect}"
            expect += m.nchunks
            if owner[m.mstart:m.mstart + m.nchunks] != [i] * m.nchunks:
                bad = next(m.mstart + k for k in range(m.nchunks) if owner[m.mstart + k] != i)
                raise AssertionError(f"owner of chunk {bad}")
            if m.nodeid is not None:
                for k in range(m.nchunks):
                    key = (m.nodeid, m.fstart + k)
                    where = index.get(key)
                    if where is None:
                        index[key] = [m.mstart + k]
                        scan[key] = MappingPart(m.nchunks - k, m.mstart + k)
                    else:
                        where.append(m.mstart + k)
        assert expect <= self.window_chunks, "stack above the window"
        assert index == self._index, "find index out of date"
        for key, part in scan.items():
            assert self.find(*key) == part, f"find{key} is not the scan's {part}"


# ---- virtiofs_vfsops: mounts sharing one manager per device ---------------------------------


class OsvMount:
    """One ``virtiofs_mount``: the device and the manager its reads use (None: no DAX)."""

    def __init__(
        self,
        fs: OsvVirtiofs,
        device: WindowDevice,
        backend: FuseBackend,
        dax_mgr: OsvDaxManager | None,
    ) -> None:
        self.fs, self.device, self.backend, self.dax_mgr = fs, device, backend, dax_mgr

    def read(self, nodeid: int, offset: int, size: int, *, fh: int = 0) -> ReadResult:
        if self.dax_mgr is not None:
            return self.dax_mgr.read(nodeid, offset, size, fh=fh)
        file_size = self.backend.file_size(nodeid)
        amt = max(0, min(size, file_size - offset))
        data = self.backend.fuse_read(nodeid, fh, offset, amt) if amt else b""
        return ReadResult(data, [Segment(offset, len(data), None)] if data else [])


class OsvVirtiofs:
    """``virtiofs_vfsops.cc`` of the committed v2: a table ``dax_managers`` of one
    manager per device, shared by the device's mounts (``seed_defects`` may name
    ``unregistered_manager``: the committed code never inserts into the table)."""

    def __init__(
        self, *, seed_defects: Iterable[str] | None = (), **manager_options: object
    ) -> None:
        self.seed_defects = _check_defects(seed_defects)
        self.manager_options = manager_options
        self.dax_managers: dict[int, OsvDaxManager] = {}
        self.mounts: list[OsvMount] = []

    def _use_count(self, mgr: OsvDaxManager) -> int:
        # shared_ptr::use_count(): the table's reference plus one per mount holding it
        held = sum(1 for m in self.mounts if m.dax_mgr is mgr)
        return held + (1 if self.dax_managers.get(id(mgr.device)) is mgr else 0)

    def mount(self, device: WindowDevice, backend: FuseBackend) -> OsvMount:
        mgr = None
        if device.window_size > 0:  # the device supports the DAX window
            mgr = self.dax_managers.get(id(device))
            if mgr is None:
                mgr = OsvDaxManager(
                    device,
                    backend,
                    seed_defects=self.seed_defects - {"unregistered_manager"},
                    sender=f"osv-mount{len(self.mounts)}",
                    **self.manager_options,  # type: ignore[arg-type]
                )
                if "unregistered_manager" not in self.seed_defects:
                    self.dax_managers[id(device)] = mgr
        mnt = OsvMount(self, device, backend, mgr)
        self.mounts.append(mnt)
        return mnt

    def unmount(self, mnt: OsvMount) -> None:
        mgr = mnt.dax_mgr
        if mgr is not None and self._use_count(mgr) == 2:
            # This was the last mount of this device: forget its manager.
            self.dax_managers.pop(id(mgr.device), None)
        self.mounts.remove(mnt)
        if mgr is not None and not any(m.dax_mgr is mgr for m in self.mounts):
            mgr.unmount()

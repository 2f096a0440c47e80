"""What the recording proxy sees of the guest: its memory regions and its split virtqueues.

Read-only. :class:`GuestMap` maps the regions a frontend announces (SET_MEM_TABLE,
ADD_MEM_REG / REM_MEM_REG) with PROT_READ and translates guest-physical addresses (what
descriptors hold) and frontend virtual addresses (what SET_VRING_ADDR holds) to bytes of
those mappings. :class:`QueueWatch` follows one virtqueue the way its device does, one step
behind it: new avail entries (chains, indirect tables included) are read as FUSE requests,
new used entries as replies (``used.len`` bytes of the chain's writable buffers). It never
writes guest memory, so whatever it gets wrong cannot change the traffic; anything it
cannot read is reported through ``note`` and it goes on.

Ring layouts are :mod:`fuseproto.transport.virtqueue`'s (virtio 1.x 2.7); the region layout
is :mod:`fuseproto.transport.vhost_user_proto`'s.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass, field

from ..transport.vhost_user_proto import VhostUserMemoryRegion
from ..transport.virtqueue import (
    U16,
    VIRTQ_AVAIL_IDX,
    VIRTQ_AVAIL_RING,
    VIRTQ_DESC,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
    VIRTQ_USED_IDX,
    VIRTQ_USED_RING,
)

__all__ = ["GuestMap", "MAX_RECORD", "QueueWatch", "RingError"]

# The largest message recorded whole: larger chains (a hostile or broken descriptor length)
# are noted, not read (no allocation sized by a guest's claim).
MAX_RECORD = 16 << 20
# Read at least this much of every message whatever the snaplen (which the recorder applies
# when it writes): the proxy decodes INIT pairs itself to learn the minor.
MIN_READ = 256
_unpack_desc = VIRTQ_DESC.unpack_from
_unpack_u16 = U16.unpack_from
_unpack_used = VIRTQ_USED_ELEM.unpack_from


class RingError(Exception):
    """Something in guest memory the proxy cannot follow (internal: becomes a note)."""


@dataclass(slots=True)
class _Region:
    guest_addr: int
    size: int
    user_addr: int
    mm: mmap.mmap
    base: int  # offset of the region's first byte in ``mm`` (mmap_offset's page remainder)


class GuestMap:
    """The frontend's guest memory regions, mapped read-only (see the module docstring)."""

    def __init__(self) -> None:
        self.regions: list[_Region] = []
        self.generation = 0  # bumped on every change: QueueWatch re-resolves its rings

    @staticmethod
    def _map(region: VhostUserMemoryRegion, fd: int) -> _Region:
        # mmap's offset must be page-aligned; mmap_offset need not be.
        start = region.mmap_offset - region.mmap_offset % mmap.ALLOCATIONGRANULARITY
        base = region.mmap_offset - start
        if region.size <= 0 or region.size > 1 << 46:
            raise OSError(f"region of {region.size:#x} bytes")
        mm = mmap.mmap(fd, base + region.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=start)
        return _Region(region.guest_addr, region.size, region.user_addr, mm, base)

    def set_table(self, regions: tuple[VhostUserMemoryRegion, ...], fds: list[int]) -> None:
        """SET_MEM_TABLE: replace every region (one fd each, in order). Raises OSError or
        ValueError if a region cannot be mapped (the old table is gone either way)."""
        self.clear()
        if len(fds) != len(regions):
            raise ValueError(f"{len(regions)} regions but {len(fds)} fds")
        for region, fd in zip(regions, fds, strict=True):
            self.regions.append(self._map(region, fd))

    def add(self, region: VhostUserMemoryRegion, fd: int) -> None:
        """ADD_MEM_REG."""
        self.generation += 1
        self.regions.append(self._map(region, fd))

    def remove(self, region: VhostUserMemoryRegion) -> bool:
        """REM_MEM_REG: the region with the same guest address, size and user address."""
        for i, r in enumerate(self.regions):
            if (r.guest_addr, r.size, r.user_addr) == (
                    region.guest_addr, region.size, region.user_addr):
                self.generation += 1
                del self.regions[i]
                r.mm.close()
                return True
        return False

    def clear(self) -> None:
        self.generation += 1
        for r in self.regions:
            r.mm.close()
        self.regions = []

    def gpa(self, addr: int, length: int) -> tuple[mmap.mmap, int]:
        """``(mapping, offset)`` of ``length`` bytes at guest-physical ``addr``; the range
        must lie in one region. Raises RingError."""
        for r in self.regions:
            off = addr - r.guest_addr
            if off >= 0 and off + length <= r.size:
                return r.mm, r.base + off
        raise RingError(f"guest address {addr:#x}+{length:#x} is not in guest memory")

    def uaddr(self, addr: int, length: int) -> tuple[mmap.mmap, int]:
        """As :meth:`gpa` for a frontend virtual address (SET_VRING_ADDR's)."""
        for r in self.regions:
            off = addr - r.user_addr
            if off >= 0 and off + length <= r.size:
                return r.mm, r.base + off
        raise RingError(f"frontend address {addr:#x}+{length:#x} is not in guest memory")

    def read(self, segments: list[tuple[int, int]], limit: int) -> bytes:
        """The bytes of ``segments`` (guest-physical ``(addr, len)``), at most ``limit``;
        a segment that crosses from one region into the next is read piece by piece."""
        if len(segments) == 1:  # the usual reply area, or a one-descriptor request
            addr, ln = segments[0]
            ln = min(ln, limit)
            for r in self.regions:
                off = addr - r.guest_addr
                if off >= 0 and off + ln <= r.size:
                    off += r.base
                    return r.mm[off:off + ln]
        out = []
        left = limit
        for addr, ln in segments:
            if left <= 0:
                break
            ln = min(ln, left)
            left -= ln
            while ln:
                mm, off, piece = self._piece(addr, ln)
                out.append(mm[off:off + piece])
                addr += piece
                ln -= piece
        return out[0] if len(out) == 1 else b"".join(out)

    def _piece(self, addr: int, ln: int) -> tuple[mmap.mmap, int, int]:
        for r in self.regions:
            off = addr - r.guest_addr
            if 0 <= off < r.size:
                return r.mm, r.base + off, min(ln, r.size - off)
        raise RingError(f"guest address {addr:#x} (of a {ln}-byte buffer) is not in guest memory")


Note = Callable[[int, str], None]
# A ring's parts in the proxy's mappings: (GuestMap.generation, desc mapping, offset,
# avail mapping, offset, used mapping, offset).
_Where = tuple[int, mmap.mmap, int, mmap.mmap, int, mmap.mmap, int]
# (direction 0 request / 1 reply, queue, the message's first bytes, its whole length)
Record = Callable[[int, int, bytes, int], None]


@dataclass(slots=True)
class _Chain:
    writable: list[tuple[int, int]]
    unique: int | None  # the request's fuse_in_header.unique, if it had one
    room: int  # bytes of the writable buffers
    key: bytes = b""  # the request's first bytes and length: the same request read twice


@dataclass
class QueueWatch:
    """One virtqueue as the proxy follows it (fields set from the vhost-user messages)."""

    index: int
    size: int = 0  # SET_VRING_NUM
    desc: int = 0  # SET_VRING_ADDR: frontend virtual addresses
    avail: int = 0
    used: int = 0
    last_avail: int = 0  # SET_VRING_BASE, then the next avail entry to read
    last_used: int = 0
    started: bool = False  # from SET_VRING_KICK until the reply to GET_VRING_BASE
    pending: dict[int, _Chain] = field(default_factory=dict)  # head -> chain (<= size)
    by_unique: dict[int, int] = field(default_factory=dict)  # pending unique -> head
    # Requests recorded from an avail entry read late (unique -> key, bounded): when the
    # request shows up at its own head it is not recorded a second time.
    stale: dict[int, bytes] = field(default_factory=dict)
    requests: int = 0
    replies: int = 0
    limit: int = MAX_RECORD  # bytes of each message read (a snaplen: the rest not copied)
    _where: _Where | None = None
    _broken: str | None = None

    def reset(self, base: int) -> None:
        """SET_VRING_BASE: the ring starts (again) at ``base``."""
        self.last_avail = self.last_used = base & 0xFFFF
        self.pending.clear()
        self.by_unique.clear()
        self.stale.clear()
        self._where = None
        self._broken = None

    def invalidate(self) -> None:
        """The memory table or the ring's addresses changed."""
        self._where = None
        self._broken = None

    def _resolve(self, mem: GuestMap) -> _Where:
        w = self._where
        if w is not None and w[0] == mem.generation:
            return w
        n = self.size
        if not n or n & (n - 1) or n > 32768:
            raise RingError(f"queue size {n} is not a power of two <= 32768")
        dmm, doff = mem.uaddr(self.desc, 16 * n)
        amm, aoff = mem.uaddr(self.avail, VIRTQ_AVAIL_RING + 2 * n)
        umm, uoff = mem.uaddr(self.used, VIRTQ_USED_RING + 8 * n)
        w = self._where = (mem.generation, dmm, doff, amm, aoff, umm, uoff)
        return w

    def scan(self, mem: GuestMap, record: Record, note: Note) -> None:
        """Record what is new on the avail ring, then on the used ring. Never raises for
        what it finds in guest memory (``note`` says what it could not read)."""
        if not self.started or self._broken is not None:
            return
        try:
            w = self._resolve(mem)
        except RingError as e:
            self._broken = str(e)
            note(self.index, f"queue {self.index} not observed: {e}")
            return
        self._scan_avail(mem, w, record, note)
        if self._scan_used(mem, w, record, note, reused=False, stop_at_unknown=True):
            # A used entry for a chain made available after the avail ring was read (the
            # daemon was that quick): read the avail ring again, so its request comes first.
            self._scan_avail(mem, w, record, note)
            self._scan_used(mem, w, record, note, reused=False, stop_at_unknown=False)

    def _scan_avail(self, mem: GuestMap, w: _Where, record: Record, note: Note) -> None:
        _, dmm, doff, amm, aoff, _, _ = w
        idx = _unpack_u16(amm, aoff + VIRTQ_AVAIL_IDX)[0]
        last = self.last_avail
        if idx == last:
            return
        new = (idx - last) & 0xFFFF
        size = self.size
        if new > size:
            note(self.index, f"queue {self.index}: avail.idx moved from {last} to {idx}, more "
                             f"than the queue size {size}; those entries are not recorded")
            self.last_avail = idx
            return
        ring = aoff + VIRTQ_AVAIL_RING
        for _ in range(new):
            head = _unpack_u16(amm, ring + 2 * (last % size))[0]
            last = (last + 1) & 0xFFFF
            try:
                readable, writable, total, room = self._walk(mem, dmm, doff, head)
                if total > MAX_RECORD:
                    raise RingError(f"{total} device-readable bytes, more than the proxy "
                                    f"records ({MAX_RECORD})")
                data = mem.read(readable, min(total, max(self.limit, MIN_READ)))
            except RingError as e:
                note(self.index, f"queue {self.index} avail head {head}: request not "
                                 f"recorded: {e}")
                self._take(head)
                continue
            if head in self.pending:
                # The driver reuses a head only after taking its used entry: read the used
                # ring now, so the old chain's reply is paired with the old request.
                self._scan_used(mem, w, record, note, reused=True, stop_at_unknown=True)
                if head in self.pending:
                    note(self.index, f"queue {self.index}: head {head} made available again "
                                     "before its used entry was seen")
            unique = int.from_bytes(data[8:16], "little") if len(data) >= 16 else None
            chain = _Chain(writable, unique, room, data[:64] + total.to_bytes(4, "little"))
            if unique is not None and self._read_twice(head, chain, note):
                continue
            if unique is not None and self.stale.get(unique) == chain.key:
                del self.stale[unique]  # recorded already, from an entry read late
                self._take(head)
                self.pending[head] = chain
                self.by_unique[unique] = head
                note(self.index, f"queue {self.index}: unique {unique} made available at "
                                 f"head {head}: recorded once already, from another head's "
                                 "entry read late; its reply is awaited here")
                continue
            self._take(head)
            self.pending[head] = chain
            if unique is not None:
                self.by_unique[unique] = head
            self.requests += 1
            record(0, self.index, data, total)
        self.last_avail = last

    def _read_late(self, chain: _Chain) -> None:
        """``chain`` may have been read from an entry the driver had already reused: should
        its request show up again at a head of its own, it is not recorded twice."""
        if chain.unique is not None:
            self.stale[chain.unique] = chain.key
            while len(self.stale) > 2 * max(self.size, 1):
                del self.stale[next(iter(self.stale))]

    def _take(self, head: int) -> _Chain | None:
        """The pending chain at ``head``, no longer pending."""
        chain = self.pending.pop(head, None)
        if chain is not None and chain.unique is not None and (
                self.by_unique.get(chain.unique) == head):
            del self.by_unique[chain.unique]
        return chain

    def _read_twice(self, head: int, chain: _Chain, note: Note) -> bool:
        """Whether ``chain`` is a request already recorded at another head: that head's
        entry was read late, after the driver had reused its descriptors (or indirect
        table) for this request. Not recorded again; it is pending here now."""
        assert chain.unique is not None
        other = self.by_unique.get(chain.unique)
        if other is None or other == head:
            return False
        old = self.pending.get(other)
        if old is None or old.key != chain.key:
            return False
        self._take(other)
        self._take(head)
        self.pending[head] = chain
        self.by_unique[chain.unique] = head
        note(self.index, f"queue {self.index}: avail head {other} was read after the driver "
                         f"had reused its descriptors for unique {chain.unique} (now at head "
                         f"{head}): recorded once, that head's own request is not in the "
                         "capture")
        return True

    def _scan_used(self, mem: GuestMap, w: _Where, record: Record, note: Note, *,
                   reused: bool, stop_at_unknown: bool) -> bool:
        """Record the replies of the new used entries. ``reused``: the driver has already
        made one of these heads available again, so a reply whose unique is not its
        request's was overwritten, not sent that way. ``stop_at_unknown``: stop before an
        entry whose chain is not known yet (returns True then)."""
        _, dmm, doff, _, _, umm, uoff = w
        idx = _unpack_u16(umm, uoff + VIRTQ_USED_IDX)[0]
        last = self.last_used
        if idx == last:
            return False
        new = (idx - last) & 0xFFFF
        size = self.size
        if new > size:
            note(self.index, f"queue {self.index}: used.idx moved from {last} to {idx}, more "
                             f"than the queue size {size}; those replies are not recorded")
            self.last_used = idx
            return False
        ring = uoff + VIRTQ_USED_RING
        stopped = False
        for _ in range(new):
            head, length = _unpack_used(umm, ring + 8 * (last % size))
            if stop_at_unknown and head not in self.pending:
                # A chain of an avail entry not read yet (the daemon was quick): its
                # request is recorded first, its reply after.
                stopped = True
                break
            last = (last + 1) & 0xFFFF
            chain = self._take(head)
            try:
                if chain is None:
                    # No request was read for this chain (a missed or late scan): its reply
                    # would pair with nothing, and its buffers may be another's by now.
                    _, writable, _, room = self._walk(mem, dmm, doff, head)
                    top = mem.read(writable, 16) if room >= 16 else b""
                    unique = int.from_bytes(top[8:16], "little") if top else "?"
                    note(self.index, f"queue {self.index} used head {head}: its chain was not "
                                     f"read when it was made available; the reply to unique "
                                     f"{unique} is not recorded")
                    continue
                room = chain.room
                if not length:
                    if room:
                        note(self.index, f"queue {self.index} used head {head}: used.len 0 "
                                         f"for a chain with {room} writable bytes")
                    continue
                if length > room:
                    # Not the chain the proxy read at this head: the driver had reused its
                    # descriptors (or indirect table) before the proxy got to them.
                    note(self.index, f"queue {self.index} used head {head}: the reply to "
                                     f"unique {chain.unique} is not recorded: used.len "
                                     f"{length} exceeds the {room} writable bytes of the chain "
                                     "read at this head (reused before the proxy read it?)")
                    self._read_late(chain)
                    continue
                data = mem.read(chain.writable, min(length, max(self.limit, MIN_READ)))
            except RingError as e:
                note(self.index, f"queue {self.index} used head {head}: reply not "
                                 f"recorded: {e}")
                continue
            if chain.unique is not None and len(data) >= 16:
                unique = int.from_bytes(data[8:16], "little")
                # What the daemon wrote says its own length (fuse_out_header.len ==
                # used.len): a buffer that does not, under another unique, was reused.
                genuine = int.from_bytes(data[:4], "little") == length
                if unique != chain.unique and (reused or not genuine):
                    if genuine:
                        # A whole reply, to another request: the avail entry was read late,
                        # its descriptors already holding a later request (recorded in its
                        # place).
                        note(self.index, f"queue {self.index} avail head {head} was read "
                                         f"late: the request recorded for it (unique "
                                         f"{chain.unique}) is a later chain's; this chain's "
                                         f"own request and reply (unique {unique}) are not in "
                                         "the capture")
                    else:
                        note(self.index, f"queue {self.index} used head {head}: the reply to "
                                         f"unique {chain.unique} is not recorded: the driver "
                                         "took it and reused its buffer before the proxy "
                                         "read it")
                    self._read_late(chain)
                    continue
                if unique != chain.unique:
                    note(self.index, f"queue {self.index} used head {head}: the reply names "
                                     f"unique {unique}, the chain's request was unique "
                                     f"{chain.unique}")
            self.replies += 1
            record(1, self.index, data, length)
        self.last_used = last
        return stopped

    def _walk(self, mem: GuestMap, dmm: mmap.mmap, doff: int, head: int
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int, int]:
        """The device-readable and device-writable ``(gpa, len)`` segments of the chain at
        ``head`` and their byte counts (virtio 1.x 2.7.5, indirect tables 2.7.5.3)."""
        table, toff, tsize = dmm, doff, self.size
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        total = room = 0
        i = head
        steps = 0
        limit = self.size
        indirect = False
        while True:
            if i >= tsize:
                raise RingError(f"descriptor index {i} out of range ({tsize})")
            addr, ln, flags, nxt = _unpack_desc(table, toff + 16 * i)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    raise RingError("an indirect descriptor inside an indirect table")
                if not ln or ln % 16:
                    raise RingError(f"indirect table of {ln} bytes (not a multiple of 16)")
                table, toff = mem.gpa(addr, ln)
                tsize = ln // 16
                limit = steps + tsize
                indirect = True
                i = 0
                continue
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append((addr, ln))
                room += ln
            elif writable:
                raise RingError("a device-readable descriptor after a writable one")
            else:
                readable.append((addr, ln))
                total += ln
            steps += 1
            if not flags & VIRTQ_DESC_F_NEXT:
                return readable, writable, total, room
            if steps >= limit:
                raise RingError(f"chain longer than {limit} descriptors (a loop?)")
            i = nxt


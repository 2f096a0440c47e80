"""Split virtqueues in memfd-backed "guest" memory (virtio 1.x, section 2.7).

The frontend plays the driver: it owns the memory, writes descriptor chains and the avail
ring, and reads the used ring the device (virtiofsd) fills. Nothing here knows FUSE: a
request is a list of device-readable byte segments followed by device-writable areas.

The ring layouts are fixed little-endian C structs read and written in place in shared
memory on every request, so they are precompiled ``struct.Struct`` objects (the hot path),
not construct schemas; the vhost-user *messages* are construct schemas (vhost_user.py).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import TransportError

# virtio 1.x 2.7.5: struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
VIRTQ_DESC = struct.Struct("<QIHH")
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# 2.7.6: virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
# 2.7.8: virtq_used { le16 flags; le16 idx; virtq_used_elem ring[N]; le16 avail_event; }
# virtq_used_elem { le32 id; le32 len; }
VIRTQ_USED_ELEM = struct.Struct("<II")
VIRTQ_USED_F_NO_NOTIFY = 1
# Byte offsets of the fields inside the avail and used rings (the structs above).
VIRTQ_AVAIL_IDX = 2
VIRTQ_AVAIL_RING = 4
VIRTQ_USED_IDX = 2
VIRTQ_USED_RING = 4
U16 = struct.Struct("<H")
U64 = struct.Struct("<Q")
# Never store into a field the device may be reading with Struct.pack_into: CPython's
# pack_into memset()s the destination to zero before it writes the value, so a concurrent
# reader can see 0 (libvhost-user then panics "Guest moved used index from N to 0"; the
# Rust daemon stops serving the queue). Ring fields the device polls (avail flags, idx and
# ring entries) are stored through GuestMemory.u16, a memoryview cast to native u16 whose
# item assignment is a single 16-bit store (x86 is little-endian, like virtio 1.x).
_pack_desc = VIRTQ_DESC.pack_into
# Two adjacent descriptors in one store (chains are recycled whole, so they often are).
_pack_desc2 = struct.Struct("<QIHHQIHH").pack_into
_unpack_u16 = U16.unpack_from
# What a device-readable segment may be.
Buffer = bytes | bytearray | memoryview
# A tuple, not the union: isinstance with a tuple is the faster check.
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _as_chain(out: Buffer | Sequence[Buffer],
              in_sizes: int | Sequence[int]) -> tuple[Sequence[Buffer], Sequence[int]]:
    """``add()``'s arguments as sequences: one segment, one area (0: none)."""
    outs = (out,) if isinstance(out, _BYTES_LIKE) else out
    if isinstance(in_sizes, int):
        return outs, (in_sizes,) if in_sizes else ()
    return outs, in_sizes

PAGE = mmap.PAGESIZE
# Chains of one request segment and one reply area up to this size (header, body and reply
# of most metadata requests) live in a buffer owned by their head descriptor.
SLOT_SIZE = 256

# A full memory barrier (store -> load ordering, which x86's TSO does not give): Python has
# no fence, but taking and releasing a CPython lock executes locked read-modify-write
# instructions (glibc's semaphore fast path), which order all earlier stores before all
# later loads on x86. About 0.1 us; used only between publishing and reading a flag.
_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def full_fence() -> None:
    _fence_acquire()
    _fence_release()


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def _chain_layout(out: Sequence[Buffer], in_sizes: Sequence[int],
                  start: int) -> tuple[int, int, int]:
    """Where a chain's readable segments (``out_at``) and writable areas (``in_at``) start
    in its buffer, and the buffer's size, the segments of each side being contiguous
    (readable ones 8-byte padded). A side of two or more parts ends in a data part (WRITE's
    payload after its headers, READ's data after fuse_out_header, as a guest kernel hands
    page-backed buffers): that last part starts on a page boundary, so a daemon may do
    O_DIRECT I/O straight into it; the headers before it end where it begins."""
    out_at = start
    if len(out) > 1:
        head = sum((len(seg) + 7) & ~7 for seg in out[:-1])
        out_at = _align(start + head, PAGE) - head
    pos = out_at + sum((len(seg) + 7) & ~7 for seg in out)
    in_at = (pos + 7) & ~7
    if len(in_sizes) > 1:
        head = sum(in_sizes[:-1])
        in_at = _align(in_at + head, PAGE) - head
    return out_at, in_at, in_at + sum(in_sizes)


class GuestMemory:
    """One memfd, mapped here and handed to the daemon with SET_MEM_TABLE.

    ``gpa_base`` is the guest-physical address of offset 0; ``uaddr_base`` is the address
    the frontend reports as its own virtual address of offset 0 (the real mapping address,
    as QEMU does), used in SET_VRING_ADDR.
    """

    def __init__(self, size: int, *, gpa_base: int = 0x4000_0000, name: str = "fuseproto-guest"):
        self.size = _align(size, PAGE)
        self.gpa_base = gpa_base
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        probe = ctypes.c_char.from_buffer(self.mm)
        self.uaddr_base = ctypes.addressof(probe)
        del probe  # release the buffer export so the mapping can be closed later
        self.view = memoryview(self.mm)
        self.u16 = self.view.cast("H")  # single-store u16 access: see the note on U16
        self._bump = 0
        self._free: dict[int, list[int]] = {}
        self.allocated = 0  # live alloc() blocks (requests' buffers): a leak shows here

    # -- allocation: power-of-two size classes with free lists (requests recycle fast) ----
    def carve(self, size: int, align: int = PAGE) -> int:
        """Permanently reserve ``size`` bytes (rings); returns the offset."""
        off = _align(self._bump, align)
        if off + size > self.size:
            raise TransportError(f"guest memory exhausted ({self.size} bytes)")
        self._bump = off + size
        return off

    def alloc(self, size: int) -> int:
        """A block of at least ``size`` bytes; :meth:`release` gives it back."""
        # Size classes: powers of two from 256 bytes (2**8); sizes <= 256 all land in
        # class 8, a size of 257..512 in class 9, and so on.
        cls = (size - 1).bit_length() if size > 256 else 8
        free = self._free.get(cls)
        self.allocated += 1
        if free:
            return free.pop()
        try:
            # Blocks of a page or more start on a page (data segments are placed on page
            # boundaries inside them, as a guest's page-backed buffers are).
            return self.carve(1 << cls, PAGE if cls >= 12 else 64)
        except TransportError:
            self.allocated -= 1
            raise

    def release(self, off: int, size: int) -> None:
        self.allocated -= 1
        cls = (size - 1).bit_length() if size > 256 else 8
        free = self._free.get(cls)
        if free is None:
            self._free[cls] = [off]
        else:
            free.append(off)

    def gpa(self, off: int) -> int:
        return self.gpa_base + off

    def uaddr(self, off: int) -> int:
        return self.uaddr_base + off

    def close(self) -> None:
        if self.mm is None:
            return
        self.u16.release()
        self.view.release()
        self.mm.close()
        os.close(self.fd)
        self.mm = None  # type: ignore[assignment]


@dataclass(slots=True)
class Inflight:
    """One descriptor chain the device owns until it shows up in the used ring (built
    by :meth:`SplitVirtqueue.add` only; the transport hands it out as its token).

    The constructor takes what the chain is (the first eight fields, in order, and
    ``table_len`` for an indirect chain); the completion state after them starts empty
    and is not a constructor argument. Positional on purpose: a keyword call costs about
    0.4 us more per request on CPython 3.11, a tenth of a loopback round trip."""

    head: int
    descs: list[int]
    buf_off: int
    buf_size: int  # 0: the head's slot (nothing to free)
    in_off: int  # offset of the first device-writable byte
    in_size: int
    queue: int
    tag: object = None  # what the caller calls it (str or (opcode, unique)), for errors
    table_len: int = 0  # bytes of the indirect table at buf_off (0: a direct chain)
    # completion state, written by SplitVirtqueue.collect and the transport
    done: bool = field(default=False, init=False)
    used_len: int = field(default=0, init=False)
    abandoned: bool = field(default=False, init=False)  # the waiter gave up: free when used
    taken: bool = field(default=False, init=False)
    data: bytes | None = field(default=None, init=False)  # a slot chain's reply, copied out


class SplitVirtqueue:
    """One split virtqueue of ``size`` entries laid out in ``mem``.

    ``indirect`` (only once VIRTIO_RING_F_INDIRECT_DESC is negotiated): a request of two
    or more segments takes one ring descriptor pointing at an indirect table (2.7.5.3)
    instead of a chain of ring descriptors.
    """

    def __init__(self, mem: GuestMemory, index: int, size: int = 256, *,
                 indirect: bool = False):
        if size & (size - 1) or not 1 <= size <= 32768:
            raise ValueError("queue size must be a power of two <= 32768")
        self.mem = mem
        self.index = index
        self.size = size
        self.desc_off = mem.carve(16 * size, PAGE)
        self.avail_off = mem.carve(6 + 2 * size, 2)
        self.used_off = mem.carve(6 + 8 * size, PAGE)
        self._mm = mem.mm
        self._u16 = mem.u16
        self._gpa_base = mem.gpa_base
        # Taken from the end; laid out so a two-descriptor chain is an adjacent pair
        # (0, 1), (2, 3) ... and stays one when it comes back (add() then writes both
        # descriptors with one store).
        self._free_desc = [i ^ 1 for i in range(size - 1, -1, -1)] if size > 1 else [0]
        self._avail_idx = 0  # next avail index we publish (free-running u16)
        self._last_used = 0  # next used index we consume
        self.inflight: dict[int, Inflight] = {}
        self.interrupts = True
        self._avail_flags_off = self.avail_off
        self._avail_idx_off = self.avail_off + VIRTQ_AVAIL_IDX
        self._avail_ring_off = self.avail_off + VIRTQ_AVAIL_RING
        # The same fields as indexes into mem.u16 (avail_off is 2-aligned).
        self._avail_flags_i = self.avail_off >> 1
        self._avail_idx_i = self._avail_flags_i + 1
        self._avail_ring_i = self._avail_flags_i + 2
        self._used_flags_off = self.used_off
        self._used_idx_off = self.used_off + VIRTQ_USED_IDX
        self._used_ring_off = self.used_off + VIRTQ_USED_RING
        self._mask = size - 1
        self.indirect = indirect
        # One SLOT_SIZE buffer per descriptor index, used by a chain whose head it is.
        self._slot_base = mem.carve(SLOT_SIZE * size, 64)

    # addresses for SET_VRING_ADDR (frontend virtual addresses, like QEMU's)
    @property
    def desc_uaddr(self) -> int:
        return self.mem.uaddr(self.desc_off)

    @property
    def avail_uaddr(self) -> int:
        return self.mem.uaddr(self.avail_off)

    @property
    def used_uaddr(self) -> int:
        return self.mem.uaddr(self.used_off)

    def free_descriptors(self) -> int:
        return len(self._free_desc)

    def descriptors_for(self, segments: int) -> int:
        """Ring descriptors a request of ``segments`` segments takes."""
        return 1 if self.indirect and segments > 1 else segments

    def set_interrupts(self, on: bool) -> None:
        """Toggle VIRTQ_AVAIL_F_NO_INTERRUPT: off while busy-polling saves the daemon a
        call-eventfd write per reply."""
        if on != self.interrupts:
            self._u16[self._avail_flags_i] = 0 if on else VIRTQ_AVAIL_F_NO_INTERRUPT
            self.interrupts = on
            if on:
                # Store the flag, then (in the caller) load used.idx: a full fence between
                # them, or the daemon may still see NO_INTERRUPT after publishing the
                # reply we then miss (a lost wake-up until the next poll slice).
                full_fence()

    def device_wants_kick(self) -> bool:
        """Whether the device asks to be notified (VIRTQ_USED_F_NO_NOTIFY clear). Called
        after publishing avail.idx; the fence orders that store before this load (virtio
        1.x 2.7.13.3: a driver that skipped the kick on a stale flag would strand the
        request with a device that has just re-enabled notifications and gone to sleep)."""
        full_fence()
        return not (_unpack_u16(self._mm, self._used_flags_off)[0] & VIRTQ_USED_F_NO_NOTIFY)

    def add(self, out: Buffer | Sequence[Buffer], in_sizes: int | Sequence[int],
            tag: object = None) -> Inflight:
        """Write one chain and publish it in the avail ring (the caller kicks): ``out``
        is the device-readable bytes (one segment) or a sequence of segments, ``in_sizes``
        the size of one device-writable area (0: none) or a sequence of sizes.

        The only way onto the ring. The common chain (one ``bytes`` segment, one area,
        no indirect table) is placed inline here; other shapes by :meth:`_place_chain` /
        :meth:`_place_indirect`. Either way the head is published below, once."""
        free = self._free_desc
        seg: Buffer
        if type(out) is bytes and type(in_sizes) is int:  # the transport's usual call
            seg, area = out, in_sizes
            pair = area > 0 and not self.indirect
        else:
            outs, ins = _as_chain(out, in_sizes)
            pair = len(outs) == 1 and len(ins) == 1 and not self.indirect
            if pair:
                seg, area = outs[0], ins[0]
        if pair and len(free) >= 2:
            # One readable segment and one writable area: a descriptor pair, in the
            # head's slot when small.
            ln = len(seg)
            out_total = (ln + 7) & ~7
            buf_size = out_total + area
            mm = self._mm
            descs = free[-2:]
            del free[-2:]
            head, second = descs
            if buf_size <= SLOT_SIZE:
                # Most metadata requests: nothing to allocate or free, and the device
                # reads one compact region.
                buf = self._slot_base + head * SLOT_SIZE
                buf_size = 0  # Inflight.buf_size 0: a slot, not an alloc() block
            else:
                buf = self.mem.alloc(buf_size)
            mm[buf:buf + ln] = seg
            gpa = self._gpa_base + buf
            if second == head + 1:  # an adjacent pair (the free list keeps them so)
                _pack_desc2(mm, self.desc_off + 16 * head, gpa, ln, VIRTQ_DESC_F_NEXT,
                            second, gpa + out_total, area, VIRTQ_DESC_F_WRITE, 0)
            else:
                _pack_desc(mm, self.desc_off + 16 * head, gpa, ln, VIRTQ_DESC_F_NEXT, second)
                _pack_desc(mm, self.desc_off + 16 * second, gpa + out_total, area,
                           VIRTQ_DESC_F_WRITE, 0)
            req = Inflight(head, descs, buf, buf_size, buf + out_total, area, self.index, tag)
        else:
            outs, ins = _as_chain(out, in_sizes)
            if self.indirect and len(outs) + len(ins) > 1:
                req = self._place_indirect(outs, ins, tag)
            else:
                req = self._place_chain(outs, ins, tag)
        # Publish: the ring entry, then the index that makes it visible. Single 16-bit
        # stores (see the note on U16), in program order: x86 is TSO, so the device
        # never sees the index before the entry, nor a torn or zeroed index.
        head = req.head
        self.inflight[head] = req
        idx = self._avail_idx
        u16 = self._u16
        u16[self._avail_ring_i + (idx & self._mask)] = head
        idx = self._avail_idx = (idx + 1) & 0xFFFF
        u16[self._avail_idx_i] = idx
        return req

    def _place_chain(self, out: Sequence[Buffer],
                     in_sizes: Sequence[int], tag: object) -> Inflight:
        """Write a chain of ring descriptors (one per segment and area) and its buffer."""
        free = self._free_desc
        n_out = len(out)
        n = n_out + len(in_sizes)
        if n == 0:
            raise ValueError("empty descriptor chain")
        if n > len(free):
            raise TransportError(
                f"queue {self.index}: no free descriptors ({len(self.inflight)} requests in flight)"
            )
        out_at, in_at, buf_size = _chain_layout(out, in_sizes, 0)
        in_total = sum(in_sizes)
        buf = self.mem.alloc(buf_size)
        mm = self._mm
        # Chains go back to the free list whole and in order, so the tail is usually one
        # recycled chain.
        descs = free[-n:]
        del free[-n:]
        pos = buf + out_at
        i = 0
        last = n - 1
        gpa_base = self._gpa_base
        pack_desc = _pack_desc
        desc_off = self.desc_off
        for seg in out:
            ln = len(seg)
            mm[pos:pos + ln] = seg
            if i < last:
                pack_desc(mm, desc_off + 16 * descs[i], gpa_base + pos, ln,
                          VIRTQ_DESC_F_NEXT, descs[i + 1])
            else:
                pack_desc(mm, desc_off + 16 * descs[i], gpa_base + pos, ln, 0, 0)
            pos += (ln + 7) & ~7
            i += 1
        pos = in_off = buf + in_at
        for ln in in_sizes:
            if i < last:
                pack_desc(mm, desc_off + 16 * descs[i], gpa_base + pos, ln,
                          VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, descs[i + 1])
            else:
                pack_desc(mm, desc_off + 16 * descs[i], gpa_base + pos, ln,
                          VIRTQ_DESC_F_WRITE, 0)
            pos += ln
            i += 1
        return Inflight(descs[0], descs, buf, buf_size, in_off, in_total, self.index, tag)

    def _place_indirect(self, out: Sequence[Buffer],
                        in_sizes: Sequence[int], tag: object) -> Inflight:
        """Write one ring descriptor pointing at an indirect table: one buffer holds the
        table (first, so it is 16-byte aligned), the device-readable bytes, then the
        writable areas; it is freed whole when the chain comes back, so the table lives
        and dies with the request."""
        free = self._free_desc
        n = len(out) + len(in_sizes)
        # 2.7.5.3.1: a table is a chain, and a chain is at most Queue Size descriptors.
        if n > self.size:
            raise TransportError(
                f"queue {self.index}: {n} segments exceed the queue size {self.size}")
        if not free:
            raise TransportError(
                f"queue {self.index}: no free descriptors ({len(self.inflight)} requests in flight)"
            )
        table_len = 16 * n
        out_at, in_at, buf_size = _chain_layout(out, in_sizes, table_len)
        in_total = sum(in_sizes)
        buf = self.mem.alloc(buf_size)
        mm = self._mm
        gpa_base = self._gpa_base
        pack_desc = _pack_desc
        # Table entries chain with NEXT from index 0; the last has no NEXT (2.7.5.3.1).
        pos = buf + out_at
        ent = buf
        i = 1
        for seg in out:
            ln = len(seg)
            mm[pos:pos + ln] = seg
            pack_desc(mm, ent, gpa_base + pos, ln, VIRTQ_DESC_F_NEXT if i < n else 0,
                      i if i < n else 0)
            pos += (ln + 7) & ~7
            ent += 16
            i += 1
        pos = in_off = buf + in_at
        for ln in in_sizes:
            pack_desc(mm, ent, gpa_base + pos, ln,
                      VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT if i < n else VIRTQ_DESC_F_WRITE,
                      i if i < n else 0)
            pos += ln
            ent += 16
            i += 1
        head = free.pop()
        # The ring descriptor: INDIRECT alone (never with NEXT), len a multiple of 16.
        pack_desc(mm, self.desc_off + 16 * head, gpa_base + buf, table_len,
                  VIRTQ_DESC_F_INDIRECT, 0)
        return Inflight(head, [head], buf, buf_size, in_off, in_total, self.index, tag,
                        table_len)

    def has_used(self) -> bool:
        """Whether the device has published used entries :meth:`collect` has not taken
        yet (one load of used.idx: cheap enough to spin on)."""
        used_idx: int = _unpack_u16(self._mm, self._used_idx_off)[0]
        return used_idx != self._last_used

    def collect(self) -> list[Inflight]:
        """Consume every new used-ring entry; returns the completed chains (abandoned
        ones are freed and not returned)."""
        mm = self._mm
        used_idx = _unpack_u16(mm, self._used_idx_off)[0]
        last_used = self._last_used
        if used_idx == last_used:
            return []
        out = []
        pending = (used_idx - last_used) & 0xFFFF
        if pending > self.size:
            raise TransportError(
                f"queue {self.index}: used.idx jumped by {pending} (queue size {self.size})"
            )
        unpack = VIRTQ_USED_ELEM.unpack_from
        ring = self._used_ring_off
        mask = self._mask
        inflight = self.inflight
        free = self._free_desc
        for _ in range(pending):
            head, ln = unpack(mm, ring + 8 * (last_used & mask))
            last_used = (last_used + 1) & 0xFFFF
            req = inflight.pop(head, None)
            if req is None:
                self._last_used = last_used
                raise TransportError(f"queue {self.index}: used ring returned unknown head {head}")
            req.done = True
            req.used_len = ln
            if not req.buf_size:
                # A slot chain: copy the (small) reply out now, since the head and its slot
                # are free for the next chain from here on.
                if not req.abandoned:
                    in_off = req.in_off
                    req.data = mm[in_off:in_off + (ln if ln <= req.in_size else req.in_size)]
            elif req.abandoned:
                self.mem.release(req.buf_off, req.buf_size)
            free += req.descs
            if not req.abandoned:
                out.append(req)
        self._last_used = last_used
        return out

    def take_reply(self, req: Inflight) -> bytes:
        """Copy the device-written bytes out and free the chain's buffer."""
        if not req.buf_size:
            data = req.data  # copied out by collect()
            req.data = None
            return data if data is not None else b""
        n = req.used_len
        if n > req.in_size:
            n = req.in_size
        data = self._mm[req.in_off:req.in_off + n]
        self.mem.release(req.buf_off, req.buf_size)
        return data

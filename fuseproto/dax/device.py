"""Window devices: the host side of a virtio-fs DAX window.

A device receives SETUPMAPPING / REMOVEMAPPING requests (:class:`DaxMessage`, decoded
through the codec) and exposes the window's bytes. Semantics, as the virtio-fs spec and
the VMMs implement them (the host does ``mmap(MAP_FIXED)`` into the window):

* a mapping that exactly covers an existing one replaces it; a partial overlap splits the
  old one and keeps the parts outside the new range (``mmap(MAP_FIXED)`` semantics);
* REMOVEMAPPING puts anonymous (zero) memory back over the range; removing a range that
  is not mapped succeeds;
* ``foffset``, ``moffset`` and ``len`` must be multiples of ``2**map_alignment``, ``len``
  non-zero, the range inside the window, the file range end at or below 2**63 - 1 and
  the flags at most READ | WRITE, otherwise the request is refused with EINVAL and has
  no effect (a REMOVEMAPPING is checked whole before any entry applies; its ``count``
  must match its entries and be 1 to FUSE_REMOVEMAPPING_MAX_ENTRY). The table of these
  shapes, with a request of each, is :mod:`.forbidden`'s;
* reading a mapped page that lies wholly past the host file's end would raise SIGBUS;
  devices refuse it with :class:`WindowFault` (EFAULT) instead. Bytes of the last,
  partial page past end of file read as zero, as with mmap.

Devices: :class:`ModelDevice` (pure Python over a :class:`~fuseproto.dax.host.FileStore`),
:class:`MmapDevice` (a reserved region of this process, real ``mmap``),
:class:`~fuseproto.dax.virtiofsd.VirtiofsdDevice` (a real daemon), and
:class:`RefusingDevice` (another device with a geometry of its own, refusing chosen
requests: the fuzzer's error paths).
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
from collections.abc import Sequence
from typing import Any

from fuseproto import libc
from fuseproto.errors import FuseprotoError
from fuseproto.transport.window import Window

from .host import FileStore, Resolver
from .messages import (
    FLAG_READ,
    FLAG_WRITE,
    FUSE_REMOVEMAPPING,
    FUSE_SETUPMAPPING,
    REMOVEMAPPING_MAX_ENTRY,
    DaxMessage,
)

__all__ = [
    "DeviceMapping",
    "MmapDevice",
    "ModelDevice",
    "RefusingDevice",
    "WindowDevice",
    "WindowFault",
    "HOST_PAGE_SIZE",
]

HOST_PAGE_SIZE = mmap.PAGESIZE
FILE_OFFSET_MAX = (1 << 63) - 1  # loff_t: a mapped file range ends at or below it


class WindowFault(FuseprotoError, OSError):
    """An access to the window that would fault (SIGBUS past host EOF, write to a
    read-only or unmapped range, outside the window)."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(errno_, message)


class DeviceMapping:
    """One live mapping in the window as the device holds it. Immutable by contract (a
    plain slotted class, not a frozen dataclass: one is built per request and per split,
    and a frozen dataclass costs five times as much to build). Equality and hashing ignore
    ``source``; ``end`` is ``moffset + length``."""

    __slots__ = ("moffset", "length", "nodeid", "foffset", "flags", "fh", "source", "end")

    def __init__(self, moffset: int, length: int, nodeid: int, foffset: int, flags: int,
                 fh: int = 0, source: Any = None) -> None:
        self.moffset = moffset
        self.length = length
        self.nodeid = nodeid
        self.foffset = foffset
        self.flags = flags
        self.fh = fh
        self.source = source
        self.end = moffset + length

    def _key(self) -> tuple[int, int, int, int, int, int]:
        return (self.moffset, self.length, self.nodeid, self.foffset, self.flags, self.fh)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"DeviceMapping(moffset={self.moffset!r}, length={self.length!r}, "
                f"nodeid={self.nodeid!r}, foffset={self.foffset!r}, flags={self.flags!r}, "
                f"fh={self.fh!r})")

    def file_offset(self, moffset: int) -> int:
        return self.foffset + (moffset - self.moffset)

    def piece(self, start: int, end: int) -> DeviceMapping:
        """The part of this mapping covering window bytes ``[start, end)``."""
        return DeviceMapping(start, end - start, self.nodeid, self.foffset + (start - self.moffset),
                             self.flags, self.fh, self.source)


class WindowDevice:
    """Base class: request validation and the window's extent map.

    Subclasses implement :meth:`_apply_map`, :meth:`_apply_unmap` and the byte access
    (:meth:`read`, :meth:`write`). ``through_codec`` (default True) makes :meth:`submit`
    decode the message's bytes with ``decode_request`` instead of trusting its fields.
    """

    name = "device"

    def __init__(
        self, window_size: int, map_alignment: int | None = 12, *, through_codec: bool = True
    ) -> None:
        if window_size < 0:
            raise ValueError("window_size must be >= 0")
        self.window_size = window_size
        # log2 of the alignment, as fuse_init_out.map_alignment; None = not negotiated.
        self.map_alignment = map_alignment
        self.through_codec = through_codec
        self._starts: list[int] = []
        self._ext: dict[int, DeviceMapping] = {}
        self.requests = 0
        self.refused = 0

    # ---- requests -------------------------------------------------------------------
    @property
    def alignment(self) -> int:
        return 1 << (self.map_alignment or 0)

    def submit(self, msg: DaxMessage) -> int:
        """Apply one request; returns 0 or a positive errno (the reply's error)."""
        self.requests += 1
        if self.through_codec:
            fields = self._fields(msg)
            if fields is None:
                self.refused += 1
                return errno.EINVAL
            opcode, nodeid, body = fields
        else:  # the message's fields as given (what _fields answers, without the call)
            opcode, nodeid, body = msg.opcode, msg.nodeid, msg.body
        if opcode == FUSE_SETUPMAPPING:
            err = self._setup(nodeid, body)
        elif opcode == FUSE_REMOVEMAPPING:
            err = self._remove(body)
        else:
            err = errno.ENOSYS
        if err:
            self.refused += 1
        return err

    def _fields(self, msg: Any) -> tuple[Any, int, Any] | None:
        """(opcode, nodeid, body) of a request: decoded from its wire bytes when
        ``through_codec``, else its fields as given; None when the bytes do not decode."""
        if not self.through_codec:
            return msg.opcode, msg.nodeid, msg.body
        from fuseproto.errors import DecodeError
        from fuseproto.wire import codec

        try:
            req = codec.decode_request(msg.raw)
        except DecodeError:
            return None
        return req.opcode, req.nodeid, req.body

    # The refusal rules (EINVAL), shared by every device including the simulator's.
    def _bad_range(self, offset: int, length: int) -> bool:
        a = 1 << (self.map_alignment or 0)  # self.alignment, without the property call
        return (
            length <= 0 or offset % a != 0 or length % a != 0 or offset + length > self.window_size
        )

    def _bad_setup(self, moffset: int, length: int, foffset: int, flags: int = 0) -> bool:
        return (self._bad_range(moffset, length)
                or bool(foffset % (1 << (self.map_alignment or 0)))
                or foffset + length > FILE_OFFSET_MAX  # wraps, or past any file offset
                or bool(flags & ~(FLAG_READ | FLAG_WRITE)))

    def _bad_remove(self, count: int | None, ranges: Sequence[tuple[int, int]]) -> bool:
        """``count`` None: no count field to check (the entries are all there is)."""
        return (
            (count is not None and count != len(ranges))
            or not ranges
            or len(ranges) > REMOVEMAPPING_MAX_ENTRY
            or any(self._bad_range(m, n) for m, n in ranges)
        )

    def _setup(self, nodeid: int, body: Any) -> int:
        # item access: a Container's attributes go through Python code, its items do not
        moffset, length, foffset = body["moffset"], body["len"], body["foffset"]
        if self._bad_setup(moffset, length, foffset, body["flags"]):
            return errno.EINVAL
        m = DeviceMapping(moffset, length, nodeid, foffset, body["flags"], body["fh"])
        try:
            m = self._apply_map(m)
        except OSError as e:
            return e.errno or errno.EIO
        self._carve(m.moffset, m.end)
        self._insert(m)
        return 0

    def _remove(self, body: Any) -> int:
        ranges = [(e["moffset"], e["len"]) for e in body["entries"]]
        if self._bad_remove(body["count"], ranges):
            return errno.EINVAL
        for moffset, length in ranges:
            try:
                self._apply_unmap(moffset, length)
            except OSError as ex:
                return ex.errno or errno.EIO
            self._carve(moffset, moffset + length)
        return 0

    # ---- extent map -----------------------------------------------------------------
    def _insert(self, m: DeviceMapping) -> None:
        bisect.insort(self._starts, m.moffset)
        self._ext[m.moffset] = m

    def _carve(self, start: int, end: int, pieces: bool = False) -> list[DeviceMapping]:
        """Remove window bytes ``[start, end)`` from the extent map, splitting extents
        that straddle the edges; returns the removed pieces when ``pieces`` (else an
        empty list: a request has no use for them, and building them costs an object
        per extent)."""
        removed: list[DeviceMapping] = []
        starts, ext = self._starts, self._ext
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or ext[starts[i]].end <= start:
            i += 1
            if i >= len(starts) or starts[i] >= end:
                return removed  # nothing there: nothing released
        while i < len(starts) and starts[i] < end:
            m = ext.pop(starts[i])
            del starts[i]
            if pieces:
                removed.append(m.piece(max(start, m.moffset), min(end, m.end)))
            if m.moffset < start:
                left = m.piece(m.moffset, start)
                starts.insert(i, left.moffset)
                ext[left.moffset] = left
                i += 1
            if m.end > end:
                right = m.piece(end, m.end)
                starts.insert(i, right.moffset)
                ext[right.moffset] = right
                i += 1
        self._released(removed)
        return removed

    def release_range(self, start: int, end: int) -> list[DeviceMapping]:
        """Drop window bytes ``[start, end)`` from the extent map with no request and no
        validation (a bookkeeping view: :func:`~fuseproto.dax.invariants.check_trace`
        hands bytes a sender mapped over to it); returns the removed pieces."""
        return self._carve(start, end, pieces=True)

    def _released(self, pieces: list[DeviceMapping]) -> None:
        """Hook: window bytes were unmapped (the mmap device closes unused files);
        ``pieces`` are the removed pieces when the caller asked for them, else empty."""

    def mappings(self) -> list[DeviceMapping]:
        """Live mappings in window order."""
        return [self._ext[s] for s in self._starts]

    def mapping_at(self, moffset: int) -> DeviceMapping | None:
        i = bisect.bisect_right(self._starts, moffset) - 1
        if i >= 0:
            m = self._ext[self._starts[i]]
            if m.moffset <= moffset < m.end:
                return m
        return None

    def segments(self, moffset: int, length: int) -> list[tuple[int, int, DeviceMapping | None]]:
        """Split window bytes ``[moffset, moffset+length)`` into ``(start, end, mapping or
        None)`` pieces."""
        out: list[tuple[int, int, DeviceMapping | None]] = []
        pos, end = moffset, moffset + length
        starts, ext = self._starts, self._ext
        i = bisect.bisect_right(starts, pos) - 1
        if i >= 0 and length > 0:  # the common case: one mapping covers it all
            m = ext[starts[i]]
            if m.end >= end:
                return [(pos, end, m)]
        i = max(i, 0)
        while pos < end:
            nxt = ext[starts[i]] if i < len(starts) else None
            if nxt is not None and nxt.end <= pos:
                i += 1
                continue
            if nxt is None or nxt.moffset >= end:
                out.append((pos, end, None))
                break
            if nxt.moffset > pos:
                out.append((pos, nxt.moffset, None))
                pos = nxt.moffset
            stop = min(end, nxt.end)
            out.append((pos, stop, nxt))
            pos = stop
            i += 1
        return out

    def _check_inside(self, moffset: int, length: int) -> None:
        if moffset < 0 or length < 0 or moffset + length > self.window_size:
            raise WindowFault(
                errno.EFAULT,
                f"window access [{moffset:#x}, {moffset + length:#x}) outside the "
                f"{self.window_size:#x}-byte window",
            )

    # ---- to implement -----------------------------------------------------------------
    def _apply_map(self, m: DeviceMapping) -> DeviceMapping:
        return m

    def _apply_unmap(self, moffset: int, length: int) -> None:
        pass

    def read(self, moffset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, moffset: int, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> WindowDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _past_eof(m: DeviceMapping, start: int, end: int, size: int) -> int | None:
    """The first window offset in ``[start, end)`` of mapping ``m`` whose page lies wholly
    past a file of ``size`` bytes (an access there is SIGBUS), or None."""
    page = HOST_PAGE_SIZE
    limit = -(-size // page) * page  # file bytes up to the end of the last page
    first_bad = m.moffset + (limit - m.foffset)
    if first_bad < end:
        return max(first_bad, start)
    return None


class ModelDevice(WindowDevice):
    """A pure-Python window: mappings refer to the bytes of a :class:`FileStore`.

    ``files=None`` makes a data-less device for simulations: it keeps the extent map and
    validates requests, and :meth:`read` returns zeros.
    """

    name = "model"

    def __init__(
        self,
        window_size: int,
        files: FileStore | None = None,
        map_alignment: int | None = 12,
        *,
        through_codec: bool = True,
    ) -> None:
        super().__init__(window_size, map_alignment, through_codec=through_codec)
        self.files = files

    def _apply_map(self, m: DeviceMapping) -> DeviceMapping:
        if self.files is None:
            return m
        # Like mmap, the mapping holds the file itself: if the node id is later given to
        # another file, this mapping still shows the old one.
        try:
            src = self.files.data(m.nodeid)
        except (KeyError, FileNotFoundError):
            raise OSError(errno.EBADF, f"no host file for nodeid {m.nodeid}") from None
        if m.source is None:  # just built by _setup, not yet in the map: set in place
            m.source = src
            return m
        return DeviceMapping(m.moffset, m.length, m.nodeid, m.foffset, m.flags, m.fh, src)

    def _bytes_of(self, m: DeviceMapping) -> bytearray:
        assert self.files is not None
        return m.source if m.source is not None else self.files.data(m.nodeid)

    def read(self, moffset: int, length: int) -> bytes:
        self._check_inside(moffset, length)
        if self.files is None:
            return bytes(length)
        segs = self.segments(moffset, length)
        out = bytearray() if len(segs) > 1 else None  # one piece: its bytes as they are
        files = self.files
        for start, end, m in segs:
            if m is None:
                if out is None:
                    return bytes(end - start)
                out += bytes(end - start)
                continue
            data = m.source if m.source is not None else files.data(m.nodeid)  # _bytes_of
            f0 = m.foffset + (start - m.moffset)  # m.file_offset(start)
            size = len(data)
            # (a copy ending inside the file touches no page past its end: no _past_eof call)
            if f0 + (end - start) > size and (bad := _past_eof(m, start, end, size)) is not None:
                raise WindowFault(
                    errno.EFAULT,
                    f"read at window {bad:#x} is past the end of nodeid {m.nodeid} "
                    f"({size} bytes): SIGBUS on a real window",
                )
            chunk: bytes | bytearray = data[f0 : f0 + (end - start)]
            if len(chunk) < end - start:
                chunk = bytes(chunk) + bytes(end - start - len(chunk))
            if out is None:
                return bytes(chunk)
            out += chunk
        return bytes(out) if out is not None else b""

    def write(self, moffset: int, data: bytes) -> None:
        self._check_inside(moffset, len(data))
        if self.files is None:
            return
        pos = 0
        for start, end, m in self.segments(moffset, len(data)):
            if m is None or not m.flags & FLAG_WRITE:
                raise WindowFault(
                    errno.EFAULT,
                    f"write to {'unmapped' if m is None else 'read-only'} "
                    f"window range [{start:#x}, {end:#x})",
                )
            buf = self._bytes_of(m)
            if _past_eof(m, start, end, len(buf)) is not None:
                raise WindowFault(errno.EFAULT, f"write past end of nodeid {m.nodeid}")
            f0 = m.file_offset(start)
            n = max(0, min(end - start, len(buf) - f0))  # bytes past EOF are not kept
            buf[f0 : f0 + n] = data[pos : pos + n]
            pos += end - start


_INNER: Any = object()  # RefusingDevice: "the inner device's map_alignment"


class RefusingDevice(WindowDevice):
    """Another device seen through a geometry of its own, refusing chosen requests.

    :meth:`refuse` arms a request (``after`` requests from now) to be answered with an
    errno (EINVAL, ENOSPC, EIO, ...) without reaching ``inner``: a daemon that refuses
    before acting, so a manager's error paths run. ``window_size`` (a prefix of inner's
    window) and ``map_alignment`` (a multiple of inner's) let a fuzzer choose the geometry
    per input over one device; requests breaking them are refused with EINVAL here, as a
    device of that geometry would. The window's bytes and extent map are ``inner``'s.
    """

    name = "refusing"

    def __init__(self, inner: WindowDevice, *, window_size: int | None = None,
                 map_alignment: int | None = _INNER) -> None:
        size = inner.window_size if window_size is None else window_size
        if not 0 <= size <= inner.window_size:
            raise ValueError(f"window_size {size} outside inner's {inner.window_size}")
        align = inner.map_alignment if map_alignment is _INNER else map_alignment
        super().__init__(size, align, through_codec=False)
        self.inner = inner
        self.files = getattr(inner, "files", None)
        # request number -> errno of the refusals armed (empty: none; a plain attribute,
        # not a property: the fuzzer asks at every step)
        self.armed: dict[int, int] = {}
        self.injected: list[DaxMessage] = []  # requests answered by an armed refusal
        # validate here only what inner would not (a narrower window, a coarser alignment)
        self._narrower = size != inner.window_size or self.alignment != inner.alignment
        # Inner's extent map is this device's: its lookups answer here without a call in
        # between (they run for every window access and every checked message).
        self.segments = inner.segments  # type: ignore[method-assign]
        self.mapping_at = inner.mapping_at  # type: ignore[method-assign]
        if not self._narrower:  # inner's window is this one, and inner checks the bounds
            self.read = inner.read  # type: ignore[method-assign]

    def refuse(self, errno_: int, after: int = 0) -> None:
        """Answer the request ``after`` requests from now with ``errno_``."""
        self.armed[self.requests + after] = errno_

    def disarm(self) -> None:
        self.armed.clear()

    def submit(self, msg: DaxMessage) -> int:
        n = self.requests
        self.requests += 1
        if not self.armed and not self._narrower:  # nothing to refuse here: inner's answer
            err = self.inner.submit(msg)
            if err:
                self.refused += 1
            return err
        err = self.armed.pop(n, 0)
        if err:
            self.injected.append(msg)
        elif not self._narrower:
            pass
        elif msg.opcode == FUSE_SETUPMAPPING:
            b = msg.body
            err = (errno.EINVAL if self._bad_setup(b["moffset"], b["len"], b["foffset"],
                                                    b["flags"]) else 0)
        elif msg.opcode == FUSE_REMOVEMAPPING:
            ranges = [(e["moffset"], e["len"]) for e in msg.body["entries"]]
            err = errno.EINVAL if self._bad_remove(msg.body["count"], ranges) else 0
        if not err:
            err = self.inner.submit(msg)
        if err:
            self.refused += 1
        return err

    def mappings(self) -> list[DeviceMapping]:
        return self.inner.mappings()

    def mapping_at(self, moffset: int) -> DeviceMapping | None:
        return self.inner.mapping_at(moffset)

    def segments(self, moffset: int, length: int) -> list[tuple[int, int, DeviceMapping | None]]:
        return self.inner.segments(moffset, length)

    def read(self, moffset: int, length: int) -> bytes:
        if self._narrower:  # else inner's window is this one, and inner checks
            self._check_inside(moffset, length)
        return self.inner.read(moffset, length)

    def write(self, moffset: int, data: bytes) -> None:
        self._check_inside(moffset, len(data))
        self.inner.write(moffset, data)


# ---- the real window: this process's memory, real mmap ----------------------------------

class _Source:
    """An open host file backing one or more extents (closed when none is left)."""

    __slots__ = ("fd", "owned")

    def __init__(self, fd: int, owned: bool) -> None:
        self.fd, self.owned = fd, owned

    def size(self) -> int:
        return os.fstat(self.fd).st_size


class MmapDevice(WindowDevice):
    """The window as a reserved region of this process's memory.

    The memory work is :attr:`window`'s (a :class:`~fuseproto.transport.window.Window`
    whose holes are zero memory): a mapping is the host file mmapped at ``moffset`` with
    MAP_FIXED | MAP_SHARED (PROT_WRITE too when FUSE_SETUPMAPPING_FLAG_WRITE is set);
    REMOVEMAPPING maps anonymous memory back. This class keeps the extents and the open
    files. ``resolver(nodeid, fh)`` gives the host path (or an fd) of a SETUPMAPPING's
    file; :meth:`map_fd` is the entry point for an fd received on the vhost-user backend
    channel.

    Reads never fault: the file's current size is checked, and the window copies with
    ``process_vm_readv`` on this process, which returns EFAULT instead of raising SIGBUS
    if the file shrank in between.
    """

    name = "mmap"

    def __init__(
        self,
        window_size: int,
        resolver: Resolver | None = None,
        map_alignment: int | None = 12,
        *,
        through_codec: bool = True,
    ) -> None:
        super().__init__(window_size, map_alignment, through_codec=through_codec)
        if window_size % HOST_PAGE_SIZE:
            raise ValueError("the window size must be a multiple of the host page size")
        self.resolver = resolver
        # Holes are zero memory (what REMOVEMAPPING leaves), not PROT_NONE.
        self.window = Window(max(window_size, HOST_PAGE_SIZE),
                             hole_prot=libc.PROT_READ | libc.PROT_WRITE)
        self._closed = False
        self._sources: dict[int, _Source] = {}

    # mapping
    def _apply_map(self, m: DeviceMapping) -> DeviceMapping:
        if m.source is None:
            if self.resolver is None:
                raise OSError(errno.EBADF, "no resolver for node ids")
            try:
                target = self.resolver(m.nodeid, m.fh)
            except (KeyError, LookupError):
                raise OSError(errno.EBADF, f"cannot resolve nodeid {m.nodeid}") from None
            if isinstance(target, int):
                src = _Source(os.dup(target), True)
            else:
                mode = os.O_RDWR if m.flags & FLAG_WRITE else os.O_RDONLY
                src = _Source(os.open(target, mode | os.O_CLOEXEC), True)
            m = DeviceMapping(m.moffset, m.length, m.nodeid, m.foffset, m.flags, m.fh, src)
        try:
            self.window.map_fd(m.source.fd, m.foffset, m.moffset, m.length,
                               bool(m.flags & FLAG_WRITE))
        except OSError:
            self._close_source(m.source)
            raise
        return m

    def map_fd(
        self, fd: int, foffset: int, moffset: int, length: int, flags: int, nodeid: int = 0
    ) -> int:
        """Map ``fd`` (e.g. from a backend-channel message) as a SETUPMAPPING would;
        returns 0 or an errno."""
        if self._bad_range(moffset, length) or foffset % self.alignment:
            return errno.EINVAL
        m = DeviceMapping(moffset, length, nodeid, foffset, flags, 0, _Source(os.dup(fd), True))
        try:
            m = self._apply_map(m)
        except OSError as e:
            return e.errno or errno.EIO
        self._carve(moffset, moffset + length)
        self._insert(m)
        return 0

    def _apply_unmap(self, moffset: int, length: int) -> None:
        self.window.unmap(moffset, length)

    def _insert(self, m: DeviceMapping) -> None:
        super()._insert(m)
        if m.source is not None:
            self._sources[id(m.source)] = m.source

    def _released(self, pieces: list[DeviceMapping]) -> None:
        # Close the files no extent refers to any more (splits keep their source).
        live = {id(m.source) for m in self._ext.values()}
        for key in [k for k in self._sources if k not in live]:
            self._close_source(self._sources.pop(key))

    @staticmethod
    def _close_source(src: _Source) -> None:
        if src.owned and src.fd >= 0:
            os.close(src.fd)
            src.fd = -1

    # bytes
    def _check_eof(self, start: int, end: int, m: DeviceMapping, what: str) -> None:
        if m.source is None:
            return
        size = m.source.size()
        bad = _past_eof(m, start, end, size)
        if bad is not None:
            raise WindowFault(
                errno.EFAULT,
                f"{what} at window {bad:#x} is past the end of nodeid {m.nodeid} "
                f"({size} bytes): refused instead of SIGBUS",
            )

    def read(self, moffset: int, length: int) -> bytes:
        self._check_inside(moffset, length)
        if length == 0:
            return b""
        for start, end, m in self.segments(moffset, length):
            if m is not None:
                self._check_eof(start, end, m, "read")
        try:
            return self.window.read(moffset, length)
        except OSError as e:  # the file shrank since the check: EFAULT, not SIGBUS
            raise WindowFault(e.errno or errno.EFAULT, str(e)) from None

    def write(self, moffset: int, data: bytes) -> None:
        self._check_inside(moffset, len(data))
        for start, end, m in self.segments(moffset, len(data)):
            if m is not None:
                if not m.flags & FLAG_WRITE:
                    raise WindowFault(errno.EFAULT, f"write to read-only window range {start:#x}")
                self._check_eof(start, end, m, "write")
        try:
            self.window.write(moffset, data)
        except OSError as e:
            raise WindowFault(e.errno or errno.EFAULT, str(e)) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for src in self._sources.values():
            self._close_source(src)
        self._sources.clear()
        self._ext.clear()
        self._starts.clear()
        self.window.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

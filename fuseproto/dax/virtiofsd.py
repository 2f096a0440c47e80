"""DAX against a real virtiofsd: the device that sends the messages to the daemon, and the
file-system side (size, FUSE_READ, FUSE_WRITE) through the same client.

:class:`VirtiofsdDevice` forwards every SETUPMAPPING / REMOVEMAPPING to the daemon through
a :class:`fuseproto.client.Client` (so the bytes on the virtqueue are built by the session
and the codec). The daemon's answer is the device's answer: the released virtiofsd
builds answer ENOSYS (they have no DAX support), which reaches the manager as the errno of
its DAX attempt -- OSv then falls back to FUSE_READ, Linux reports the error. When the
daemon accepts a mapping, the window's bytes come from ``window``: a
:class:`~fuseproto.dax.device.MmapDevice` over the same shared directory mirrors the
mapping (resolving the node id to the host file), or the vhost-user backend channel
hands it the daemon's fd (``MmapDevice.map_fd``).

:class:`ClientBackend` is the :class:`~fuseproto.dax.host.FuseBackend` of a live daemon.

Against a daemon that implements DAX (the source build ``c-dax``, run with ``-o dax``):
:class:`DeviceTarget` lets the vhost-user backend channel's
:class:`~fuseproto.transport.backend.DaxMapHandler` map what the daemon asks into a
:class:`~fuseproto.dax.device.MmapDevice` (the real window, and its extent map), so the
device's mappings are the daemon's own, not a mirror; ``VirtiofsdDevice(...,
record=handler, mirror=False)`` pairs each DAX request with the backend requests it
caused (:attr:`VirtiofsdDevice.log`), and :func:`check_backend_record` checks the
invariants on that record (:func:`open_dax_daemon` sets all of it up).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from fuseproto.client import DEFAULT_INIT_FLAGS, Client
from fuseproto.daemons import dax_options
from fuseproto.errors import DaemonError, FuseError
from fuseproto.transport.backend import ALL_ONES, BackendEvent, DaxMapHandler
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.transport.vhost_user_proto import (
    VHOST_USER_FS_FLAG_MAP_W,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
)
from fuseproto.wire.constants import InitFlags

from .device import DeviceMapping, MmapDevice, WindowDevice, WindowFault
from .invariants import Violation
from .messages import FLAG_READ, FLAG_WRITE, FUSE_SETUPMAPPING, DaxMessage

__all__ = ["RECORD_INVARIANTS", "ClientBackend", "DeviceTarget", "LiveDax", "RecordEntry",
           "VirtiofsdDevice",
           "check_backend_record", "open_dax_daemon"]

# INVARIANTS-style names of what check_backend_record checks on the backend record.
RECORD_INVARIANTS: dict[str, str] = {
    "alignment": "every FS_MAP / FS_UNMAP range is aligned to 2**map_alignment, len != 0",
    "inside_window": "every mapped or unmapped range lies inside the window",
    "exact_ranges": "an accepted SETUPMAPPING is mapped exactly as asked (one FS_MAP of "
    "its foffset, moffset, len), an accepted REMOVEMAPPING unmaps exactly its entries; a "
    "refused request maps and unmaps nothing",
    "accounting": "mapped bytes from the record == the window's mapped pages; "
    "mapped + free == total",
    "handle_access": "the daemon never maps more access than the handle allows: no "
    "writable map for a read-only handle, nor a map flag beyond the fd's access mode",
    "unmap_all": "after DESTROY nothing is left mapped",
}


@dataclass(frozen=True)
class RecordEntry:
    """One DAX request sent to the daemon, its answer (0 or errno) and the
    backend-channel requests the daemon sent while serving it."""

    msg: DaxMessage
    error: int
    events: tuple[BackendEvent, ...]


class DeviceTarget:
    """The backend channel's map target over an :class:`MmapDevice`: the daemon's FS_MAP
    goes to :meth:`MmapDevice.map_fd` (window and extent map), FS_UNMAP puts holes back
    and drops the extents. Raises OSError for what the window refuses."""

    def __init__(self, device: MmapDevice) -> None:
        self.device = device
        self.size = device.window_size
        # The node id of the request being served (VirtiofsdDevice.submit sets it): the
        # owner of what gets mapped, which FS_MAP itself does not carry.
        self.nodeid = 0

    @property
    def closed(self) -> bool:
        """The device's window was given back (no map or unmap may touch it now)."""
        return self.device.window.base == 0

    def map_fd(self, fd: int, fd_offset: int, offset: int, length: int,
               writable: bool) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "the window is closed")
        err = self.device.map_fd(fd, fd_offset, offset, length,
                                 FLAG_READ | (FLAG_WRITE if writable else 0), self.nodeid)
        if err:
            raise OSError(err, os.strerror(err))

    def unmap(self, offset: int, length: int) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "the window is closed")
        self.device.window.unmap(offset, length)
        self.device.release_range(offset, offset + length)


class VirtiofsdDevice(WindowDevice):
    """Requests go to the daemon; the window's bytes and extent map are ``window``'s."""

    name = "virtiofsd"

    def __init__(
        self,
        client: Any,
        window: WindowDevice | None = None,
        *,
        window_size: int | None = None,
        map_alignment: int | None = 12,
        mirror: bool = True,
        record: DaxMapHandler | None = None,
    ) -> None:
        size = window.window_size if window is not None else (window_size or 0)
        align = window.map_alignment if window is not None else map_alignment
        super().__init__(size, align)
        self.client = client
        self.window = window
        self.mirror = mirror
        self.replies: dict[int, int] = {}  # errno -> count of daemon answers
        # With a backend-channel handler: each request with the backend requests it caused.
        self.record = record
        self.log: list[RecordEntry] = []

    def submit(self, msg: DaxMessage) -> int:
        self.requests += 1
        first = 0
        if self.record is not None:
            first = len(self.record.events)
            if isinstance(self.record.window, DeviceTarget):
                self.record.window.nodeid = msg.nodeid
        try:
            self.client.call(msg.opcode, msg.body, nodeid=msg.nodeid)
            err = 0
        except FuseError as e:
            err = e.errno or errno.EIO
        if self.record is not None:
            self.log.append(RecordEntry(msg, err, tuple(self.record.events[first:])))
        self.replies[err] = self.replies.get(err, 0) + 1
        if err:
            self.refused += 1
            return err
        if self.window is not None and self.mirror:
            local = self.window.submit(msg)
            if local:  # the daemon accepted what the local window refuses: report it
                return local
        return 0

    # The window: delegated (an empty window when there is none).
    def mappings(self) -> list[DeviceMapping]:
        return self.window.mappings() if self.window is not None else []

    def mapping_at(self, moffset: int) -> DeviceMapping | None:
        return self.window.mapping_at(moffset) if self.window is not None else None

    def segments(self, moffset: int, length: int) -> list[tuple[int, int, DeviceMapping | None]]:
        if self.window is not None:
            return self.window.segments(moffset, length)
        return [(moffset, moffset + length, None)] if length > 0 else []

    def read(self, moffset: int, length: int) -> bytes:
        if self.window is None:
            raise WindowFault(errno.EFAULT, "no window memory attached")
        return self.window.read(moffset, length)

    def write(self, moffset: int, data: bytes) -> None:
        if self.window is None:
            raise WindowFault(errno.EFAULT, "no window memory attached")
        self.window.write(moffset, data)

    def close(self) -> None:
        if self.window is not None:
            self.window.close()


class ClientBackend:
    """``FuseBackend`` over a live client: GETATTR for sizes (cached until
    :meth:`invalidate`), FUSE_READ in pieces of at most ``max_read`` bytes, FUSE_WRITE."""

    def __init__(self, client: Any, max_read: int = 128 * 1024) -> None:
        self.client = client
        self.max_read = max_read
        self._sizes: dict[int, int] = {}
        self.fuse_reads = 0
        self.fuse_read_bytes = 0

    def note_size(self, nodeid: int, size: int) -> None:
        """Remember ``attr.size`` from a LOOKUP / GETATTR reply."""
        self._sizes[nodeid] = size

    def file_size(self, nodeid: int) -> int:
        if nodeid not in self._sizes:
            self._sizes[nodeid] = self.client.getattr(nodeid).attr.size
        return self._sizes[nodeid]

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(self.max_read, size - len(out))
            piece = bytes(self.client.read(nodeid, fh, offset + len(out), n))
            self.fuse_reads += 1
            out += piece
            if len(piece) < n:
                break
        self.fuse_read_bytes += len(out)
        return bytes(out)

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        done = 0
        while done < len(data):
            done += self.client.write(nodeid, fh, offset + done, data[done : done + self.max_read])
        self._sizes[nodeid] = max(self._sizes.get(nodeid, 0), offset + done)
        return done


# ---- the backend-channel record as ground truth -------------------------------------------
def _entries(ev: BackendEvent) -> list[tuple[int, int, int, int]]:
    """(fd_offset, cache_offset, len, flags) of an FS_MAP / FS_UNMAP event, up to len 0."""
    m = ev.payload
    if not isinstance(m, VhostUserFSBackendMsg):
        return []
    out = []
    for fo, co, ln, fl in zip(m.fd_offset, m.cache_offset, m.len, m.flags, strict=True):
        if ln == 0:
            break
        out.append((fo, co, ln, fl))
    return out


def record_mappings(events: list[BackendEvent], window_size: int) -> dict[int, tuple[int, bool]]:
    """What the record leaves mapped: start -> (end, writable), replaying the accepted
    FS_MAP / FS_UNMAP requests."""
    live: dict[int, tuple[int, bool]] = {}
    R = VhostUserBackendRequest
    for ev in events:
        if ev.result != 0 or ev.request not in (R.FS_MAP, R.FS_UNMAP):
            continue
        for _fo, co, ln, fl in _entries(ev):
            end = window_size if ln == ALL_ONES else co + ln
            _carve(live, co, end)
            if ev.request == R.FS_MAP:
                live[co] = (end, bool(fl & VHOST_USER_FS_FLAG_MAP_W))
    return live


def _carve(live: dict[int, tuple[int, bool]], start: int, end: int) -> None:
    for s0, (e0, w) in list(live.items()):
        if s0 < end and start < e0:
            del live[s0]
            if s0 < start:
                live[s0] = (start, w)
            if e0 > end:
                live[end] = (e0, w)


def check_backend_record(
    events: list[BackendEvent],
    window_size: int,
    map_alignment: int | None = 12,
    *,
    log: list[RecordEntry] | tuple[RecordEntry, ...] = (),
    handle_access: dict[int, int] | None = None,
    mapped_bytes: int | None = None,
    expect_empty: bool = False,
) -> list[Violation]:
    """The invariants (:data:`RECORD_INVARIANTS`) on what the daemon actually asked the
    frontend to map (``events``: a :class:`DaxMapHandler` record). ``log`` (from
    :attr:`VirtiofsdDevice.log`) ties requests to the backend requests they caused and
    ``handle_access`` gives each fh's open mode (os.O_RDONLY / O_RDWR) for
    ``handle_access``; ``mapped_bytes``: what the window says is mapped (accounting);
    ``expect_empty``: nothing may be left mapped (after DESTROY)."""
    align = 1 << map_alignment if map_alignment is not None else 1
    out: list[Violation] = []
    R = VhostUserBackendRequest
    names = {R.FS_MAP: "FS_MAP", R.FS_UNMAP: "FS_UNMAP"}
    live: dict[int, tuple[int, bool]] = {}
    for i, ev in enumerate(events):
        if ev.request not in names:
            continue
        what = f"event {i} {names[R(ev.request)]}"
        for fo, co, ln, fl in _entries(ev):
            whole = ev.request == R.FS_UNMAP and ln == ALL_ONES
            end = window_size if whole else co + ln
            if fo % align or co % align or (not whole and ln % align):
                out.append(Violation("alignment", f"{what} [{co:#x}, +{ln:#x}) file "
                                                  f"{fo:#x} not aligned to {align:#x}"))
            if end > window_size:
                out.append(Violation("inside_window", f"{what} [{co:#x}, {end:#x}) beyond "
                                                      f"the window ({window_size:#x})"))
            if ev.request == R.FS_MAP:
                writable = bool(fl & VHOST_USER_FS_FLAG_MAP_W)
                if ev.fd_access == os.O_WRONLY or (writable and ev.fd_access != os.O_RDWR):
                    out.append(Violation("handle_access", f"{what} flags {fl:#x} with an fd "
                                                          f"of access mode {ev.fd_access}"))
            if ev.result == 0:
                _carve(live, co, end)
                if ev.request == R.FS_MAP:
                    live[co] = (end, bool(fl & VHOST_USER_FS_FLAG_MAP_W))
    total = sum(e - s for s, (e, _w) in live.items())
    if total > window_size:
        out.append(Violation("accounting", f"mapped {total:#x} > window {window_size:#x}"))
    if mapped_bytes is not None and mapped_bytes != total:
        out.append(Violation("accounting", f"the record leaves {total:#x} bytes mapped, "
                                           f"the window has {mapped_bytes:#x}"))
    if expect_empty and live:
        out.append(Violation("unmap_all", f"{len(live)} range(s) still mapped: "
                                          f"{sorted((hex(s), hex(e)) for s, (e, _w) in live.items())[:8]}"))
    for entry in log:
        msg = entry.msg
        out += _exact(entry)
        if msg.opcode != FUSE_SETUPMAPPING or handle_access is None:
            continue
        mode = handle_access.get(msg.body.fh)
        if mode is None or mode == os.O_RDWR:
            continue
        wants_write = bool(msg.body.flags & FLAG_WRITE)
        maps_write = any(ev.request == R.FS_MAP and
                         (any(fl & VHOST_USER_FS_FLAG_MAP_W for *_x, fl in _entries(ev))
                          or ev.fd_access not in (None, os.O_RDONLY))
                         for ev in entry.events)
        if maps_write or (wants_write and entry.error == 0):
            out.append(Violation("handle_access", f"a read-only handle (fh {msg.body.fh:#x}) "
                                 f"got a writable mapping (answer {entry.error})",
                                 message=msg.describe()))
    return out


def _exact(entry: RecordEntry) -> list[Violation]:
    """exact_ranges for one request: what its backend requests did vs what it asked."""
    R = VhostUserBackendRequest
    msg, b = entry.msg, entry.msg.body
    maps = [e for ev in entry.events if ev.request == R.FS_MAP for e in _entries(ev)]
    unmaps = [(co, ln) for ev in entry.events if ev.request == R.FS_UNMAP
              for _fo, co, ln, _fl in _entries(ev)]
    if entry.error:
        want_maps: list[tuple[int, int, int]] = []
        want_unmaps: list[tuple[int, int]] = []
    elif msg.opcode == FUSE_SETUPMAPPING:
        want_maps, want_unmaps = [(b.foffset, b.moffset, b.len)], []
    else:
        # the entries the count announces (a daemon must refuse a mismatch)
        want_maps, want_unmaps = [], [(e.moffset, e.len) for e in b.entries][: b.count]
    got_maps = [(fo, co, ln) for fo, co, ln, _fl in maps]
    if got_maps == want_maps and unmaps == want_unmaps:
        return []
    return [Violation("exact_ranges", f"answer {entry.error}: asked maps {want_maps} "
                                      f"unmaps {want_unmaps}, the daemon sent maps "
                                      f"{got_maps} unmaps {unmaps}", message=msg.describe())]


@dataclass
class LiveDax:
    """A DAX-enabled daemon with the real window: :func:`open_dax_daemon`'s result."""

    client: Any
    window: MmapDevice
    handler: DaxMapHandler
    device: VirtiofsdDevice
    map_alignment: int
    owns_window: bool = True

    def violations(self, **kw: Any) -> list[Violation]:
        """:func:`check_backend_record` on this daemon's record and window."""
        return check_backend_record(self.handler.events, self.window.window_size,
                                    self.map_alignment, log=self.device.log,
                                    mapped_bytes=self.window.window.mapped_pages()
                                    * os.sysconf("SC_PAGE_SIZE"), **kw)

    def close(self) -> None:
        self.client.close()
        if self.owns_window:
            self.window.close()


def open_dax_daemon(installation: Any, shared_dir: str, window_size: int, *,
                    daemon_args: list[str] | None = None, window: MmapDevice | None = None,
                    **spawn: Any) -> LiveDax:
    """Start ``installation`` (``c-dax``) with ``-o dax -o dax_window=<window_size>`` on
    ``shared_dir`` with a backend channel mapping into a new :class:`MmapDevice`, INIT it
    offering FUSE_MAP_ALIGNMENT, and return the pieces. The window's extents are the
    daemon's mappings (``mirror=False``). ``window``: an existing one to share with other
    connections (several mounts on one device; :meth:`LiveDax.close` then leaves it open,
    close it after every connection)."""
    own = window is None
    if window is None:
        window = MmapDevice(window_size)
    handler = DaxMapHandler(DeviceTarget(window))
    args = [*dax_options(window_size), *(daemon_args or [])]
    try:
        transport = VhostUserTransport.spawn(installation, shared_dir, daemon_args=args,
                                             backend_handler=handler, **spawn)
    except BaseException:
        if own:
            window.close()
        raise
    client = Client(transport)
    try:
        out = client.init(flags=DEFAULT_INIT_FLAGS | InitFlags.FUSE_MAP_ALIGNMENT)
        if not out.flags & InitFlags.FUSE_MAP_ALIGNMENT:
            raise DaemonError(f"{installation.binary} does not offer FUSE_MAP_ALIGNMENT "
                              "(not c-dax, or no -o dax)")
        align = int(out.map_alignment)
    except BaseException:
        client.close()
        if own:
            window.close()
        raise
    device = VirtiofsdDevice(client, window, mirror=False, record=handler)
    return LiveDax(client, window, handler, device, align, own)

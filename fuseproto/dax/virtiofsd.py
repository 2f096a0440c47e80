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
"""

from __future__ import annotations

import errno
from typing import Any

from fuseproto.errors import FuseError

from .device import DeviceMapping, WindowDevice, WindowFault
from .messages import DaxMessage

__all__ = ["ClientBackend", "VirtiofsdDevice"]


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
    ) -> None:
        size = window.window_size if window is not None else (window_size or 0)
        align = window.map_alignment if window is not None else map_alignment
        super().__init__(size, align)
        self.client = client
        self.window = window
        self.mirror = mirror
        self.replies: dict[int, int] = {}  # errno -> count of daemon answers

    def submit(self, msg: DaxMessage) -> int:
        self.requests += 1
        try:
            self.client.call(msg.opcode, msg.body, nodeid=msg.nodeid)
            err = 0
        except FuseError as e:
            err = e.errno or errno.EIO
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

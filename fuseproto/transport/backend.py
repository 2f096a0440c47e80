"""The vhost-user backend channel (SET_BACKEND_REQ_FD) and the DAX map handler it serves.

When a daemon answers FUSE_SETUPMAPPING it asks the frontend, over this channel, to map a
range of a file (the fd travels with the message) into the DAX window, a memory region the
frontend owns and the guest sees as a virtio shared memory region
(:class:`~fuseproto.transport.window.Window`):

* ``VHOST_USER_BACKEND_SHMEM_MAP`` / ``_UNMAP`` (upstream, ``VhostUserMMap``: shmid,
  fd_offset, shm_offset, len, flags bit 0 = writable);
* the legacy virtio-fs DAX draft's ``FS_MAP`` / ``FS_UNMAP`` (up to 8 entries per message
  in parallel arrays; a len of 0 ends the list; unmap len ~0 means "to the window's end").

Replies (a u64, 0 = success) are sent when the message sets NEED_REPLY. Messages and
framing come from :mod:`.vhost_user_proto`.

:class:`DaxMapHandler` records every request it receives (:attr:`DaxMapHandler.events`,
with the access mode of the fd that came with it): that record is the ground truth of
what the daemon mapped, which the DAX invariants check
(:func:`fuseproto.dax.virtiofsd.check_backend_record`). The source build ``c-dax``
(``fuseproto daemons build c-dax``, ``-o dax``) sends the legacy FS_MAP / FS_UNMAP.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import TransportError
from .vhost_user_proto import (
    BACKEND_PAYLOADS,
    VHOST_USER_FLAG_MAP_RW,
    VHOST_USER_FS_BACKEND_ENTRIES,
    VHOST_USER_FS_FLAG_MAP_W,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
    VhostUserMMap,
    VhostUserPayloadError,
    VhostUserU64,
    parse_payload,
    recv_message,
    send_message,
)
from .window import Window

ALL_ONES = (1 << 64) - 1  # FS_UNMAP len: "to the end of the window"


class MapTarget(Protocol):
    """Where :class:`DaxMapHandler` maps: a :class:`~fuseproto.transport.window.Window`,
    or an adapter that also keeps an extent map (``fuseproto.dax.virtiofsd.DeviceTarget``).
    Both raise OSError for a range they refuse."""

    @property
    def size(self) -> int: ...

    def map_fd(self, fd: int, fd_offset: int, offset: int, length: int,
               writable: bool) -> None: ...

    def unmap(self, offset: int, length: int) -> None: ...


class BackendHandler(Protocol):
    """What :class:`BackendChannel` calls for each backend request: returns the u64
    result (0 = success, else an errno). The channel closes ``fds`` afterwards."""

    def handle(self, request: int, payload: bytes, fds: list[int]) -> int: ...


@dataclass
class BackendEvent:
    """One request the daemon sent on the backend channel, and our answer (0 = ok).
    ``fd_access``: ``O_ACCMODE`` of the fd that came with it (os.O_RDONLY / O_WRONLY /
    O_RDWR), None without one."""

    request: int
    payload: object
    result: int
    fd_access: int | None = None


@dataclass
class DaxMapHandler:
    """Handles map/unmap requests by mapping into ``window`` (shmid ``shmid`` only), and
    records each in :attr:`events` (a list: appended from the channel's thread)."""

    window: Window | MapTarget
    shmid: int = 0
    events: list[BackendEvent] = field(default_factory=list)

    def handle(self, request: int, payload: bytes, fds: list[int]) -> int:
        R = VhostUserBackendRequest
        m: object = payload
        access = None
        if fds:
            with contextlib.suppress(OSError):
                access = fcntl.fcntl(fds[0], fcntl.F_GETFL) & os.O_ACCMODE
        try:
            m = parse_payload(BACKEND_PAYLOADS, request, payload)
            if isinstance(m, VhostUserMMap):
                result = self._shmem(request == R.SHMEM_MAP, m, fds)
            elif isinstance(m, VhostUserFSBackendMsg) and request != R.FS_SYNC:
                result = self._fs(request == R.FS_MAP, m, fds)
            else:
                result = errno.ENOSYS
        except VhostUserPayloadError:
            result = errno.EINVAL
        except (ValueError, OSError) as e:
            result = getattr(e, "errno", None) or errno.EINVAL
        self.events.append(BackendEvent(request, m, result, access))
        return result

    def disconnected(self) -> None:
        """The connection ended (:class:`BackendChannel` calls this when the channel
        closes): the window's mappings die with it, as a VMM drops the DAX cache when the
        daemon goes. Not recorded in :attr:`events` (nothing the daemon sent)."""
        if getattr(self.window, "closed", False) or getattr(self.window, "base", None) == 0:
            return  # already given back: a MAP_FIXED now would land on foreign memory
        with contextlib.suppress(OSError):
            self.window.unmap(0, self.window.size)

    def _shmem(self, is_map: bool, m: VhostUserMMap, fds: list[int]) -> int:
        if m.shmid != self.shmid or (is_map and not fds):
            return errno.EINVAL
        if is_map:
            self.window.map_fd(fds[0], m.fd_offset, m.shm_offset, m.len,
                               bool(m.flags & VHOST_USER_FLAG_MAP_RW))
        else:
            self.window.unmap(m.shm_offset, m.len)
        return 0

    def _fs(self, is_map: bool, m: VhostUserFSBackendMsg, fds: list[int]) -> int:
        if is_map and not fds:
            return errno.EINVAL
        window = self.window
        for i in range(VHOST_USER_FS_BACKEND_ENTRIES):
            length = m.len[i]
            if length == 0:
                break
            if is_map:
                window.map_fd(fds[0], m.fd_offset[i], m.cache_offset[i], length,
                              bool(m.flags[i] & VHOST_USER_FS_FLAG_MAP_W))
            else:
                offset = m.cache_offset[i]
                window.unmap(offset, window.size - offset if length == ALL_ONES else length)
        return 0


class BackendChannel:
    """Serves the backend's requests on ``sock`` in a thread until the peer closes it."""

    def __init__(self, sock: socket.socket, handler: BackendHandler) -> None:
        self.sock = sock
        self.handler = handler
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vhost-user-backend", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    msg = recv_message(self.sock, what="backend request")
                except TransportError:  # peer closed: the daemon exited or we closed
                    hook = getattr(self.handler, "disconnected", None)
                    if hook is not None:
                        hook()
                    return
                try:
                    result = self.handler.handle(msg.request, msg.payload, msg.fds)
                finally:
                    for fd in msg.fds:
                        os.close(fd)
                if msg.need_reply:
                    send_message(self.sock, msg.request, VhostUserU64(result),
                                 flags=VHOST_USER_VERSION | VHOST_USER_REPLY_MASK)
        except BaseException as e:  # recorded for the owner; a thread cannot raise to it
            self.error = e

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)
        self.sock.close()

"""The vhost-user backend channel (SET_BACKEND_REQ_FD) and a DAX window it maps into.

When a daemon answers FUSE_SETUPMAPPING it asks the frontend, over this channel, to map a
range of a file (the fd travels with the message) into the DAX window, a memory region the
frontend owns and the guest sees as a virtio shared memory region:

* ``VHOST_USER_BACKEND_SHMEM_MAP`` / ``_UNMAP`` (upstream, ``VhostUserMMap``: shmid,
  fd_offset, shm_offset, len, flags bit 0 = writable);
* the legacy virtio-fs DAX draft's ``FS_MAP`` / ``FS_UNMAP`` (up to 8 entries per message
  in parallel arrays; a len of 0 ends the list; unmap len ~0 means "to the window's end").

Replies (a u64, 0 = success) are sent when the message sets NEED_REPLY.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import socket
import threading
from dataclasses import dataclass, field

from ..errors import TransportError
from .vhost_user import (
    VHOST_USER_FS_BACKEND_ENTRIES,
    VHOST_USER_REPLY_MASK,
    VHOST_USER_VERSION,
    VhostUserBackendRequest,
    VhostUserFSBackendMsg,
    VhostUserMMap,
    VhostUserU64,
    recv_message,
    send_message,
)

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000
VHOST_USER_FS_FLAG_MAP_R = 1 << 0
VHOST_USER_FS_FLAG_MAP_W = 1 << 1
VHOST_USER_FLAG_MAP_RW = 1 << 0  # VhostUserMMap.flags: 0 read-only, 1 read-write
ALL_ONES = (1 << 64) - 1


class DaxWindow:
    """A reserved address range of ``size`` bytes (PROT_NONE until something is mapped)
    into which file ranges are mapped with MAP_FIXED, the way QEMU backs its cache BAR."""

    def __init__(self, size: int):
        if size <= 0 or size % PAGE:
            raise ValueError("window size must be a positive multiple of the page size")
        self.size = size
        base = _libc.mmap(None, size, _PROT_NONE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), "cannot reserve DAX window")
        self.base: int = base
        self._prot = bytearray(size // PAGE)  # per page: 0 none, 1 read, 3 read-write
        self._lock = threading.Lock()

    def _check(self, offset: int, length: int) -> None:
        if offset % PAGE or length % PAGE or length == 0:
            raise ValueError(f"range {offset:#x}+{length:#x} is not page-aligned")
        if offset + length > self.size:
            raise ValueError(f"range {offset:#x}+{length:#x} beyond window size {self.size:#x}")

    def map(self, fd: int, fd_offset: int, offset: int, length: int, writable: bool) -> None:
        self._check(offset, length)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        with self._lock:
            got = _libc.mmap(self.base + offset, length, prot, mmap.MAP_SHARED | _MAP_FIXED,
                             fd, fd_offset)
            if got in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap fd {fd} into window at {offset:#x}")
            self._prot[offset // PAGE:(offset + length) // PAGE] = bytes(
                [3 if writable else 1]) * (length // PAGE)

    def unmap(self, offset: int, length: int) -> None:
        if length == ALL_ONES:
            length = self.size - offset
        self._check(offset, length)
        with self._lock:
            # Replace, never munmap: the range stays reserved for the window.
            got = _libc.mmap(self.base + offset, length, _PROT_NONE,
                             mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE,
                             -1, 0)
            if got in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"unmap window at {offset:#x}")
            self._prot[offset // PAGE:(offset + length) // PAGE] = bytes(length // PAGE)

    def is_mapped(self, offset: int, length: int) -> bool:
        first, last = offset // PAGE, (offset + length + PAGE - 1) // PAGE
        return offset + length <= self.size and all(self._prot[first:last])

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the window; only mapped pages (reading a hole would fault)."""
        if not self.is_mapped(offset, length):
            raise ValueError(f"window range {offset:#x}+{length:#x} is not mapped")
        return ctypes.string_at(self.base + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        first, last = offset // PAGE, (offset + len(data) + PAGE - 1) // PAGE
        if offset + len(data) > self.size or any(p != 3 for p in self._prot[first:last]):
            raise ValueError(f"window range {offset:#x}+{len(data):#x} is not mapped writable")
        ctypes.memmove(self.base + offset, data, len(data))

    def mapped_pages(self) -> int:
        return sum(1 for p in self._prot if p)

    def close(self) -> None:
        if self.base:
            _libc.munmap(self.base, self.size)
            self.base = 0


@dataclass
class BackendEvent:
    """One request the daemon sent on the backend channel, and our answer (0 = ok)."""

    request: int
    payload: object
    result: int


@dataclass
class DaxMapHandler:
    """Handles map/unmap requests by mapping into ``window`` (shmid ``shmid`` only)."""

    window: DaxWindow
    shmid: int = 0
    events: list[BackendEvent] = field(default_factory=list)

    def handle(self, request: int, payload: bytes, fds: list[int]) -> int:
        R = VhostUserBackendRequest
        try:
            if request == R.SHMEM_MAP:
                m = VhostUserMMap.parse(payload)
                if m.shmid != self.shmid or not fds:
                    result = errno.EINVAL
                else:
                    self.window.map(fds[0], m.fd_offset, m.shm_offset, m.len,
                                    bool(m.flags & VHOST_USER_FLAG_MAP_RW))
                    result = 0
            elif request == R.SHMEM_UNMAP:
                m = VhostUserMMap.parse(payload)
                if m.shmid != self.shmid:
                    result = errno.EINVAL
                else:
                    self.window.unmap(m.shm_offset, m.len)
                    result = 0
            elif request == R.FS_MAP:
                m = VhostUserFSBackendMsg.parse(payload)
                if not fds:
                    result = errno.EINVAL
                else:
                    for i in range(VHOST_USER_FS_BACKEND_ENTRIES):
                        if m.len[i] == 0:
                            break
                        self.window.map(fds[0], m.fd_offset[i], m.cache_offset[i], m.len[i],
                                        bool(m.flags[i] & VHOST_USER_FS_FLAG_MAP_W))
                    result = 0
            elif request == R.FS_UNMAP:
                m = VhostUserFSBackendMsg.parse(payload)
                for i in range(VHOST_USER_FS_BACKEND_ENTRIES):
                    if m.len[i] == 0:
                        break
                    self.window.unmap(m.cache_offset[i], m.len[i])
                result = 0
            else:
                m, result = payload, errno.ENOSYS
        except (ValueError, OSError) as e:
            m = payload
            result = getattr(e, "errno", None) or errno.EINVAL
        except Exception:  # construct errors on a short payload
            m, result = payload, errno.EINVAL
        self.events.append(BackendEvent(request, m, result))
        return result


class BackendChannel:
    """Serves the backend's requests on ``sock`` in a thread until the peer closes it."""

    def __init__(self, sock: socket.socket, handler):
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
                except TransportError:
                    return  # peer closed: the daemon exited or we closed
                try:
                    result = self.handler.handle(msg.request, msg.payload, msg.fds)
                finally:
                    for fd in msg.fds:
                        os.close(fd)
                if msg.need_reply:
                    send_message(self.sock, msg.request, VhostUserU64.build(dict(u64=result)),
                                 flags=VHOST_USER_VERSION | VHOST_USER_REPLY_MASK)
        except BaseException as e:  # recorded for the owner; a thread cannot raise to it
            self.error = e

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)
        self.sock.close()

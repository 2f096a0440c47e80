"""A window: a reserved range of this process's address space into which file ranges are
mapped with MAP_FIXED, the way QEMU backs a virtio-fs DAX cache (a shared memory region).

The one implementation of that memory work, used by the vhost-user backend channel
(:class:`~fuseproto.transport.backend.DaxMapHandler`) and by
:class:`~fuseproto.dax.device.MmapDevice`. The range is reserved once and never given
back until :meth:`Window.close`: unmapping maps a hole over the range again (MAP_FIXED
replaces, so no other mapping can land there in between).

Reads and writes go through ``process_vm_readv`` / ``process_vm_writev`` on this process:
a page that would fault (a hole of PROT_NONE, a read-only mapping written, a file page
past the file's end) gives EFAULT, raised as :class:`OSError`, never SIGBUS.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

from .. import libc

PAGE = mmap.PAGESIZE

# Page states kept per page (what the window knows it put there).
_HOLE, _READ, _READ_WRITE = 0, 1, 3


class Window:
    """``size`` bytes (a multiple of the page size) reserved at :attr:`base`.

    ``hole_prot``: what an unmapped page is. ``libc.PROT_NONE`` (the default; as QEMU's
    cache BAR: touching a hole faults) or ``PROT_READ | PROT_WRITE`` (anonymous zero
    memory, as a REMOVEMAPPING leaves in the virtio-fs model). Offsets and lengths given to
    :meth:`map_fd` / :meth:`unmap` must be page-aligned and inside the window, otherwise
    they raise OSError(EINVAL) as mmap(2) would, and change nothing."""

    def __init__(self, size: int, *, hole_prot: int = libc.PROT_NONE) -> None:
        if size <= 0 or size % PAGE:
            raise ValueError("window size must be a positive multiple of the page size")
        self.size = size
        self.hole_prot = hole_prot
        self.base: int = libc.mmap(None, size, hole_prot, self._HOLE_FLAGS)
        self._pid = os.getpid()
        self._state = bytearray(size // PAGE)  # per page: _HOLE, _READ or _READ_WRITE
        self._lock = threading.Lock()  # the backend channel maps from its own thread

    _HOLE_FLAGS = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE

    def check_range(self, offset: int, length: int) -> None:
        """OSError(EINVAL) unless ``offset``/``length`` are page-aligned, ``length`` is
        not 0 and the range lies inside the window; OSError(EBADF) once closed (the base
        address is gone: a MAP_FIXED there would land anywhere)."""
        if not self.base:
            raise OSError(errno.EBADF, "the window is closed")
        if offset % PAGE or length % PAGE or length <= 0 or offset < 0:
            raise OSError(errno.EINVAL, f"window range {offset:#x}+{length:#x} is not "
                                        "page-aligned")
        if offset + length > self.size:
            raise OSError(errno.EINVAL, f"window range {offset:#x}+{length:#x} beyond the "
                                        f"window size {self.size:#x}")

    def map_fd(self, fd: int, fd_offset: int, offset: int, length: int,
               writable: bool) -> None:
        """Map ``length`` bytes of ``fd`` from ``fd_offset`` at ``offset`` of the window
        (MAP_SHARED | MAP_FIXED; PROT_WRITE too if ``writable``), replacing whatever was
        there. OSError if the kernel refuses (e.g. a read-only fd mapped writable)."""
        self.check_range(offset, length)
        prot = libc.PROT_READ | (libc.PROT_WRITE if writable else 0)
        with self._lock:
            libc.mmap(self.base + offset, length, prot, libc.MAP_SHARED | libc.MAP_FIXED,
                      fd, fd_offset)
            self._state[offset // PAGE:(offset + length) // PAGE] = bytes(
                [_READ_WRITE if writable else _READ]) * (length // PAGE)

    def unmap(self, offset: int, length: int) -> None:
        """Put a hole back over the range (mapped or not: both succeed)."""
        self.check_range(offset, length)
        with self._lock:
            # Replace, never munmap: the range stays reserved for the window.
            libc.mmap(self.base + offset, length, self.hole_prot,
                      self._HOLE_FLAGS | libc.MAP_FIXED)
            self._state[offset // PAGE:(offset + length) // PAGE] = bytes(length // PAGE)

    def is_mapped(self, offset: int, length: int) -> bool:
        """Whether every page of the range holds a file mapping."""
        first, last = offset // PAGE, (offset + length + PAGE - 1) // PAGE
        return (offset >= 0 and offset + length <= self.size
                and self._state.find(_HOLE, first, last) < 0)

    def mapped_pages(self) -> int:
        """Pages that hold a file mapping."""
        return len(self._state) - self._state.count(_HOLE)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; OSError(EFAULT) if a page in the range would
        fault (instead of SIGBUS)."""
        self._check_inside(offset, length)
        if not length:
            return b""
        buf = ctypes.create_string_buffer(length)
        self._copy(libc.process_vm_readv, offset, buf, length, "read")
        return buf.raw

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``offset``; OSError(EFAULT) if a page in the range is not
        writable (a hole of PROT_NONE, a read-only mapping, a page past a file's end)."""
        length = len(data)
        self._check_inside(offset, length)
        if not length:
            return
        buf = ctypes.create_string_buffer(bytes(data), length)
        self._copy(libc.process_vm_writev, offset, buf, length, "write")

    def _check_inside(self, offset: int, length: int) -> None:
        if not self.base:
            raise OSError(errno.EBADF, "the window is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range {offset:#x}+{length:#x} outside the window of {self.size:#x} bytes")

    def _copy(self, fn: object, offset: int, buf: object, length: int, what: str) -> None:
        try:
            n = fn(self._pid, buf, self.base + offset, length)  # type: ignore[operator]
        except OSError as e:
            raise OSError(e.errno or errno.EFAULT,
                          f"window {what} at {offset:#x}+{length:#x}: not mapped "
                          f"{'writable' if what == 'write' else 'readable'} "
                          f"({os.strerror(e.errno or errno.EFAULT)})") from None
        if n != length:
            raise OSError(errno.EFAULT, f"window {what} at {offset:#x}: short copy "
                                        f"({n} of {length} bytes); the rest would fault")

    def close(self) -> None:
        """Give the whole range back (safe twice)."""
        if self.base:
            base, self.base = self.base, 0
            libc.munmap(base, self.size)

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PAGE", "Window"]

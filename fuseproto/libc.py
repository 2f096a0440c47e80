"""The C library calls fuseproto makes through ctypes, in one place.

Python's ``mmap`` module cannot place a mapping at a chosen address (MAP_FIXED), mount a
file system or copy memory without faulting, so these few calls go through libc. Every
wrapper raises :class:`OSError` with the errno and a message naming the call; constants
are Linux's (x86-64 and arm64 share them).
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "PROT_NONE", "PROT_READ", "PROT_WRITE", "MAP_SHARED", "MAP_PRIVATE", "MAP_FIXED",
    "MAP_ANONYMOUS", "MAP_NORESERVE", "mmap", "munmap", "mount", "umount2",
    "process_vm_readv", "process_vm_writev",
]

# sys/mman.h (asm-generic/mman-common.h, asm-generic/mman.h)
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000

_MAP_FAILED = ctypes.c_void_p(-1).value


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.munmap.restype = ctypes.c_int
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mount.restype = ctypes.c_int
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_char_p]
    lib.umount2.restype = ctypes.c_int
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for name in ("process_vm_readv", "process_vm_writev"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                       ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    return lib


_lib = _load()


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mmap(addr: int | None, length: int, prot: int, flags: int, fd: int = -1,
         offset: int = 0) -> int:
    """mmap(2); returns the address. With MAP_FIXED, a result other than ``addr`` is an
    error too."""
    got = _lib.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        raise _fail(f"mmap({length:#x} bytes, fd {fd}, offset {offset:#x})")
    if flags & MAP_FIXED and addr is not None and got != addr:
        raise OSError(0, f"mmap(MAP_FIXED) placed the mapping at {got:#x}, not {addr:#x}")
    return int(got)


def munmap(addr: int, length: int) -> None:
    """munmap(2)."""
    if _lib.munmap(addr, length) != 0:
        raise _fail(f"munmap({addr:#x}, {length:#x})")


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2)."""
    if _lib.mount(source.encode(), os.fsencode(target), fstype.encode(), flags,
                  data.encode()) != 0:
        raise _fail(f"mount({target!r}, {fstype!r})")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if _lib.umount2(os.fsencode(target), flags) != 0:
        raise _fail(f"umount2({target!r}, {flags:#x})")


def _vm_copy(fn: object, pid: int, local: object, remote_addr: int, length: int) -> int:
    liov = _Iovec(ctypes.cast(local, ctypes.c_void_p), length)  # type: ignore[arg-type]
    riov = _Iovec(remote_addr, length)
    n = fn(pid, ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)  # type: ignore[operator]
    if n < 0:
        raise _fail(f"{getattr(fn, '__name__', 'process_vm_*')}({remote_addr:#x}, {length})")
    return int(n)


def process_vm_readv(pid: int, buf: object, remote_addr: int, length: int) -> int:
    """Copy ``length`` bytes at ``remote_addr`` of process ``pid`` into ``buf`` (a ctypes
    buffer); returns the count. A page that would fault gives EFAULT, not SIGBUS."""
    return _vm_copy(_lib.process_vm_readv, pid, buf, remote_addr, length)


def process_vm_writev(pid: int, buf: object, remote_addr: int, length: int) -> int:
    """Copy ``length`` bytes of ``buf`` to ``remote_addr`` of process ``pid``."""
    return _vm_copy(_lib.process_vm_writev, pid, buf, remote_addr, length)

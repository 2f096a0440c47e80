"""The file side of DAX: what a manager asks the file system besides mappings.

A manager needs three things from the file system it serves: the guest's idea of a
file's size (``attr.size`` from the last LOOKUP/GETATTR), FUSE_READ for the fall-back
path, and FUSE_WRITE for writes a DAX policy does not do through the window (Linux sends
file-extending writes as FUSE_WRITE). :class:`FuseBackend` is that contract.

:class:`FileStore` is the in-memory implementation used with the model device: the host
files themselves, keyed by node id. :class:`HostDirectory` serves real files of a host
directory (node id -> path) for the mmap device when no daemon is involved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["FileStore", "FuseBackend", "HostDirectory", "Resolver"]

# nodeid, fh -> host path or an open fd (the fd of a vhost-user backend-channel message)
Resolver = Callable[[int, int], "str | int"]


@runtime_checkable
class FuseBackend(Protocol):
    def file_size(self, nodeid: int) -> int:
        """The guest's cached ``attr.size`` of ``nodeid``."""

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        """FUSE_READ: up to ``size`` bytes at ``offset`` (short at end of file)."""

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        """FUSE_WRITE: returns the number of bytes written."""


class FileStore:
    """Host files in memory, keyed by node id; also a :class:`FuseBackend`.

    Counts the FUSE_READ/FUSE_WRITE requests and bytes it served, so simulations can
    report what went through the fall-back path.
    """

    def __init__(self, files: dict[int, bytes] | None = None) -> None:
        self._files: dict[int, bytearray] = {}
        self.fuse_reads = 0
        self.fuse_read_bytes = 0
        self.fuse_writes = 0
        for nodeid, data in (files or {}).items():
            self.add(nodeid, data)

    def add(self, nodeid: int, data: bytes) -> None:
        self._files[nodeid] = bytearray(data)

    def remove(self, nodeid: int) -> None:
        self._files.pop(nodeid, None)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._files

    def nodeids(self) -> list[int]:
        return list(self._files)

    def data(self, nodeid: int) -> bytearray:
        """The host file's bytes (the object itself: the model device shares it)."""
        try:
            return self._files[nodeid]
        except KeyError:
            raise FileNotFoundError(f"no host file for nodeid {nodeid}") from None

    # FuseBackend
    def file_size(self, nodeid: int) -> int:
        return len(self.data(nodeid))

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        self.fuse_reads += 1
        out = bytes(self.data(nodeid)[offset : offset + size])
        self.fuse_read_bytes += len(out)
        return out

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        self.fuse_writes += 1
        buf = self.data(nodeid)
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        return len(data)


class HostDirectory:
    """Real files as node ids: ``add(path) -> nodeid``. A :class:`FuseBackend` that reads
    the files with ``pread`` and a resolver for :class:`~fuseproto.dax.device.MmapDevice`."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self._next = 2  # 1 is FUSE_ROOT_ID

    def add(self, path: str | os.PathLike[str], nodeid: int | None = None) -> int:
        if nodeid is None:
            nodeid = self._next
            self._next += 1
        self._paths[nodeid] = os.fspath(path)
        self._next = max(self._next, nodeid + 1)
        return nodeid

    def path(self, nodeid: int) -> str:
        return self._paths[nodeid]

    def resolve(self, nodeid: int, fh: int) -> str:
        return self._paths[nodeid]

    def file_size(self, nodeid: int) -> int:
        return os.stat(self._paths[nodeid]).st_size

    def fuse_read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        fd = os.open(self._paths[nodeid], os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def fuse_write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        fd = os.open(self._paths[nodeid], os.O_WRONLY)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
